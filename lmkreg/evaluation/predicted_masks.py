"""Evaluation of predicted prostate masks (issue 17): segmentation metrics per modality, and the
registration variants the masks make possible, against the same ICP reference as the landmark
registration.

For a case whose predicted landmark JSONs name a predicted mask (``"prostate": {"mask_file":
...}``, written by lmkreg_predict with a segmentation model):

* per modality with a true mask: Dice and the mean / 95 % symmetric surface distance
  (lmkreg.evaluation.segmentation);
* with both predicted masks and a registration from the predicted landmarks, the transforms
  lmkreg_register would give, computed here with the same call (refine_on_surfaces on the
  predicted masks, started from the predicted-landmark transform):

  - ``surface``: ``--refine surface --landmark-weight 0`` (surfaces only);
  - ``landmarks_surface``: ``--refine surface --landmark-weight W`` (default
    LANDMARKS_SURFACE_WEIGHT);

  each scored like the landmark-only one (SRE, residual rotation against the ICP reference of the
  TRUE masks, Dice of the mapped true MR mask with the true US mask).  A refused refinement keeps
  the landmark transform (as register does) and is counted and its reason noted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.registration.predicted_masks import find_predicted_mask
from lmkreg.evaluation.segmentation import segmentation_metrics
from lmkreg.io.images import read_image
from lmkreg.evaluation.metrics import registration_dice, residual_rotation_deg, surface_registration_error
from lmkreg.registration.surface import refine_on_surfaces
from lmkreg.registration.icp import DEFAULT_LANDMARK_WEIGHT, SurfaceSettings, gland_surface
from lmkreg.evaluation.segmentation import SEGMENTATION_KEYS, summary_with_worst

VARIANTS = {"landmarks": "landmark-only", "surface": "surface-refined", "landmarks_surface": "landmarks+surface"}
# landmarks+surface: W times the mean squared landmark distance next to the mean squared surface
# distance; the same value as lmkreg_register's default (one default per key), chosen on the four
# protocol families (benchmarks/surface_weight_benchmark.py, documentation/inference.md).
LANDMARKS_SURFACE_WEIGHT = DEFAULT_LANDMARK_WEIGHT
VARIANT_KEYS = ("sre_surface_mm", "rotation_surface_deg", "dice_surface", "sre_landmarks_surface_mm",
                "rotation_landmarks_surface_deg", "dice_landmarks_surface")


def predicted_mask_files(pred_files: dict[str, Optional[Path]]) -> tuple[dict[str, Path], dict[str, str]]:
    """({modality: predicted mask file}, {modality: why there is none}) of a case's prediction files."""

    found, why = {}, {}
    for m, f in pred_files.items():
        if f is None:
            continue
        mask, reason = find_predicted_mask(f)
        if mask is None:
            why[m] = reason
        else:
            found[m] = mask
    return found, why


def segmentation_of_case(result, masks: dict[str, Path], truth: dict[str, Optional[sitk.Image]]) -> None:
    """result.segmentation[modality] for every modality with a predicted and a true mask."""

    for m, path in masks.items():
        if truth.get(m) is None:
            result.notes.append(f"{m}: predicted mask but no true mask: segmentation not scored")
            continue
        result.segmentation[m] = segmentation_metrics(read_image(path, is_mask=True), truth[m])


def refined_registrations(result, masks: dict[str, Path], predicted: RigidTransform, reference: RigidTransform,
                          mr_surface_points: np.ndarray, mr_true: sitk.Image, us_true: sitk.Image,
                          landmarks: tuple[np.ndarray, np.ndarray], names: Sequence[str],
                          landmark_weight: float = LANDMARKS_SURFACE_WEIGHT) -> None:
    """The surface-refined and landmarks+surface rows of one case (fields of `result`)."""

    try:
        mr, us = gland_surface(masks["MR"]), gland_surface(masks["US"])
    except InputError as exc:
        result.notes.append(f"predicted mask unusable ({exc}): no surface-refined rows")
        return
    for variant, weight in (("surface", 0.0), ("landmarks_surface", landmark_weight)):
        ref = refine_on_surfaces(predicted, mr, us, SurfaceSettings(landmark_weight=weight), landmarks, names)
        t = ref.transform
        setattr(result, f"sre_{variant}_mm", surface_registration_error(mr_surface_points, reference, t))
        setattr(result, f"rotation_{variant}_deg", residual_rotation_deg(reference, t))
        setattr(result, f"dice_{variant}", registration_dice(mr_true, us_true, t))
        result.refinement[variant] = {"accepted": ref.accepted, "reason": ref.reason,
                                      "beyond_bound": ref.beyond_bound, "rescued": ref.rescued,
                                      "surface_distance_mm": {"landmarks": ref.distance_landmarks_mm,
                                                              "surface": ref.distance_surface_mm},
                                      "landmark_weight": weight, "transform": t.matrix().tolist()}
        if ref.rescued:
            result.notes.append(f"{VARIANTS[variant]}: refinement refused ({ref.reason}); rescued: {ref.rescue.reason}")
        elif not ref.accepted:
            result.notes.append(f"{VARIANTS[variant]}: refinement refused, landmark transform kept: {ref.reason}")


def mask_summary(results: Sequence) -> dict:
    """Segmentation per modality (Dice: worst = min; distances: worst = max) and the three
    registration rows over the cases that have all three (so the rows compare like with like)."""

    out: dict = {"segmentation": {}, "registration_variants": {}}
    for m in ("MR", "US"):
        rows = [r.segmentation[m] for r in results if m in r.segmentation]
        if rows:
            out["segmentation"][m] = {k: summary_with_worst([row.get(k) for row in rows], "min" if k == "dice"
                                                            else "max") for k in SEGMENTATION_KEYS}
    both = [r for r in results if np.isfinite(r.sre_surface_mm) and np.isfinite(r.sre_predicted_mm)]
    if both:
        for variant in VARIANTS:
            src = "predicted" if variant == "landmarks" else variant
            row = {"sre_mm": summary_with_worst([getattr(r, f"sre_{src}_mm") for r in both], "max"),
                   "dice": summary_with_worst([getattr(r, f"dice_{src}") for r in both], "min"),
                   "rotation_deg": summary_with_worst([getattr(r, f"rotation_{src}_deg") for r in both], "max")}
            if variant != "landmarks":
                row["refused"] = int(sum(not r.refinement.get(variant, {}).get("accepted", False) for r in both))
                row["beyond_bound"] = int(sum(bool(r.refinement.get(variant, {}).get("beyond_bound")) for r in both))
                row["rescued"] = int(sum(bool(r.refinement.get(variant, {}).get("rescued")) for r in both))
            out["registration_variants"][variant] = row
        out["registration_variants_cases"] = len(both)
    return out
