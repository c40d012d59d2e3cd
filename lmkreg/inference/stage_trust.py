"""Stage disagreement as a trust signal of a cascade (issue 14): the refine landmark against
the localizer's, the refine heatmap against its crop border, and which stage's calibrated
radius the final landmark carries.

Why: both stages look at the same anatomy.  The localizer's calibrated radius says how far its
own landmark may be from the truth (at its coverage), the refine's how far the refine landmark
may be; two right answers are therefore at most the sum of the two radii apart.  A refine
landmark further from the localizer's than that means one of the two is wrong, and nothing in
the refine stage's own signals shows it (a crop that missed the landmark can still give a
sharp, mirror-consistent heatmap - at the crop border).  Without a localizer radius the limit
is the largest crop offset the refine stage was trained with (``crop_jitter_mm`` per axis,
x sqrt 3 for the diagonal): beyond it the refine stage works outside its training.

All points are world LPS mm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lmkreg.geometry.masks import crop_offset_limit_mm
from lmkreg.inference.prediction import Prediction
from lmkreg.inference.predictor import BORDER_MASS_FLAG, BORDER_VOXELS
from lmkreg.trust.flags import STAGES, Flag, landmark_flag

LOCALIZER = "localizer"


@dataclass
class StageCheck:
    """Per landmark: the stages' distance (mm), the limit it is held to (mm), where that limit
    comes from, the refine heatmap's share at the crop border; the flags this raises."""

    distance_mm: dict[str, Optional[float]] = field(default_factory=dict)
    limit_mm: dict[str, Optional[float]] = field(default_factory=dict)
    limit_from: dict[str, str] = field(default_factory=dict)
    border_mass: dict[str, Optional[float]] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)


def _point(p: Optional[np.ndarray]) -> str:
    return "?" if p is None else "[" + ", ".join(f"{float(v):.1f}" for v in p) + "]"


def _number(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def plan_limit_mm(crop_jitter_mm: float) -> float:
    """The disagreement a refine stage was trained for: its crop offset bound along the diagonal."""
    return crop_offset_limit_mm(crop_jitter_mm)


def disagreement_limit(localizer_radius: Optional[float], refine_radius: Optional[float], crop_jitter_mm: float,
                       coverage: Optional[float] = None) -> tuple[float, str]:
    """(limit mm, where it comes from) for one landmark; see the module docstring."""
    at = f"{coverage:.0%} " if coverage else ""
    if localizer_radius is not None:
        if refine_radius is not None:
            return (localizer_radius + refine_radius,
                    f"the localizer's {at}error radius {localizer_radius:.1f} mm + the refine stage's "
                    f"{refine_radius:.1f} mm")
        return localizer_radius, f"the localizer's {at}error radius"
    return (plan_limit_mm(crop_jitter_mm),
            f"no localizer error radius: the refine crop offset it was trained for, {crop_jitter_mm:.1f} mm per axis "
            f"x sqrt 3")


def check_stages(stage1: Prediction, final: Prediction, names: Sequence[str], crop_jitter_mm: float) -> StageCheck:
    """Compare the refine prediction `final` (its own radii, before any are borrowed) with the
    localizer's `stage1`; flags name the landmark, both positions, the distance and the limit."""
    out = StageCheck()
    coverage = stage1.coverage or final.coverage
    for n in names:
        a, b = stage1.landmarks.points.get(n), final.landmarks.points.get(n)
        d = None if a is None or b is None else float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
        limit, source = disagreement_limit(_number(stage1.radius_mm.get(n)), _number(final.radius_mm.get(n)),
                                           crop_jitter_mm, coverage)
        out.distance_mm[n], out.limit_mm[n], out.limit_from[n] = d, limit, source
        if d is not None and d > limit:
            out.flags.append(landmark_flag(STAGES, n, "stage_disagreement_mm",
                                           f"refine stage at {_point(b)} and localizer at {_point(a)} mm (LPS) "
                                           f"disagree by {d:.1f} mm > {limit:.1f} mm ({source})", d, limit, "mm"))
        mass = _number(final.signals.get(n, {}).get("crop_border_mass"))
        out.border_mass[n] = mass
        if mass is not None and mass > BORDER_MASS_FLAG:
            out.flags.append(landmark_flag(STAGES, n, "crop_border_mass",
                                           f"{mass:.0%} of the refine heatmap lies in the outer {BORDER_VOXELS} "
                                           f"voxels of its crop (> {BORDER_MASS_FLAG:.0%}): the crop did not hold the "
                                           f"landmark (localizer at {_point(a)} mm LPS)", mass, BORDER_MASS_FLAG))
    return out


def borrow_localizer_radii(final: Prediction, stage1: Prediction, names: Sequence[str],
                           max_radius_mm: float) -> dict[str, str]:
    """Where the refine stage has no calibrated radius but the localizer has one, give the final
    landmark the localizer's (larger than the refine's error usually is, so conservative), with
    a note, and apply the ``--max-radius`` rule to it.  Returns {name: stage the radius is from}."""
    source = {}
    for n in names:
        own, borrowed = _number(final.radius_mm.get(n)), _number(stage1.radius_mm.get(n))
        if own is not None:
            source[n] = "refine"
            continue
        if borrowed is None:
            continue
        why = final.radius_note.get(n, "no calibration")
        final.radius_mm[n] = borrowed
        final.radius_note[n] = (f"the localizer's radius: the refine stage has none ({why}); usually larger than "
                                f"the refine landmark's error")
        source[n] = LOCALIZER
        if final.coverage is None:
            final.coverage = stage1.coverage
        if borrowed > max_radius_mm:
            final.flags.append(landmark_flag(STAGES, n, "error_radius_mm",
                                             f"{stage1.coverage:.0%} error radius {borrowed:.1f} mm (the localizer's; "
                                             f"the refine stage has none) > {max_radius_mm:g} mm", borrowed,
                                             max_radius_mm, "mm"))
    return source


__all__ = ["StageCheck", "borrow_localizer_radii", "check_stages", "disagreement_limit", "plan_limit_mm"]
