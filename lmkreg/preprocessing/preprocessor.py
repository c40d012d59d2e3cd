"""Preprocessing of one case for one modality configuration.

Resampling onto the planned grid *is* the reorientation to the canonical orientation: the
grid has the identity direction (array z, y, x = world S, P, L), so every case, whatever its
scanner orientation or obliquity, reaches the network the same way round.  The grid is
centred on the image centre plus the planned offset, has the planned spacing and size, and
its exact index->world affine is stored with the case, so predictions map back to world
LPS without loss.

Order: intensities are normalised on the original grid (statistics from the real voxels,
not from padding), then resampled (linear for images, nearest for masks) with 0 outside.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.geometry import ImageGeometry
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json
from lmkreg.config.plans import Configuration, Normalization, Stage
from lmkreg.geometry.spaces import image_centre_world
from lmkreg.preprocessing.storage import ARRAY_SUFFIX, save_array

PREPROCESSING_VERSION = 2  # 2: normalisation no longer uses the mask


def zscore_statistics(array: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(mean, std) of the z-score scheme: over the mask, else the non-zero voxels, else all
    (a std of 0 becomes 1)."""
    a = np.asarray(array, dtype=np.float32)
    region = a[mask > 0] if mask is not None and np.any(mask) else a[a != 0]
    if region.size == 0:
        region = a.ravel()
    std = float(region.std())
    return float(region.mean()), (std if std > 0 else 1.0)


def normalize(array: np.ndarray, norm: Normalization, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Normalised float32 copy of `array` (see Normalization for the schemes)."""
    a = array.astype(np.float32)
    if norm.scheme == "zscore":
        mean, std = zscore_statistics(a, mask)
        return (a - mean) / std
    if norm.scheme == "percentile_clip":
        lo, hi = float(norm.lower), float(norm.upper)
        out = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
        out[a == 0] = 0.0  # outside the ultrasound fan stays exactly zero
        return out
    raise ValueError(f"unknown normalization scheme {norm.scheme!r}")


def snap_to_lattice(point_lps: np.ndarray, spacing_xyz: np.ndarray) -> np.ndarray:
    """`point_lps` rounded to the nearest multiple of the grid spacing along each world axis.

    Cascade grids are centred on a point of this world lattice, so two images of the same
    anatomy sampled on the same voxel lattice (the same scan framed differently) give exactly
    the same grid points, and a refine crop whose anchor moves a little moves by whole voxels."""
    return np.round(np.asarray(point_lps, float) / spacing_xyz) * spacing_xyz


def target_geometry(source: ImageGeometry, conf: Configuration, anchor_lps: Optional[np.ndarray] = None,
                    margin_zyx: Sequence[int] = (0, 0, 0)) -> ImageGeometry:
    """Planned grid for one image: identity direction, planned spacing and size (plus
    `margin_zyx` voxels on each side), centred on the anchor plus the planned offset (all in
    world LPS mm).  The anchor is the image centre, except for a refine stage, whose anchor
    (`anchor_lps`: the previous stage's landmark centroid, or the true one in training) must be
    given.  Cascade stages snap the centre to their spacing's world lattice."""
    spacing_xyz = np.asarray(conf.spacing_zyx[::-1], float)
    shape_zyx = [int(n) + 2 * int(m) for n, m in zip(conf.input_size_zyx, margin_zyx)]
    size_xyz = np.asarray(shape_zyx[::-1], float)
    if anchor_lps is None:
        if conf.stage == Stage.REFINE:
            raise ValueError(f"configuration {conf.data_identifier} is a refine stage: its grid needs an anchor point")
        anchor_lps = image_centre_world(source)
    centre = np.asarray(anchor_lps, float) + np.asarray(conf.fov_offset_lps, float)
    if conf.stage != Stage.SINGLE:
        centre = snap_to_lattice(centre, spacing_xyz)
    origin = centre - (size_xyz - 1) / 2 * spacing_xyz
    return ImageGeometry.create(shape_zyx, spacing_xyz, origin, np.eye(3))


def resample(image: sitk.Image, target: ImageGeometry, nearest: bool = False, default: float = 0.0) -> np.ndarray:
    """Array (z, y, x) of `image` sampled on `target` (SimpleITK; `default` outside the image)."""
    ref = target.make_image(np.zeros(target.shape_zyx, np.uint8))
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, ref, sitk.Transform(), interp, float(default), image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def crop_to_grid(image: sitk.Image, target: ImageGeometry) -> sitk.Image:
    """The part of `image` that linear interpolation onto `target` reads: the voxel box around
    the target grid's corners plus one voxel, clamped to the image (physical geometry kept)."""
    source = ImageGeometry.from_image(image)
    corners = np.array([[z, y, x] for z in (0, 1) for y in (0, 1) for x in (0, 1)], float)
    corners *= np.asarray(target.shape_zyx, float) - 1
    index = source.world_to_index(target.index_to_world(corners))  # (8, 3) continuous z, y, x
    shape = np.asarray(source.shape_zyx)
    lo = np.clip(np.floor(index.min(0)) - 1, 0, shape - 1).astype(int)
    hi = np.clip(np.ceil(index.max(0)) + 1, 0, shape - 1).astype(int)
    if np.any(index.max(0) < -0.5) or np.any(index.min(0) > shape - 0.5) or np.all(lo == 0) and np.all(hi == shape - 1):
        return image  # grid outside the image (nothing to read) or covering all of it
    size = (hi - lo + 1)[::-1]
    return sitk.RegionOfInterest(image, [int(v) for v in size], [int(v) for v in lo[::-1]])


def normalized_on_grid(image: sitk.Image, target: ImageGeometry, norm: Normalization) -> np.ndarray:
    """What the network sees: `image` normalised voxel by voxel, then resampled (linear) onto
    `target`, as float32 (z, y, x); 0 outside the image.

    Computed on less than the whole volume, with the same result up to float rounding:
    z-score statistics come from every voxel, but as the scheme is affine and linear
    interpolation weights sum to 1, the raw image is resampled first (outside value: the mean,
    which maps to 0) and the small result normalised; percentile clipping works voxel by voxel,
    so only the box the interpolation reads is normalised."""
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    if norm.scheme == "zscore":
        mean, std = zscore_statistics(sitk.GetArrayViewFromImage(image))
        out = resample(image, target, default=mean)
        return ((out - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)
    roi = crop_to_grid(image, target)
    normalised = sitk.GetImageFromArray(normalize(sitk.GetArrayViewFromImage(roi), norm))
    normalised.CopyInformation(roi)
    return resample(normalised, target).astype(np.float32, copy=False)


def normalized_on_crop(image: sitk.Image, target: ImageGeometry, norm: Normalization,
                       statistics_region: Optional[tuple[slice, ...]] = None) -> np.ndarray:
    """Like normalized_on_grid, but z-score statistics come from the grid's own voxels inside
    the image (those of `statistics_region`, default all), not from the whole image.

    Used by refine stages: the same anatomy then gets the same input whatever else the image
    frame holds (a larger field of view changes the whole-image mean and spread).  Percentile
    clipping uses dataset constants and needs nothing different."""
    if norm.scheme != "zscore":
        return normalized_on_grid(image, target, norm)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = resample(image, target, default=float("nan"))
    region = out[statistics_region] if statistics_region is not None else out
    values = region[np.isfinite(region)]
    mean, std = zscore_statistics(values) if values.size else (0.0, 1.0)
    out = (out - np.float32(mean)) / np.float32(std)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32, copy=False)


def stage_input(image: sitk.Image, conf: Configuration, anchor_lps: Optional[np.ndarray] = None,
                margin_zyx: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, ImageGeometry]:
    """What the network of `conf` sees for `image`: normalised array (Z, Y, X) and its grid
    (with `margin_zyx` extra voxels on each side, whose values do not enter the statistics)."""
    target = target_geometry(ImageGeometry.from_image(image), conf, anchor_lps, margin_zyx)
    if conf.stage != Stage.REFINE:
        return normalized_on_grid(image, target, conf.normalization), target
    inner = tuple(slice(int(m), int(m) + int(n)) for m, n in zip(margin_zyx, conf.input_size_zyx))
    return normalized_on_crop(image, target, conf.normalization, inner), target


def landmark_anchor(world_lps: np.ndarray) -> Optional[np.ndarray]:
    """Centroid of the landmarks that are present (rows without NaN), or None."""
    present = np.asarray(world_lps, float)
    present = present[~np.isnan(present).any(axis=1)]
    return present.mean(axis=0) if len(present) else None


@dataclass(frozen=True)
class CaseFiles:
    case: str
    image: Path
    mask: Optional[Path]
    landmarks: Optional[Path]


def configuration_hash(conf: Configuration) -> str:
    """Fingerprint of what preprocessing depends on, to tell when a case is out of date."""
    relevant = {"v": PREPROCESSING_VERSION, "spacing": conf.spacing_zyx, "size": conf.input_size_zyx,
                "offset": conf.fov_offset_lps, "norm": conf.normalization.__dict__}
    if conf.stage != Stage.SINGLE:  # single-stage hashes stay as they were
        relevant.update(stage=conf.stage, margin=conf.crop_margin_zyx)
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _source_stamp(files: CaseFiles) -> dict:
    stamp = {}
    for key in ("image", "mask", "landmarks"):
        p = getattr(files, key)
        if p is not None and Path(p).is_file():
            st = Path(p).stat()
            stamp[key] = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamp


def is_up_to_date(files: CaseFiles, out_dir: Path, conf: Configuration) -> bool:
    meta = out_dir / f"{files.case}.json"
    if not meta.is_file() or not (out_dir / f"{files.case}{ARRAY_SUFFIX}").is_file():
        return False
    try:
        d = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    return d.get("configuration_hash") == configuration_hash(conf) and d.get("source") == _source_stamp(files)


def preprocess_case(files: CaseFiles, conf: Configuration, landmark_names: list[str], out_dir: Path) -> dict:
    """Preprocess one case and write ``CASE.b2nd`` (image), ``CASE_mask.b2nd`` and ``CASE.json``.

    The JSON holds the landmarks both in world LPS mm and as continuous (z, y, x) indices of
    the preprocessed grid, and the 4x4 index->world affine of that grid.
    """
    image = read_image(files.image)
    source_geom = ImageGeometry.from_image(image)
    mask_img = read_image(files.mask, is_mask=True) if files.mask is not None and files.mask.is_file() else None
    if mask_img is not None and not ImageGeometry.from_image(mask_img).same_as(source_geom):
        raise InputError(files.mask, f"mask grid differs from its image {Path(files.image).name} (size, spacing, "
                                     f"origin or direction); masks must share the image's voxel grid")
    landmarks = (read_lmkreg_json(files.landmarks).select(landmark_names, source=files.landmarks)
                 if files.landmarks is not None and files.landmarks.is_file() else
                 LandmarkSet({n: None for n in landmark_names}))
    world = landmarks.to_array(landmark_names)
    # never normalise with the mask: prediction has no mask, and the statistics must match
    anchor, margin = None, [0, 0, 0]
    if conf.stage == Stage.REFINE:  # the crop around the true landmarks, with room to jitter it in training
        anchor, margin = landmark_anchor(world), conf.crop_margin_zyx
        if anchor is None:
            anchor = image_centre_world(source_geom)
    array, target = stage_input(image, conf, anchor, margin)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_array(array[None], out_dir / f"{files.case}{ARRAY_SUFFIX}")
    if mask_img is not None:
        save_array(resample(sitk.Cast(mask_img, sitk.sitkUInt8), target, nearest=True)[None],
                   out_dir / f"{files.case}_mask{ARRAY_SUFFIX}")
    voxel = target.world_to_index(world)
    meta = {
        "case": files.case,
        "modality": conf.modality,
        "configuration_hash": configuration_hash(conf),
        "source": _source_stamp(files),
        "source_geometry": source_geom.to_json(),
        "geometry": target.to_json(),
        "index_to_world": target.index_to_world_affine().tolist(),
        "landmark_names": list(landmark_names),
        "landmarks_world_lps": [None if np.isnan(w).any() else w.tolist() for w in world],
        "landmarks_voxel_zyx": [None if np.isnan(v).any() else v.tolist() for v in voxel],
        "landmarks_inside": [bool(not np.isnan(v).any() and target.contains_index(v)) for v in voxel],
        "has_mask": mask_img is not None,
    }
    if conf.stage != Stage.SINGLE:
        meta.update(stage=conf.stage, crop_margin_zyx=list(margin),
                    anchor_lps=None if anchor is None else np.asarray(anchor, float).tolist())
    atomic_write_json(out_dir / f"{files.case}.json", meta)
    return meta
