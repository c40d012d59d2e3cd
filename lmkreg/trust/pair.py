"""Is an MR/US landmark pair plausible, and how uncertain is its transform?

The two triangles are the same anatomy, so after the rigid fit their residual is small: only
anatomical deformation between the scans (measured on the training pairs' true landmarks) and
landmark localisation error (the files' calibrated radii) remain.  A residual far above that
means a wrong landmark or a pair that does not belong together, whatever the fit says.

Expected residual: with isotropic Gaussian landmark errors of sd sigma per coordinate (the
radius r at coverage c of a 3D error is r = sqrt(chi2_3(c)) sigma, 2.50 sigma at 90 %), the sum
of squared residuals of a 3-point rigid fit is sigma^2 chi^2 with 3N - 6 = 3 degrees of freedom,
so the 95th percentile of the RMS residual is sigma sqrt(7.81 / 3).  The limit adds that in
quadrature to the training pairs' 95th percentile RMS residual (no training statistics:
DEFAULT_LIMIT_MM).  A file without radii (fewer than 9 calibration cases, or predicted without
mirror TTA) still counts its landmarks' error through the model's pooled median validation
error m: the median of a 3D isotropic Gaussian error is 1.538 sigma, so sigma = m / 1.538
(marked uncalibrated in the notes).  The median, not the RMS: one failed validation case would
inflate an RMS and with it the limit that is meant to catch such failures.  Only a file with
neither counts no localisation error.

Issue 26: the limit always counts the landmarks' error (without radii or a validation error:
the literature default of lmkreg.trust.pair_checks, marked uncalibrated), the model-free checks
(distances, triangle shape) run for any two files, and a file's landmark flags act through their
consequence on the transform (lmkreg.trust.verdict), not by their existence.

Transform uncertainty: Monte Carlo over the radii (each landmark moved by an isotropic Gaussian
of its sigma, the fit repeated), reported as the 90th percentile of the rotation between the
fitted and perturbed transforms (deg) and of the displacement of the gland centre (the MR
landmarks' centroid; mm in US space).  All points are world LPS mm.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.stats import chi2

from lmkreg.geometry.rigid import fit_rigid, fit_rigid_batch
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import PAIR, Flag, flag_details, flag_texts, scoped_flag
from lmkreg.trust.pair_checks import DEFAULT_DEFORMATION_MM, check_pair
from lmkreg.trust.verdict import consequence_flag, estimate_notes, file_errors, gland_targets

COVERAGE_SIGMA = math.sqrt(chi2.ppf(0.9, 3))  # 90 % radius of a 3D isotropic Gaussian / sigma
MEDIAN_SIGMA = math.sqrt(chi2.ppf(0.5, 3))  # median length of a 3D isotropic Gaussian error / sigma (1.538)
RMS_FACTOR_95 = math.sqrt(chi2.ppf(0.95, 3) / 3)  # 95th percentile RMS residual / sigma (3 points)
DEFAULT_LIMIT_MM = 5.0
MONTE_CARLO_SAMPLES = 400


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else None


def _trust_landmarks(landmarks: LandmarkSet) -> Optional[dict]:
    trust = landmarks.extras.get("trust") if isinstance(landmarks.extras, dict) else None
    if not isinstance(trust, dict) or not isinstance(trust.get("landmarks"), dict):
        return None
    return trust


def radii_of(landmarks: LandmarkSet, names: Sequence[str]) -> Optional[np.ndarray]:
    """Calibrated radii (mm) from an lmkreg prediction's ``trust`` extras, None if any is missing."""
    trust = _trust_landmarks(landmarks)
    if trust is None:
        return None
    out = [_number((trust["landmarks"].get(n) or {}).get("radius_mm")) for n in names]
    return None if any(r is None for r in out) else np.asarray(out)


def sigmas_of(landmarks: LandmarkSet, names: Sequence[str]) -> tuple[Optional[np.ndarray], str]:
    """(per-landmark error sd per coordinate in mm, source) of one landmark file: from the
    calibrated radii at the file's coverage ("calibrated"), else from the model's pooled median
    validation error ("uncalibrated"), else (None, "")."""
    trust = _trust_landmarks(landmarks)
    if trust is None:
        return None, ""
    radii = radii_of(landmarks, names)
    if radii is not None:
        c = _number(trust.get("coverage")) or 0.9
        return radii / math.sqrt(chi2.ppf(min(c, 0.999), 3)), "calibrated"
    med = [_number((trust["landmarks"].get(n) or {}).get("validation_median_error_mm")) for n in names]
    if all(e is not None for e in med):
        return np.asarray(med) / MEDIAN_SIGMA, "uncalibrated"
    return None, ""


def training_pair_statistics(mr: LandmarkSet, us: LandmarkSet) -> Optional[dict]:
    """The training pairs' landmark-fit residuals (RMS mm: n, min, max, mean, median, p95) that the landmark files
    carry in trust.training_pair_rms_mm; of two different ones the larger p95 (the more tolerant
    limit), None when neither file has them (models trained before the pair statistics)."""
    docs = [s.extras.get("trust", {}).get("training_pair_rms_mm") for s in (mr, us) if isinstance(s.extras, dict)]
    docs = [d for d in docs if isinstance(d, dict) and d.get("n")]
    return max(docs, key=lambda d: d.get("p95", 0.0)) if docs else None


def transform_uncertainty(mr_points: np.ndarray, us_points: np.ndarray, sigma_mr: np.ndarray, sigma_us: np.ndarray,
                          samples: int = MONTE_CARLO_SAMPLES, seed: int = 0) -> dict:
    """90th percentiles of rotation (deg), gland-centre displacement (mm) and target error at
    the gland (mean displacement of lmkreg.trust.verdict.gland_targets, mm) over perturbed fits."""
    base = fit_rigid(mr_points, us_points)
    centre = mr_points.mean(0)
    c0 = base.apply(centre[None])[0]
    targets = gland_targets(mr_points)
    t0 = base.apply(targets)
    rng = np.random.default_rng(seed)
    # the draws in the order of one sample after another, MR then US (as a loop of fits would take them)
    noise = rng.normal(size=(samples, 2) + mr_points.shape)
    p = mr_points[None] + noise[:, 0] * sigma_mr[None, :, None]
    q = us_points[None] + noise[:, 1] * sigma_us[None, :, None]
    r, t, valid = fit_rigid_batch(p, q)
    cos = (np.trace(r @ base.rotation.T, axis1=1, axis2=2) - 1) / 2
    rot = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    tre = np.linalg.norm(r @ centre + t - c0, axis=1)
    moved = np.einsum("sij,kj->ski", r, targets) + t[:, None]
    gland = np.linalg.norm(moved - t0[None], axis=2).mean(1)
    # a perturbed triangle that collapsed says "very uncertain"
    rot, tre, gland = np.where(valid, rot, 180.0), np.where(valid, tre, np.inf), np.where(valid, gland, np.inf)
    return {"rotation_deg_90": float(np.percentile(rot, 90)), "gland_centre_error_mm_90": float(np.percentile(tre, 90)),
            "gland_target_error_mm_90": float(np.percentile(gland, 90)), "samples": samples}


def assess_pair(mr: LandmarkSet, us: LandmarkSet, names: Sequence[str], rms_mm: float) -> dict:
    """The ``trust`` block of a transform JSON (issue 26): the model-free checks
    (lmkreg.trust.pair_checks: distances, triangle shape, RMS residual against a limit that
    always counts the landmarks' error: calibrated radii, else the median validation error, else
    the literature default), case-wide flags of either file, and the consequence of flagged
    landmarks: their radius widened, the pair flagged when the transform's target error at the
    gland exceeds its limit (lmkreg.trust.verdict), not because a file carries a flag."""
    names = list(names)
    e_mr, e_us = file_errors(mr, names), file_errors(us, names)
    training = training_pair_statistics(mr, us)
    notes = estimate_notes(e_mr, e_us)
    if training is None:
        notes.append(f"no training pair statistics in the landmark files: the gland deformation between the scans is "
                     f"taken as {DEFAULT_DEFORMATION_MM} mm")
    p, q = mr.to_array(names), us.to_array(names)
    checks = check_pair(names, p, q, e_mr.sigmas, e_us.sigmas, training["p95"] if training else None, rms_mm)
    flags: list[Flag] = ([f for f in checks.flags if f.signal == "rms_residual_mm"]
                         + [f for f in checks.flags if f.signal != "rms_residual_mm"])
    for label, f in (("MR", e_mr), ("US", e_us)):
        if f.case_flags:
            flags.append(scoped_flag(PAIR, "pair", f"{label}_file_case_flags",
                                     f"the {label} file is flagged for the whole case "
                                     f"({'; '.join(flag_texts(f.case_flags))})"))
    try:
        uncertainty: Optional[dict] = transform_uncertainty(p, q, e_mr.sigmas, e_us.sigmas)
    except Exception:  # a degenerate triangle: already flagged above
        uncertainty = None
    if uncertainty is not None:
        words = {"calibrated": "calibrated radii", "uncalibrated": "median validation errors (uncalibrated)",
                 "default": "literature default (uncalibrated)"}
        srcs = {"MR": e_mr.source, "US": e_us.source}
        uncertainty["from"] = ("calibrated radii" if set(srcs.values()) == {"calibrated"}
                               else ", ".join(f"{m}: {words[s]}" for m, s in srcs.items()))
        if e_mr.widened or e_us.widened:
            uncertainty["widened"] = {**{f"MR {n}": w for n, w in e_mr.widened.items()},
                                      **{f"US {n}": w for n, w in e_us.widened.items()}}
    consequence = consequence_flag(uncertainty, e_mr, e_us)
    if consequence is not None:
        flags.append(consequence)
    return {"rms_residual_mm": rms_mm, "expected_rms_limit_mm": checks.rms_limit_mm, "training_pair_rms_mm": training,
            "error_estimate": {"MR": e_mr.source, "US": e_us.source}, "checks": checks.to_json(),
            "reliable": not flags, "flags": flag_texts(flags), "flag_details": flag_details(flags), "notes": notes,
            "uncertainty": uncertainty}
