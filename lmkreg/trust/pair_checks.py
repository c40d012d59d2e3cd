"""Model-free checks of an MR/US landmark pair: what a rigid anatomy allows whatever the landmarks'
error, for any two landmark files (a model's, a clinician's, another tool's).

A rigid map keeps distances.  So the distance between two landmarks must be the same in MR and
in US up to the landmarks' localisation error and the gland's deformation between the scans;
the triangle must be wide enough to fix a rotation; and the rigid fit's RMS residual must stay
within what those errors allow.

Tolerance per landmark (documented default, used when a file says nothing about its error):
``LITERATURE_LANDMARK_ERROR_MM`` = 2.5 mm, the 3D RMS localisation error of one prostate
landmark in one modality.  Why this number: manual prostate landmark/fiducial localisation in
MR and TRUS is repeatable to about 2-3 mm between observers (the inter-observer errors
reported for apex, base and midgland points in MR-TRUS fusion studies, and the target
registration error floor of landmark-based MR-TRUS registration of about 2 mm), and lmkreg's
own phantom models reach 1-2 mm.  As a per-coordinate sd: 2.5 / sqrt(3) = 1.44 mm.  When a file
carries a better estimate (calibrated radii, or a model's median validation error), that is used
instead; the deformation term is the training pairs' 95th-percentile RMS residual of the true
landmarks when the files carry it, else ``DEFAULT_DEFORMATION_MM``.

* distance check: |d_MR - d_US| > max(FLOOR, sqrt((K sd)^2 + deformation^2)) with sd the
  distance difference's standard deviation (1 sd per coordinate along the line per landmark
  and file: sqrt(s_i^2 + s_j^2 + t_i^2 + t_j^2)) and K = 2.5: 1.2 % two-sided per distance, so
  that the three distances together flag about 3.5 % of pairs whose errors are as estimated (K = 2
  flagged 12 % with the residual check, measured in tests/test_trust_units.py);
* degenerate triangle: a triangle whose smallest height (a landmark's distance from the line of
  the other two) is below ``DEGENERATE_HEIGHT_MM`` fixes the rotation about that line to no
  better than atan(1.44 / 4) = 20 deg at the default error;
* residual: the sum of squared residuals of a 3-point rigid fit with isotropic errors is
  sigma^2 chi^2(3); its 95th percentile as RMS is sigma sqrt(7.81 / 3), added in quadrature to
  the deformation term.

Pure functions over plain arrays: points are world LPS mm, MR points in MR world, US points in
US world.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Optional, Sequence

import numpy as np
from scipy.stats import chi2

from lmkreg.trust.flags import PAIR, Flag, flag_texts, scoped_flag

LITERATURE_LANDMARK_ERROR_MM = 2.5  # 3D RMS localisation error of one landmark in one modality
DEFAULT_SIGMA_MM = LITERATURE_LANDMARK_ERROR_MM / math.sqrt(3)  # per coordinate: 1.44 mm
DEFAULT_DEFORMATION_MM = 1.5  # gland deformation between MR and US when the files carry no training statistics
DISTANCE_K = 2.5  # per distance; see the module doc (family of three distances)
DISTANCE_FLOOR_MM = 3.0
DEGENERATE_HEIGHT_MM = 4.0
RMS_FACTOR_95 = math.sqrt(chi2.ppf(0.95, 3) / 3)


@dataclass
class PairCheckResult:
    """Findings of the model-free checks: ``flags`` (each says which check fired and its
    numbers), the per-distance rows, the triangles' smallest heights and the residual limit."""

    flags: list[Flag] = field(default_factory=list)
    distances: list[dict] = field(default_factory=list)
    smallest_height_mm: dict[str, float] = field(default_factory=dict)
    rms_limit_mm: Optional[float] = None
    rms_mm: Optional[float] = None

    def to_json(self) -> dict:
        return {"flags": flag_texts(self.flags), "distances": self.distances, "smallest_height_mm": self.smallest_height_mm,
                "rms_limit_mm": self.rms_limit_mm, "rms_residual_mm": self.rms_mm,
                "tolerance": f"landmark error from the files (radii, median validation error) or the literature "
                             f"default {LITERATURE_LANDMARK_ERROR_MM} mm 3D RMS; K = {DISTANCE_K:g}, floor "
                             f"{DISTANCE_FLOOR_MM:g} mm"}


def distance_tolerance(sd_mm: float, deformation_mm: float) -> float:
    """The largest MR/US disagreement of one landmark distance (mm) the errors explain."""
    return max(DISTANCE_FLOOR_MM, math.hypot(DISTANCE_K * sd_mm, deformation_mm))


def rms_limit(sigma_mr: np.ndarray, sigma_us: np.ndarray, deformation_mm: float) -> float:
    """95th percentile of a 3-point rigid fit's RMS residual (mm) with these per-coordinate sds,
    in quadrature with the deformation."""
    s2 = float(np.mean(np.asarray(sigma_mr, float) ** 2 + np.asarray(sigma_us, float) ** 2))
    return math.sqrt(deformation_mm ** 2 + RMS_FACTOR_95 ** 2 * s2)


def smallest_height(points: np.ndarray) -> float:
    """The smallest distance of a point from the line through two others (mm); inf for < 3 points."""
    pts = np.asarray(points, float)
    best = math.inf
    for k in range(len(pts)):
        for i, j in combinations([m for m in range(len(pts)) if m != k], 2):
            u = pts[j] - pts[i]
            n = float(np.linalg.norm(u))
            if n == 0:
                return 0.0
            best = min(best, float(np.linalg.norm(np.cross(pts[k] - pts[i], u))) / n)
    return best


def check_pair(names: Sequence[str], mr_points: np.ndarray, us_points: np.ndarray, sigma_mr: np.ndarray,
               sigma_us: np.ndarray, deformation_mm: Optional[float], rms_mm: Optional[float]) -> PairCheckResult:
    """Distance agreement, triangle shape and fit residual of one pair (see the module doc).
    `sigma_*`: per-landmark localisation sd per coordinate (mm) in `names` order; `rms_mm`: the
    three-landmark fit's RMS residual (None: no fit)."""
    names = list(names)
    p, q = np.asarray(mr_points, float), np.asarray(us_points, float)
    s, t = np.asarray(sigma_mr, float), np.asarray(sigma_us, float)
    deform = DEFAULT_DEFORMATION_MM if deformation_mm is None else float(deformation_mm)
    out = PairCheckResult()
    for i, j in combinations(range(len(names)), 2):
        d_mr, d_us = float(np.linalg.norm(p[i] - p[j])), float(np.linalg.norm(q[i] - q[j]))
        tol = distance_tolerance(math.sqrt(s[i] ** 2 + s[j] ** 2 + t[i] ** 2 + t[j] ** 2), deform)
        diff = abs(d_mr - d_us)
        out.distances.append({"landmarks": [names[i], names[j]], "mr_mm": d_mr, "us_mm": d_us, "difference_mm": diff,
                              "tolerance_mm": tol, "disagrees": diff > tol})
        if diff > tol:
            out.flags.append(scoped_flag(PAIR, "pair", f"distance_{names[i]}-{names[j]}_difference_mm",
                                         f"{names[i]}-{names[j]} {d_mr:.1f} mm in MR, {d_us:.1f} mm in US: differ by "
                                         f"{diff:.1f} mm > {tol:.1f} mm tolerance (a rigid anatomy keeps distances: a "
                                         f"landmark is wrong or the files are not of the same patient)", diff, tol, "mm"))
    if len(names) >= 3:
        for label, pts in (("MR", p), ("US", q)):
            h = smallest_height(pts)
            out.smallest_height_mm[label] = h
            if h < DEGENERATE_HEIGHT_MM:
                out.flags.append(scoped_flag(PAIR, "pair", f"{label}_triangle_height_mm",
                                             f"the {label} landmarks are nearly collinear (smallest triangle height "
                                             f"{h:.1f} mm < {DEGENERATE_HEIGHT_MM:g} mm): the rotation about their line "
                                             f"is poorly fixed", h, DEGENERATE_HEIGHT_MM, "mm"))
        out.rms_limit_mm = rms_limit(s, t, deform)
        out.rms_mm = rms_mm
        if rms_mm is not None and rms_mm > out.rms_limit_mm:
            out.flags.append(scoped_flag(PAIR, "pair", "rms_residual_mm",
                                         f"RMS residual {rms_mm:.1f} mm > {out.rms_limit_mm:.1f} mm expected at most (by "
                                         f"{rms_mm - out.rms_limit_mm:.1f} mm): a landmark is wrong or the files are not "
                                         f"of the same patient", rms_mm, out.rms_limit_mm, "mm"))
    return out
