"""Dataset fingerprint: what planning needs to know about each modality's images.

Per case: grid (spacing, size, orientation), the canonical-axis spacing, intensity statistics
inside the mask (or the non-zero region), the fraction of exactly-zero voxels (the TRUS fan
leaves zeros outside it), and where the landmarks sit relative to the image centre, in world
LPS mm.  Aggregated per modality in ``dataset_fingerprint.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from lmkreg.dataset.layout import Dataset
from lmkreg.geometry import ImageGeometry, orientation_code
from lmkreg.geometry.canonical import canonical_axis_order
from lmkreg.geometry.spaces import image_centre_world
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.parallel import parallel_map

FINGERPRINT_FILE = "dataset_fingerprint.json"
SAMPLES_PER_CASE = 20000


def canonical_spacing_zyx(geometry: ImageGeometry) -> np.ndarray:
    """Spacing along the world S, P, L axes, i.e. the spacing (z, y, x) of the image
    reoriented to LPS (array z, y, x = world S, P, L; axis assignment as DICOMOrient's)."""
    spacing = np.asarray(geometry.spacing_xyz, float)
    return spacing[canonical_axis_order(geometry.direction)][::-1].astype(float)


def _intensity_region(array: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    if mask is not None and np.any(mask):
        return array[mask > 0]
    nonzero = array[array != 0]
    return nonzero if nonzero.size else array.ravel()


@dataclass(frozen=True)
class _CaseJob:
    image: Path
    mask: Optional[Path]
    landmarks: Optional[Path]
    names: tuple[str, ...]
    seed: int


def case_fingerprint(job: _CaseJob) -> dict:
    """Fingerprint of one image (and its optional mask and landmarks)."""
    image = read_image(job.image)
    geom = ImageGeometry.from_image(image)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    mask = None
    if job.mask is not None and job.mask.is_file():
        # a copy, not GetArrayViewFromImage: a view of a temporary image points to freed memory
        # once the image is garbage collected (garbage statistics, or a segfault on large volumes)
        mask = sitk.GetArrayFromImage(read_image(job.mask, is_mask=True))
        if mask.shape != array.shape:
            mask = None
    values = _intensity_region(array, mask)
    rng = np.random.default_rng(job.seed)
    sample = values if values.size <= SAMPLES_PER_CASE else rng.choice(values, SAMPLES_PER_CASE, replace=False)
    centre = image_centre_world(geom)
    offsets: dict[str, Optional[list[float]]] = {}
    if job.landmarks is not None and job.landmarks.is_file():
        lms = read_lmkreg_json(job.landmarks)
        for n in job.names:
            p = lms.points.get(n)
            offsets[n] = None if p is None else [float(v) for v in p - centre]
    return {
        "image": job.image.name,
        "shape_zyx": list(geom.shape_zyx),
        "spacing_xyz": list(geom.spacing_xyz),
        "canonical_spacing_zyx": canonical_spacing_zyx(geom).tolist(),
        "extent_mm_zyx": (canonical_spacing_zyx(geom) * _canonical_shape(geom)).tolist(),
        "orientation": orientation_code(image),
        "oblique_deg": float(np.degrees(np.arccos(np.clip(np.max(np.abs(geom.direction_matrix), axis=0).min(), -1, 1)))),
        "intensity": {"mean": float(np.mean(values)), "std": float(np.std(values)),
                      "percentile_00_5": float(np.percentile(values, 0.5)),
                      "percentile_99_5": float(np.percentile(values, 99.5))},
        "intensity_sample": sample.astype(float).tolist(),
        "zero_fraction": float(np.mean(array == 0)),
        "landmark_offsets_lps": offsets,
    }


def _canonical_shape(geometry: ImageGeometry) -> np.ndarray:
    shape_xyz = np.asarray(geometry.shape_zyx[::-1])
    return shape_xyz[canonical_axis_order(geometry.direction)][::-1].astype(float)


def _summary(cases: list[dict], names: list[str]) -> dict:
    spacings = np.array([c["canonical_spacing_zyx"] for c in cases])
    sample = np.concatenate([np.asarray(c["intensity_sample"]) for c in cases])
    offsets = {n: np.array([c["landmark_offsets_lps"][n] for c in cases
                            if c["landmark_offsets_lps"].get(n) is not None]).reshape(-1, 3) for n in names}
    all_off = np.concatenate([o for o in offsets.values()]) if offsets else np.zeros((0, 3))
    return {
        "num_cases": len(cases),
        "median_spacing_zyx": np.median(spacings, axis=0).tolist(),
        "spacing_percentile_10_zyx": np.percentile(spacings, 10, axis=0).tolist(),
        "median_extent_mm_zyx": np.median([c["extent_mm_zyx"] for c in cases], axis=0).tolist(),
        "max_extent_mm_zyx": np.max([c["extent_mm_zyx"] for c in cases], axis=0).tolist(),
        "intensity": {"mean": float(sample.mean()), "std": float(sample.std()),
                      "percentile_00_5": float(np.percentile(sample, 0.5)),
                      "percentile_99_5": float(np.percentile(sample, 99.5))},
        "median_zero_fraction": float(np.median([c["zero_fraction"] for c in cases])),
        "landmark_offset_min_lps": (all_off.min(axis=0).tolist() if len(all_off) else None),
        "landmark_offset_max_lps": (all_off.max(axis=0).tolist() if len(all_off) else None),
        "landmark_offset_mean_lps": (all_off.mean(axis=0).tolist() if len(all_off) else None),
        "landmarks_missing": {n: int(len(cases) - len(o)) for n, o in offsets.items()},
    }


def compute_fingerprint(dataset: Dataset, workers: Optional[int] = None, seed: int = 0) -> dict:
    """Fingerprint of every modality of the training cases (case-parallel, with a progress bar)."""
    names = tuple(dataset.spec.landmarks)
    result: dict = {"dataset_name": dataset.name, "landmarks": list(names), "modalities": {}}
    for modality in dataset.spec.modalities:
        cases = dataset.cases("Tr", modality)
        if not cases:
            raise ValueError(f"{dataset.folder}: no training images for modality {modality}")
        jobs = [_CaseJob(dataset.image_path(c, modality), dataset.mask_path(c, modality),
                         dataset.landmarks_path(c, modality), names, seed + i) for i, c in enumerate(cases)]
        per_case = parallel_map(case_fingerprint, jobs, workers, desc=f"fingerprint {modality}")
        for c, fp in zip(cases, per_case):
            fp["case"] = c
        result["modalities"][modality] = {"summary": _summary(per_case, list(names)),
                                          "cases": [{k: v for k, v in fp.items() if k != "intensity_sample"}
                                                    for fp in per_case]}
    return result


def save_fingerprint(fingerprint: dict, folder: Path) -> Path:
    path = Path(folder) / FINGERPRINT_FILE
    atomic_write_json(path, fingerprint)
    return path
