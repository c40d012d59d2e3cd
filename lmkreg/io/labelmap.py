"""Landmarks from label maps: each landmark is the centroid of its voxels, in world LPS mm.

Two layouts are understood:

* **one 3D label map**, one integer label value per landmark (default: 1, 2, ... N in the
  order of the landmark names); other label values (e.g. a gland label) are ignored;
* **one channel per landmark**: a 4D image (x, y, z, channel), as in the µ-RegPro challenge
  data, or a 3D image with several components per voxel.  A voxel belongs to a channel's
  landmark when its value is positive.  Default channels: 0, 1, ... N-1 (``labels`` selects
  others, e.g. ``labels=[1, 2, 3]`` when channel 0 holds the gland).

The centroid is the mean continuous voxel index (z, y, x) of the landmark's voxels, mapped
to the world with the image's own index -> world mapping (origin, spacing, direction), so
oblique and anisotropic grids are handled exactly (the mapping is affine, so this equals
the mean of the voxel centres' world points).  A label with no voxels gives a missing
landmark (None), never a crash.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import ConfigurationError, InputError
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import LandmarkSet, check_unique_names
from lmkreg.io.images import _check_nifti_payload

PathLike = Union[str, Path]
Labels = Union[Sequence[int], Mapping[str, int], None]


def _label_list(names: Sequence[str], labels: Labels, first: int) -> list[int]:
    """One label value (or channel index) per name, in the order of `names`."""
    if labels is None:
        return list(range(first, first + len(names)))
    if isinstance(labels, Mapping):
        absent = [n for n in names if n not in labels]
        if absent:
            raise ConfigurationError(f"no label value given for landmark(s) {absent}")
        values = [labels[n] for n in names]
    else:
        values = list(labels)
        if len(values) != len(names):
            raise ConfigurationError(f"{len(values)} label value(s) {values} for {len(names)} landmark name(s) "
                                     f"{list(names)}: give one per landmark")
    out = []
    for v in values:
        try:
            ok = not isinstance(v, (bool, str)) and int(v) == v
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigurationError(f"label values must be integers, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ConfigurationError(f"label values {out} repeat a value; each landmark needs its own label")
    return out


def centroid_world(mask_zyx: np.ndarray, geometry: ImageGeometry) -> Optional[np.ndarray]:
    """World LPS centroid of the True voxels of a boolean (z, y, x) array, or None if empty."""
    idx = np.argwhere(mask_zyx)
    if idx.size == 0:
        return None
    return geometry.index_to_world(idx.mean(axis=0))


def _check_channel_file(p: Path) -> None:
    """File-level checks that read_image would make, for files read_image cannot take (4D)."""
    if not p.is_file():
        raise InputError(p, "file not found")
    if p.stat().st_size == 0:
        raise InputError(p, "file is empty")
    if str(p).lower().endswith((".nii", ".nii.gz")):
        # ITK zero-fills a truncated NIfTI silently: check the payload with nibabel first

        _check_nifti_payload(p, True)


def read_label_channels(path: PathLike) -> tuple[Optional[np.ndarray], ImageGeometry, bool]:
    """(array, geometry, multichannel) of a label-map file.

    A 3D scalar image gives a (z, y, x) array and multichannel False; a 4D image or a 3D image
    with several components gives a (channel, z, y, x) array and multichannel True.  A 4D
    image with a single volume counts as 3D.
    """
    p = Path(path)
    _check_channel_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(p, "not a readable image (SimpleITK could not read its header)") from None
    dim, size, comps = reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents()
    if comps == 1 and (dim == 3 or (dim == 4 and size[3] == 1)):
        image = read_image(p, is_mask=True)  # full validation for the ordinary 3D case
        return sitk.GetArrayFromImage(image), ImageGeometry.from_image(image), False
    if not ((dim == 4 and comps == 1) or (dim == 3 and comps > 1)):
        raise InputError(p, f"expected a 3D label map or a 4D / multi-component image with one channel per "
                            f"landmark, got a {dim}D image of size {size} with {comps} component(s)")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError(p, "not a readable image (SimpleITK could not read it)") from None
    if dim == 4:
        first = image[:, :, :, 0]  # 3D geometry: the spatial part of the 4D grid
        array = sitk.GetArrayFromImage(image)  # (channel, z, y, x)
    else:
        first = sitk.VectorIndexSelectionCast(image, 0)
        array = np.moveaxis(sitk.GetArrayFromImage(image), -1, 0)  # (z, y, x, c) -> (c, z, y, x)
    geometry = ImageGeometry.from_image(first)
    problem = geometry.problem()
    if problem:
        raise InputError(p, problem)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(p, f"{int(np.count_nonzero(~np.isfinite(array)))} voxel(s) are NaN or infinite")
    return array, geometry, True


def landmarks_from_labelmap(image_path: PathLike, names: Sequence[str], labels: Labels = None) -> LandmarkSet:
    """Landmarks `names` (world LPS mm) as the centroids of their labels or channels.

    `labels`: one label value (3D label map) or channel index (4D / multi-component) per
    name, as a sequence in the order of `names` or a mapping name -> value.  Default: label
    values 1..N for a 3D label map, channels 0..N-1 for a multichannel image.  A label or
    channel without voxels gives a missing landmark (None).
    """
    p = Path(image_path)
    names = [str(n) for n in names]
    if not names:
        raise ConfigurationError("no landmark names given")
    check_unique_names(names, None)
    array, geometry, multichannel = read_label_channels(p)
    values = _label_list(names, labels, 0 if multichannel else 1)
    points: dict[str, Optional[np.ndarray]] = {}
    if multichannel:
        n_channels = array.shape[0]
        if labels is None and n_channels != len(names):
            raise InputError(p, f"has {n_channels} channels but {len(names)} landmark names {names}; say which "
                                f"channel holds which landmark (labels / --labelmap-labels)")
        bad = [c for c in values if not 0 <= c < n_channels]
        if bad:
            raise InputError(p, f"channel(s) {bad} do not exist: the image has channels 0..{n_channels - 1}")
        for name, c in zip(names, values):
            points[name] = centroid_world(array[c] > 0, geometry)
    else:
        for name, v in zip(names, values):
            points[name] = centroid_world(array == v, geometry)
    return LandmarkSet(points)


__all__ = ["landmarks_from_labelmap", "read_label_channels", "centroid_world"]
