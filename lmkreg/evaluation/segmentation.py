"""Segmentation metrics of a predicted prostate mask against the true one (issue 17).

* Dice on the true mask's grid (a prediction on another grid is resampled onto it, nearest
  neighbour, through the identity map of world space: both grids are world LPS mm).
* Symmetric surface distance in world mm: the surface of a mask is its boundary voxels (foreground
  voxels with a background face neighbour, or on the image border); every boundary voxel centre
  of each mask is mapped to world LPS mm through its own image's origin, spacing and direction
  and measured to the nearest boundary voxel centre of the other mask.  Both directions are
  pooled: ``mean_surface_distance_mm`` is their mean, ``surface_distance_95_mm`` their 95th
  percentile (the "HD95").  Identical masks give 0; voxel centres make a mask shifted by one
  voxel read one voxel spacing.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from lmkreg.geometry import ImageGeometry
from lmkreg.geometry.masks import mask_volume_ml
from lmkreg.evaluation.metrics import dice

SEGMENTATION_KEYS = ("dice", "mean_surface_distance_mm", "surface_distance_95_mm")


def boundary_points_world(mask: sitk.Image) -> np.ndarray:
    """World LPS mm (N, 3) of the mask's boundary voxel centres (6-neighbourhood; the image
    border counts as background)."""
    arr = sitk.GetArrayFromImage(mask) > 0
    inner = ndimage.binary_erosion(np.pad(arr, 1), structure=ndimage.generate_binary_structure(3, 1))[1:-1, 1:-1, 1:-1]
    idx = np.argwhere(arr & ~inner).astype(float)
    return ImageGeometry.from_image(mask).index_to_world(idx)


def surface_distances(a: sitk.Image, b: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each boundary point of `a` to the boundary of `b`, and of `b` to `a`), mm."""
    pa, pb = boundary_points_world(a), boundary_points_world(b)
    if not len(pa) or not len(pb):
        raise ValueError("an empty mask has no surface")
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]


def on_grid_of(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """`image` (a mask) on `reference`'s grid: itself when the grids agree, else resampled
    (nearest neighbour, identity map of world space)."""
    if ImageGeometry.from_image(image).same_as(ImageGeometry.from_image(reference)) and \
            image.GetSize() == reference.GetSize():
        return image
    return sitk.Resample(sitk.Cast(image > 0, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                         0, sitk.sitkUInt8)


def segmentation_metrics(predicted: sitk.Image, truth: sitk.Image) -> dict[str, Optional[float]]:
    """Dice, mean and 95 % symmetric surface distance (mm) and both volumes (mL).  An empty
    prediction has Dice 0 and no surface distance (None)."""

    on_truth = on_grid_of(predicted, truth)
    out: dict[str, Optional[float]] = {
        "dice": dice(sitk.GetArrayViewFromImage(on_truth), sitk.GetArrayViewFromImage(truth)),
        "mean_surface_distance_mm": None, "surface_distance_95_mm": None,
        "volume_ml_predicted": mask_volume_ml(predicted), "volume_ml_true": mask_volume_ml(truth)}
    try:
        d_pt, d_tp = surface_distances(predicted, truth)
    except ValueError:
        return out
    pooled = np.concatenate([d_pt, d_tp])
    out["mean_surface_distance_mm"] = float(pooled.mean())
    out["surface_distance_95_mm"] = float(np.percentile(pooled, 95))
    return out


def summary_with_worst(values, worst: str) -> dict:
    """n, mean, sd, median and the worst value ('min' for Dice, 'max' for distances) of the
    finite values; {"n": 0} if there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "worst": float(v.min() if worst == "min" else v.max())}
