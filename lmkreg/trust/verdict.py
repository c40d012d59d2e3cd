"""A pair's verdict from the consequences of what its landmark files say (issue 26).

A landmark file's flag is a statement about one landmark ("apex: no image signal within 2 mm:
placed from the anatomy around it, not seen") or about the whole case ("image: ...", "case:
..."). What matters for the registration is what the flag does to the transform:

* a flagged landmark gets a wider error radius: at least ``FLAGGED_RADIUS_MM`` (the 5 mm that
  makes a landmark an error in the evaluation), or the disagreement / heatmap spread its own
  model measured when that is larger.  Its sigma enters the residual limit and the Monte Carlo
  transform uncertainty (lmkreg.trust.pair.transform_uncertainty);
* the pair is flagged when the 90th percentile of the target error at the gland (mean
  displacement of points spread over the gland, see ``gland_targets``) exceeds
  ``TARGET_ERROR_LIMIT_MM`` = 5 mm, the SRE above which a registration counts as failed,
  i.e. when more than 1 in 10 transforms consistent with the landmarks' errors would fail;
* a case-wide flag (the image itself looks unlike training, the landmarks' layout is
  implausible) has no landmark to widen: it flags the pair as before.

When neither file has an error estimate of its own (bare files, fold ``all`` without CV folds),
the landmarks' error is the literature default (lmkreg.trust.pair_checks): it sets the
tolerances of the model-free checks but is not a measured error, so it alone never makes a
transform "uncertain"; only a flagged landmark's widening does.

Pure functions over plain data (landmark sets and their ``extras``); points are world LPS mm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.stats import chi2

from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import PAIR, SURFACE, Flag, flag_details, flag_texts, read_flags, scoped_flag
from lmkreg.trust.pair_checks import DEFAULT_SIGMA_MM, LITERATURE_LANDMARK_ERROR_MM

FLAGGED_RADIUS_MM = 5.0  # a flagged landmark's 90 % radius is at least this (the evaluation's failure threshold)
TARGET_ERROR_LIMIT_MM = 5.0  # 90th percentile target error at the gland above which the pair is flagged
COVERAGE_SIGMA_90 = math.sqrt(chi2.ppf(0.9, 3))  # 90 % radius / sigma of a 3D isotropic Gaussian (2.50)
MEDIAN_SIGMA = math.sqrt(chi2.ppf(0.5, 3))


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else None


@dataclass
class FileErrors:
    """One landmark file's per-landmark error sd per coordinate (mm), where it comes from, which
    landmarks were widened by a flag and why, and its case-wide flags."""

    sigmas: np.ndarray
    source: str  # "calibrated", "uncalibrated" (median validation error) or "default"
    widened: dict[str, str] = field(default_factory=dict)
    case_flags: list[Flag] = field(default_factory=list)
    estimate_text: str = ""  # the file's own words (trust.calibration_source), if any


def file_errors(landmarks: LandmarkSet, names: Sequence[str]) -> FileErrors:
    """Per-landmark sigmas of one file: calibrated radii, else the model's median validation
    error, else the literature default; landmark flags widen (see the module doc)."""
    names = list(names)
    extras = landmarks.extras if isinstance(landmarks.extras, dict) else {}
    trust = extras.get("trust") if isinstance(extras.get("trust"), dict) else {}
    lm = trust.get("landmarks") if isinstance(trust.get("landmarks"), dict) else {}
    coverage = _number(trust.get("coverage")) or 0.9
    radii = [_number((lm.get(n) or {}).get("radius_mm")) for n in names]
    medians = [_number((lm.get(n) or {}).get("validation_median_error_mm")) for n in names]
    if lm and all(r is not None for r in radii):
        sig, source = np.asarray(radii) / math.sqrt(chi2.ppf(min(coverage, 0.999), 3)), "calibrated"
    elif lm and all(m is not None for m in medians):
        sig, source = np.asarray(medians) / MEDIAN_SIGMA, "uncalibrated"
    else:
        sig, source = np.full(len(names), DEFAULT_SIGMA_MM), "default"
    sig = np.asarray(sig, float).copy()
    flags = read_flags(extras, list(landmarks.names) + [n for n in names if n not in landmarks.names])
    case_flags = [f for f in flags if f.landmark is None]
    confidence = extras.get("confidence") if isinstance(extras.get("confidence"), dict) else {}
    widened = {}
    for i, n in enumerate(names):
        mine = [f.text for f in flags if f.landmark == n]
        if not mine:
            continue
        c = confidence.get(n) if isinstance(confidence.get(n), dict) else {}
        measured = [v for v in (_number(c.get("fold_disagreement_mm")), _number(c.get("heatmap_spread_mm"))) if v]
        radius = max([FLAGGED_RADIUS_MM, COVERAGE_SIGMA_90 * sig[i]] + measured)
        sig[i] = radius / COVERAGE_SIGMA_90
        widened[n] = f"{'; '.join(mine)} (90 % radius widened to {radius:.1f} mm)"
    text = trust.get("calibration_source") if isinstance(trust.get("calibration_source"), str) else ""
    return FileErrors(sig, source, widened, case_flags, text)


def gland_targets(mr_points: np.ndarray) -> np.ndarray:
    """Points spread over the gland the landmarks outline (MR world LPS mm): their centroid and
    the centroid +- R along the three principal axes of the landmarks, R their RMS distance from
    the centroid (apex and bladder neck lie on the gland's ends, so R is about its radius).  The
    normal of the landmark plane is among the axes: a tilt of the plane moves those points."""
    p = np.asarray(mr_points, float)
    c = p.mean(0)
    r = float(np.sqrt(np.mean(np.sum((p - c) ** 2, axis=1))))
    _, _, vt = np.linalg.svd(p - c)
    axes = vt if vt.shape[0] == 3 else np.eye(3)
    return np.vstack([c[None], c + r * axes, c - r * axes])


def consequence_flag(uncertainty: Optional[dict], mr: FileErrors, us: FileErrors,
                     limit_mm: float = TARGET_ERROR_LIMIT_MM) -> Optional[Flag]:
    """The flag of a transform made uncertain by its landmarks' errors, or None.  Applied when a
    landmark was widened by a flag, or when both files have an error estimate of their own."""
    if not uncertainty or uncertainty.get("gland_target_error_mm_90") is None:
        return None
    measured = mr.source != "default" and us.source != "default"
    if not (mr.widened or us.widened or measured):
        return None
    tre = float(uncertainty["gland_target_error_mm_90"])
    if tre <= limit_mm:
        return None
    why = "; ".join(f"{m} {w}" for m, f in (("MR", mr), ("US", us)) for w in f.widened.values())
    return scoped_flag(PAIR, "pair", "gland_target_error_mm_90",
                       f"transform uncertain: 90 % target error at the gland {tre:.1f} mm > {limit_mm:g} mm (rotation "
                       f"{uncertainty.get('rotation_deg_90', float('nan')):.0f} deg at 90 %)"
                       + (f", from the flagged landmarks: {why}" if why else ", from the landmarks' error radii"),
                       tre, limit_mm, "mm")


def estimate_notes(mr: FileErrors, us: FileErrors) -> list[str]:
    """What the pair check knows about each file's landmark error, in words."""
    notes = []
    for label, f in (("MR", mr), ("US", us)):
        if f.source == "default":
            notes.append(f"{label} file: uncalibrated, no error estimate of its own"
                         + (f" ({f.estimate_text})" if f.estimate_text else "")
                         + f": its landmark error is taken as the literature default {LITERATURE_LANDMARK_ERROR_MM} "
                           f"mm (3D RMS) for the consistency checks only")
        elif f.source == "uncalibrated":
            notes.append(f"{label} file: uncalibrated: its localisation error is counted from the model's median "
                         f"validation error" + (f" ({f.estimate_text})" if f.estimate_text else ""))
        elif f.estimate_text:
            notes.append(f"{label} file: {f.estimate_text}")
        for n, w in f.widened.items():
            notes.append(f"{label} {n} flagged by its model: {w}")
    return notes


# -- surface-aware verdict -------------------------------------------------------------------------

# trimmed MR-to-US surface distance (mm) two segmentations of one gland reach after a good rigid
# fit, when the landmark files do not carry the training pairs' own figure: inter-observer mean
# surface distances of prostate MR and TRUS segmentations are about 1-2 mm, and lmkreg's phantom
# pairs fit at about 0.3 mm.  Above it the surfaces do not fit: the masks or the pair are wrong.
DEFAULT_SURFACE_DISTANCE_LIMIT_MM = 2.0


def surface_distance_limit(mr: LandmarkSet, us: LandmarkSet) -> tuple[float, str]:
    """(limit mm, where it comes from): the training pairs' p95 trimmed surface distance when a
    file carries it (``trust.training_pair_surface_mm``), else the documented default."""
    for s in (mr, us):
        trust = s.extras.get("trust") if isinstance(s.extras, dict) else None
        doc = trust.get("training_pair_surface_mm") if isinstance(trust, dict) else None
        if isinstance(doc, dict) and _number(doc.get("p95")) is not None and doc.get("n"):
            return max(float(doc["p95"]) * 1.5, 0.5), f"1.5 x the training pairs' p95 ({doc['p95']:.2f} mm, n={doc['n']})"
    return DEFAULT_SURFACE_DISTANCE_LIMIT_MM, f"default {DEFAULT_SURFACE_DISTANCE_LIMIT_MM:g} mm (no training figure)"


def surface_verdict(trust: dict, accepted: bool, distance_mm: Optional[float], change: tuple[Optional[float],
                    Optional[float]], residuals_mm: dict, limit: tuple[float, str]) -> dict:
    """The pair's ``trust`` after an accepted surface refinement: the verdict comes from the
    surface fit (trimmed surface distance against `limit`), and the landmark-stage findings
    (residual, distances, transform uncertainty, two-landmark fallback) become notes naming the
    landmark the surfaces disagreed with most (largest residual under the surface transform).
    Case-wide flags of a landmark file (the image itself looks wrong) stay flags.  A refusal
    keeps the landmark verdict (the caller adds the refusal's own flags)."""
    value, source = limit
    old = read_flags(trust)
    if not accepted:  # refused without leaving the bound: the landmark transform is kept and its fit judged
        if distance_mm is not None and math.isfinite(distance_mm) and distance_mm > value:
            flags = old + [scoped_flag(SURFACE, "pair", "surface_distance_mm",
                                       f"the gland surfaces do not fit under the landmark transform (the refinement "
                                       f"could not improve it): trimmed surface distance {distance_mm:.2f} mm > "
                                       f"{value:.2f} mm ({source}); check the masks and the landmarks",
                                       distance_mm, value, "mm")]
            out = dict(trust)
            out.update(flags=flag_texts(flags), flag_details=flag_details(flags), reliable=False)
            return out
        return trust
    kept = [f for f in old if f.signal.endswith("_file_case_flags")]  # the image itself looks wrong
    moved = [f.text for f in old if f not in kept]
    notes = list(trust.get("notes", []))
    worst = max(residuals_mm.items(), key=lambda kv: kv[1]) if residuals_mm else None
    if moved:
        named = (f"; the surfaces disagreed most with {worst[0]} ({worst[1]:.1f} mm from its MR position mapped by "
                 f"the surface transform)") if worst else ""
        notes += [f"landmark stage (superseded by the accepted surface fit{named}): {f}" for f in moved]
    flags = list(kept)
    rot, shift = change
    if distance_mm is None or not math.isfinite(distance_mm) or distance_mm > value:
        shown = "n/a" if distance_mm is None else f"{distance_mm:.2f} mm"
        flags.append(scoped_flag(SURFACE, "pair", "surface_distance_mm",
                                 f"the gland surfaces do not fit after the surface refinement: trimmed surface "
                                 f"distance {shown} > {value:.2f} mm ({source}); check the masks and the landmarks",
                                 distance_mm, value, "mm"))
    out = dict(trust)
    out.update(flags=flag_texts(flags), flag_details=flag_details(flags), reliable=not flags, notes=notes,
               verdict={"from": "surface fit", "surface_distance_mm": distance_mm, "limit_mm": value,
                        "limit_from": source, "change_from_landmarks": {"rotation_deg": rot, "gland_centre_shift_mm": shift},
                        "landmark_stage_flags": moved,
                        "landmark_surfaces_disagreed_with": worst[0] if worst else None})
    return out
