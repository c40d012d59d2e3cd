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

from lmkreg.geometry.rigid import fit_rigid
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import PAIR, Flag, flag_details, flag_texts, read_flags, scoped_flag

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


def _rotation_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2))))


def transform_uncertainty(mr_points: np.ndarray, us_points: np.ndarray, sigma_mr: np.ndarray, sigma_us: np.ndarray,
                          samples: int = MONTE_CARLO_SAMPLES, seed: int = 0) -> dict:
    """90th percentiles of rotation (deg) and gland-centre displacement (mm) over perturbed fits."""
    base = fit_rigid(mr_points, us_points)
    centre = mr_points.mean(0)
    c0 = base.apply(centre[None])[0]
    rng = np.random.default_rng(seed)
    rot, tre = [], []
    for _ in range(samples):
        p = mr_points + rng.normal(size=mr_points.shape) * sigma_mr[:, None]
        q = us_points + rng.normal(size=us_points.shape) * sigma_us[:, None]
        try:
            t = fit_rigid(p, q)
        except Exception:  # a perturbed triangle collapsed: that sample says "very uncertain"
            rot.append(180.0)
            tre.append(float("inf"))
            continue
        rot.append(_rotation_deg(t.rotation @ base.rotation.T))
        tre.append(float(np.linalg.norm(t.apply(centre[None])[0] - c0)))
    return {"rotation_deg_90": float(np.percentile(rot, 90)), "gland_centre_error_mm_90": float(np.percentile(tre, 90)),
            "samples": samples}


def assess_pair(mr: LandmarkSet, us: LandmarkSet, names: Sequence[str], rms_mm: float) -> dict:
    """The ``trust`` block of a transform JSON: expected residual limit, whether the fit's RMS
    residual exceeds it (``flags``), and the transform uncertainty when both files have an error
    estimate (radii, or the uncalibrated median validation error; ``uncertainty.from`` says which)."""
    names = list(names)
    (s_mr, src_mr), (s_us, src_us) = sigmas_of(mr, names), sigmas_of(us, names)
    training = training_pair_statistics(mr, us)
    notes: list[str] = []
    flags: list[Flag] = []
    base = training["p95"] if training else None
    if base is None:
        notes.append(f"no training pair statistics in the landmark files: residual checked against the default "
                     f"{DEFAULT_LIMIT_MM} mm")
    for src, label in ((src_mr, "MR"), (src_us, "US")):
        if src == "uncalibrated":
            notes.append(f"the {label} file has no calibrated radii: its localisation error is counted from the model's "
                         f"median validation error (uncalibrated)")
        elif not src:
            notes.append(f"the {label} file has neither radii nor a validation error: the residual limit does not count "
                         f"its localisation error")
    have_sigmas = s_mr is not None and s_us is not None
    if not have_sigmas:
        notes.append("the transform uncertainty needs an error estimate for both files: unavailable")
    sigma2 = sum(float(np.mean(s ** 2)) for s in (s_mr, s_us) if s is not None)
    limit = DEFAULT_LIMIT_MM if base is None else math.sqrt(base ** 2 + RMS_FACTOR_95 ** 2 * sigma2)
    if rms_mm > limit:
        flags.append(scoped_flag(PAIR, "pair", "rms_residual_mm",
                                 f"RMS residual {rms_mm:.1f} mm > {limit:.1f} mm expected at most (by "
                                 f"{rms_mm - limit:.1f} mm): a landmark is wrong or the files are not of the same "
                                 f"patient", rms_mm, limit, "mm"))
    doc = {"rms_residual_mm": rms_mm, "expected_rms_limit_mm": limit, "training_pair_rms_mm": training,
           "reliable": not flags, "flags": [], "notes": notes}
    for s, src in ((mr, "MR"), (us, "US")):
        if isinstance(s.extras, dict) and s.extras.get("reliable") is False:
            theirs = "; ".join(flag_texts(read_flags(s.extras, s.names)))
            flags.append(scoped_flag(PAIR, "pair", f"{src}_landmarks_unreliable",
                                     f"the {src} landmarks are flagged unreliable ({theirs})"))
    doc["flags"], doc["flag_details"] = flag_texts(flags), flag_details(flags)
    doc["reliable"] = not flags
    if have_sigmas:
        p = mr.to_array(names)
        q = us.to_array(names)
        doc["uncertainty"] = {**transform_uncertainty(p, q, s_mr, s_us),
                              "from": "calibrated radii" if src_mr == src_us == "calibrated"
                              else "median validation errors (uncalibrated) for " +
                                   " and ".join(m for m, s in (("MR", src_mr), ("US", src_us)) if s == "uncalibrated")}
    else:
        doc["uncertainty"] = None
    return doc
