"""Metrics of the paper, in world LPS millimetres.

* MRE: Euclidean distance between predicted and true landmarks, per landmark.
* SRE: mean distance, over points of the MR prostate surface, between where the reference
  rigid map and the predicted one send them.  The reference is ICP between the MR and US
  prostate meshes (paper, section 3.2).
* Dice between the MR mask mapped into US space and the US mask.
* Residual rotation: angle of the rotation taking the predicted map onto the reference.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from lmkreg.geometry.mesh import surface_points
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.registration.transform_files import to_sitk_resampling_transform

SUCCESS_THRESHOLDS_MM = (2.0, 4.0, 8.0)


def radial_errors(pred: LandmarkSet, truth: LandmarkSet, names: Sequence[str]) -> np.ndarray:
    """Distance (mm) per landmark; NaN where either side is missing."""
    return np.linalg.norm(pred.to_array(names) - truth.to_array(names), axis=1)


def success_rates(errors: np.ndarray, thresholds: Sequence[float] = SUCCESS_THRESHOLDS_MM) -> dict[str, float]:
    """Fraction of (non-missing) landmark errors within each threshold."""
    e = np.asarray(errors, float).ravel()
    e = e[np.isfinite(e)]
    return {f"sdr_{t:g}mm": float(np.mean(e <= t)) if e.size else float("nan") for t in thresholds}


def icp_rigid(mr_mesh: trimesh.Trimesh, us_mesh: trimesh.Trimesh, initial: Optional[RigidTransform] = None,
              samples: int = 3000, target_samples: int = 30000, max_iterations: int = 100,
              tolerance: float = 1e-7, seed: int = 0) -> RigidTransform:
    """Rigid MR->US map by point-to-plane ICP of MR surface points onto the US surface.

    Point-to-plane (each residual measured along the target's normal) converges in tens of
    iterations where point-to-point ICP (trimesh.registration.icp) needs hundreds on smooth
    organs.  Pairs farther apart than 3x the median distance are ignored as outliers.
    """
    src = surface_points(mr_mesh, samples, seed)
    tgt, faces = trimesh.sample.sample_surface(us_mesh, target_samples, seed=seed + 1)
    normals = us_mesh.face_normals[faces]
    tree = cKDTree(tgt)
    t = initial if initial is not None else RigidTransform(np.eye(3), us_mesh.centroid - mr_mesh.centroid)
    for _ in range(max_iterations):
        p = t.apply(src)
        dist, idx = tree.query(p)
        keep = dist <= 3 * max(np.median(dist), 1e-6)
        p, q, n = p[keep], tgt[idx[keep]], normals[idx[keep]]
        a = np.hstack([np.cross(p, n), n])
        b = ((q - p) * n).sum(1)
        x, *_ = np.linalg.lstsq(a, b, rcond=None)
        step = RigidTransform(Rotation.from_rotvec(x[:3]).as_matrix(), x[3:])
        t = step.compose(t)
        if np.linalg.norm(x) < tolerance:
            break
    return RigidTransform(t.rotation, t.translation)


def surface_registration_error(mr_surface_points: np.ndarray, reference: RigidTransform,
                               predicted: RigidTransform) -> float:
    """Mean ||reference(p) - predicted(p)|| over MR surface points (mm)."""
    return float(np.mean(np.linalg.norm(reference.apply(mr_surface_points) - predicted.apply(mr_surface_points), axis=1)))


def residual_rotation_deg(reference: RigidTransform, predicted: RigidTransform) -> float:
    """Angle of the rotation between the two maps (degrees)."""
    return RigidTransform(reference.rotation.T @ predicted.rotation, np.zeros(3)).rotation_angle_deg()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else float("nan")


def map_mask_to_us(mr_mask: sitk.Image, us_reference: sitk.Image, mr_to_us: RigidTransform) -> np.ndarray:
    """MR mask resampled (nearest) onto the US grid through the MR->US map."""
    out = sitk.Resample(sitk.Cast(mr_mask > 0, sitk.sitkUInt8), us_reference, to_sitk_resampling_transform(mr_to_us),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def registration_dice(mr_mask: sitk.Image, us_mask: sitk.Image, mr_to_us: RigidTransform) -> float:
    return dice(map_mask_to_us(mr_mask, us_mask, mr_to_us), sitk.GetArrayFromImage(us_mask))


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> Optional[float]:
    """Area under the ROC curve of `scores` (higher = more suspicious) for the labels `positive`:
    the probability that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney U of the positives divided by n_pos * n_neg).  None when a class is empty."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks (1-based) over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def radius_coverage(errors: Sequence[float], radii: Sequence[Optional[float]]) -> dict:
    """Share of landmarks whose error is within their radius, over those that have both."""
    pairs = [(e, r) for e, r in zip(errors, radii)
             if e is not None and r is not None and math.isfinite(e) and math.isfinite(r)]
    if not pairs:
        return {"n": 0, "coverage": None}
    return {"n": len(pairs), "coverage": float(np.mean([e <= r for e, r in pairs])),
            "median_radius_mm": float(np.median([r for _, r in pairs]))}
