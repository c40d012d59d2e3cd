"""The landmark registration of one MR/US pair as lmkreg_register and lmkreg_evaluate do it.

Three landmarks in both files: the least-squares fit and its trust (lmkreg.trust.pair).  When
that fit is flagged and one landmark alone explains it (its distances to the other two disagree
between MR and US), the transform comes from the other two landmarks with the spin of the
training pairs (lmkreg.registration.two_landmarks); likewise when a landmark is missing from a
file (a TRUS sweep that did not reach the apex).  Either way the pair stays flagged, and the
``trust.two_landmarks`` block says which landmark was left out, why, and how uncertain the
spin is.  The orientation prior travels in the landmark files (``trust.training_pair_rotation``,
written by lmkreg_predict from the model's training statistics); files without it keep today's
behaviour: the three-landmark fit, or an error with fewer than three landmarks.

Points are world LPS mm; the transform maps MR world to US world.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import MIN_SEPARATION_MM
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.registration.landmark_fit import LandmarkRegistration, register_landmarks
from lmkreg.registration.two_landmarks import (DEFAULT_SIGMA_MM, MIN_AXIS_MM, RotationPrior, TwoLandmarkFit,
                                              check_distances, fit_two_landmarks, landmark_to_leave_out,
                                              two_landmark_fit)
from lmkreg.trust.flags import TWO_LANDMARKS, add_flags, read_flags, scoped_flag
from lmkreg.trust.pair import assess_pair, sigmas_of, training_pair_statistics

MONTE_CARLO_SAMPLES = 400


def rotation_prior(mr: LandmarkSet, us: LandmarkSet) -> Optional[RotationPrior]:
    """The MR->US orientation prior carried by the MR file (its model's world into the other's)
    or, inverted, by the US file; None when neither has one."""
    for landmarks, mr_is_source in ((mr, True), (us, False)):
        trust = landmarks.extras.get("trust") if isinstance(landmarks.extras, dict) else None
        prior = RotationPrior.from_json(trust.get("training_pair_rotation") if isinstance(trust, dict) else None,
                                        mr_is_source)
        if prior is not None:
            return prior
    return None


def landmark_suspects(mr: LandmarkSet, us: LandmarkSet, names: Sequence[str]) -> dict[str, str]:
    """Landmarks a file's own flags name (``Flag.landmark``; case-wide flags name none), with the
    flag's text, e.g. {"apex": "US: apex: folds disagree by 17.8 mm > 5.0 mm"}."""
    out: dict[str, str] = {}
    for landmarks, modality in ((mr, "MR"), (us, "US")):
        for f in read_flags(landmarks.extras, landmarks.names):
            if f.landmark in names and f.landmark not in out:
                out[f.landmark] = f"{modality}: {f.text}"
    return out


def fit_pair(mr: LandmarkSet, us: LandmarkSet, names: Sequence[str],
             weights: Optional[dict[str, float]] = None) -> LandmarkRegistration:
    """The MR->US landmark registration of a pair with its ``trust`` block (see the module doc).
    Raises InputError when no transform can be given (fewer than two landmarks in both files,
    or two without an orientation prior)."""
    names = list(names)
    used = [n for n in names if mr.points.get(n) is not None and us.points.get(n) is not None]
    prior = rotation_prior(mr, us)
    if len(used) == 2 and prior is not None:
        missing = [n for n in names if n not in used]
        return _two_landmark_registration(mr, us, used, prior, None, f"{', '.join(missing)} not in both files",
                                          None)
    try:
        reg: Optional[LandmarkRegistration] = register_landmarks(mr, us, used, weights)
    except InputError as exc:  # e.g. a wrong landmark on top of another: collinear in one file
        if len(used) != 3 or prior is None:
            raise
        reg, failure = None, exc.problem
    if reg is not None:
        reg.trust = assess_pair(mr, us, reg.names, reg.rms_mm)
        if reg.trust["reliable"] or len(reg.names) != 3:
            return reg
    p, q = mr.to_array(used), us.to_array(used)
    (s_mr, _), (s_us, _) = sigmas_of(mr, used), sigmas_of(us, used)
    training = training_pair_statistics(mr, us)
    check = check_distances(used, p, q, s_mr, s_us, training["p95"] if training else None)
    leave = landmark_to_leave_out(used, p, q, check, prior, landmark_suspects(mr, us, used))
    if reg is None:
        if leave.name is None:
            raise InputError(None, f"{failure}; no single landmark explains it ({leave.reason})")
        kept = [n for n in used if n != leave.name]
        return _two_landmark_registration(mr, us, kept, prior, None,
                                          f"{leave.name} left out: {leave.reason}; with it: {failure}", leave.name)
    reg.trust["distance_check"] = check.to_json()
    if leave.name is None:
        if check.disagreeing:
            reg.trust["notes"].append(f"no landmark left out: {leave.reason}")
        return reg
    if prior is None:
        reg.trust["notes"].append(f"{leave.name} looks wrong ({leave.reason}), but a fit without it needs the training "
                                  f"pairs' orientation, which these landmark files do not carry (predict with a model "
                                  f"trained by this version)")
        return reg
    kept = [n for n in reg.names if n != leave.name]
    return _two_landmark_registration(mr, us, kept, prior, reg, f"{leave.name} left out: {leave.reason}", leave.name)


def _two_landmark_registration(mr: LandmarkSet, us: LandmarkSet, kept: list[str], prior: RotationPrior,
                               three: Optional[LandmarkRegistration], why: str, left_out: Optional[str]
                               ) -> LandmarkRegistration:
    """The two-landmark transform, flagged, with its uncertainty (Monte Carlo over the landmarks'
    localisation error and the training pairs' spin errors about this axis)."""
    p, q = mr.to_array(kept), us.to_array(kept)
    axis = float(np.linalg.norm(p[1] - p[0]))
    if axis < max(MIN_AXIS_MM, MIN_SEPARATION_MM) or float(np.linalg.norm(q[1] - q[0])) < MIN_AXIS_MM:
        raise InputError(None, f"only {kept[0]} and {kept[1]} can be used ({why}) and they are {axis:.1f} mm apart: "
                               f"too close to fix an axis (need {MIN_AXIS_MM:.0f} mm)")
    all_mr = mr.to_array([n for n in mr.names if mr.points.get(n) is not None])
    centre = all_mr.mean(0)
    fit = two_landmark_fit(kept, p, q, prior)
    (s_mr, src_mr), (s_us, src_us) = sigmas_of(mr, kept), sigmas_of(us, kept)
    uncertainty = _monte_carlo(p, q, prior, centre, fit, s_mr, s_us)
    flag = scoped_flag(TWO_LANDMARKS, "pair", "spin_uncertainty_deg_90",
                       f"transform from {kept[0]} and {kept[1]} only ({why}); the spin about their axis is the "
                       f"training pairs' orientation, uncertain by {fit.spin_uncertainty_deg_90:.0f} deg (90 %): check "
                       f"the fusion before use", fit.spin_uncertainty_deg_90, None, "deg")
    trust = dict(three.trust) if three is not None else {
        "rms_residual_mm": None, "expected_rms_limit_mm": None, "training_pair_rms_mm": None, "notes": []}
    add_flags(trust, [flag])
    trust["reliable"] = False
    trust["uncertainty"] = uncertainty
    trust["two_landmarks"] = {**fit.to_json(), "left_out": left_out, "reason": why,
                              "training_pairs": prior.n,
                              "three_landmark_transform": None if three is None else three.transform.to_json(),
                              "three_landmark_rms_mm": None if three is None else three.rms_mm,
                              "localisation_error_from": {"MR": src_mr or "default", "US": src_us or "default"}}
    return LandmarkRegistration(fit.transform, kept, fit.residuals_mm, trust)


def _monte_carlo(p: np.ndarray, q: np.ndarray, prior: RotationPrior, centre: np.ndarray, fit: TwoLandmarkFit,
                 s_mr: Optional[np.ndarray], s_us: Optional[np.ndarray], samples: int = MONTE_CARLO_SAMPLES,
                 seed: int = 0) -> dict:
    """90th percentiles of the rotation (deg) and gland-centre displacement (mm) of the
    two-landmark transform when its landmarks move by their sd and its spin by one of the
    training pairs' spin errors about this axis (random sign)."""
    rng = np.random.default_rng(seed)
    spins = np.radians(fit.spin_errors_deg)
    s_mr = np.full(2, DEFAULT_SIGMA_MM) if s_mr is None else s_mr
    s_us = np.full(2, DEFAULT_SIGMA_MM) if s_us is None else s_us
    base = fit.transform
    c0 = base.apply(centre[None])[0]
    rot, tre = [], []
    for _ in range(samples):
        pp = p + rng.normal(size=p.shape) * s_mr[:, None]
        qq = q + rng.normal(size=q.shape) * s_us[:, None]
        t = fit_two_landmarks(pp, qq, prior)
        axis = (qq[1] - qq[0]) / np.linalg.norm(qq[1] - qq[0])
        spin = Rotation.from_rotvec(rng.choice(spins) * rng.choice([-1.0, 1.0]) * axis).as_matrix()
        r = spin @ t.rotation
        tt = qq.mean(0) - r @ pp.mean(0)
        rot.append(math.degrees(Rotation.from_matrix(r @ base.rotation.T).magnitude()))
        tre.append(float(np.linalg.norm(r @ centre + tt - c0)))
    return {"rotation_deg_90": float(np.percentile(rot, 90)), "gland_centre_error_mm_90": float(np.percentile(tre, 90)),
            "samples": samples, "from": "two landmarks' localisation error and the training pairs' spin errors"}
