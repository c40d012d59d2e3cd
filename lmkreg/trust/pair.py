"""Is an MR/US landmark pair plausible, and how uncertain is its transform?

The two triangles are the same anatomy, so after the rigid fit their residual is small: only
anatomical deformation between the scans (measured on the training pairs' true landmarks) and
landmark localisation error (the files' calibrated radii) remain.  A residual far above that
means a wrong landmark or a pair that does not belong together, whatever the fit says.

Expected residual: with isotropic Gaussian landmark errors of sd sigma per coordinate (the 90 %
radius r of a 3D error is r = 2.50 sigma), the sum of squared residuals of a 3-point rigid fit
is sigma^2 chi^2 with 3N - 6 = 3 degrees of freedom, so the 95th percentile of the RMS residual
is sigma sqrt(7.81 / 3).  The limit adds that in quadrature to the training pairs' 95th
percentile RMS residual (no radii: only the latter; no training statistics: DEFAULT_LIMIT_MM).

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

from lmkreg.io.landmarks import LandmarkSet

COVERAGE_SIGMA = math.sqrt(chi2.ppf(0.9, 3))  # 90 % radius of a 3D isotropic Gaussian / sigma
RMS_FACTOR_95 = math.sqrt(chi2.ppf(0.95, 3) / 3)  # 95th percentile RMS residual / sigma (3 points)
DEFAULT_LIMIT_MM = 5.0
MONTE_CARLO_SAMPLES = 400


def radii_of(landmarks: LandmarkSet, names: Sequence[str]) -> Optional[np.ndarray]:
    """Calibrated radii (mm) from an lmkreg prediction's ``trust`` extras, None if any is missing."""
    trust = landmarks.extras.get("trust") if isinstance(landmarks.extras, dict) else None
    if not isinstance(trust, dict) or not isinstance(trust.get("landmarks"), dict):
        return None
    out = []
    for n in names:
        r = (trust["landmarks"].get(n) or {}).get("radius_mm")
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r < 0:
            return None
        out.append(float(r))
    return np.asarray(out)


def _training_pair(mr: LandmarkSet, us: LandmarkSet) -> Optional[dict]:
    docs = [s.extras.get("trust", {}).get("training_pair_rms_mm") for s in (mr, us) if isinstance(s.extras, dict)]
    docs = [d for d in docs if isinstance(d, dict) and d.get("n")]
    return max(docs, key=lambda d: d.get("p95", 0.0)) if docs else None


def _rotation_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1) / 2))))


def transform_uncertainty(mr_points: np.ndarray, us_points: np.ndarray, sigma_mr: np.ndarray, sigma_us: np.ndarray,
                          samples: int = MONTE_CARLO_SAMPLES, seed: int = 0) -> dict:
    """90th percentiles of rotation (deg) and gland-centre displacement (mm) over perturbed fits."""
    from lmkreg.registration.landmark_fit import fit_rigid

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
    residual exceeds it (``flags``), and the transform uncertainty when both files have radii."""
    names = list(names)
    r_mr, r_us = radii_of(mr, names), radii_of(us, names)
    training = _training_pair(mr, us)
    notes, flags = [], []
    base = training["p95"] if training else None
    if base is None:
        notes.append(f"no training pair statistics in the landmark files: residual checked against the default "
                     f"{DEFAULT_LIMIT_MM} mm")
    have_radii = r_mr is not None and r_us is not None
    if not have_radii:
        notes.append("no calibrated radii in both landmark files: the transform uncertainty is unavailable and the "
                     "residual limit counts the localisation error of the file(s) with radii only")
    sigma2 = sum(float(np.mean((r / COVERAGE_SIGMA) ** 2)) for r in (r_mr, r_us) if r is not None)
    limit = DEFAULT_LIMIT_MM if base is None else math.sqrt(base ** 2 + RMS_FACTOR_95 ** 2 * sigma2)
    if rms_mm > limit:
        flags.append(f"pair: RMS residual {rms_mm:.1f} mm > {limit:.1f} mm expected at most (by {rms_mm - limit:.1f} mm): "
                     f"a landmark is wrong or the files are not of the same patient")
    doc = {"rms_residual_mm": rms_mm, "expected_rms_limit_mm": limit, "training_pair_rms_mm": training,
           "reliable": not flags, "flags": flags, "notes": notes}
    for s, src in ((mr, "MR"), (us, "US")):
        if isinstance(s.extras, dict) and s.extras.get("reliable") is False:
            flags.append(f"pair: the {src} landmarks are flagged unreliable ({'; '.join(s.extras.get('flags', []))})")
    doc["reliable"] = not flags
    if have_radii:
        p = mr.to_array(names)
        q = us.to_array(names)
        doc["uncertainty"] = transform_uncertainty(p, q, r_mr / COVERAGE_SIGMA, r_us / COVERAGE_SIGMA)
    else:
        doc["uncertainty"] = None
    return doc
