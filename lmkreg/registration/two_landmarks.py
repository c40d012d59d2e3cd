"""A rigid MR->US transform when only two landmark pairs can be used.

Why: a TRUS sweep often misses the apex or the bladder neck (the fan cuts the gland), and a
network then still puts that landmark somewhere inside the image; a wrong third landmark turns
the three-point fit by tens of degrees (the demo's pair 042: 126 deg, SRE 35 mm).  Two
landmarks fix everything but the spin about their axis.  The spin is then taken from the
training pairs: the MR->US orientation of one team's acquisitions varies only by the probe's
hold (tens of degrees), so the rotation of the family that is closest to the training pairs'
mean rotation is the best guess, and how wrong that guess was for each training pair, about the
same axis, is its uncertainty.  Such a transform is always flagged: it is an initialisation
from two landmarks and a prior, not a three-landmark fit.

Which landmark to leave out: a rigid map keeps distances, so with three landmarks the distance
of each pair of landmarks must agree between MR and US up to localisation error and anatomical
deformation.  A landmark that appears in every disagreeing distance, while the distance of the
other two agrees, is the one to leave out; one disagreeing distance leaves two candidates,
decided by the models' own per-landmark flags when exactly one of them is flagged (e.g. its
mirrored prediction disagrees), else by which two-landmark fit needs the smaller turn from the
training orientation (only when that is clear).

All points are world LPS mm; rotations map MR world to US world.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from lmkreg.geometry.rigid import RigidTransform

# distance check: |d_MR - d_US| above max(FLOOR, sqrt((K sd_loc)^2 + (K deformation)^2)) disagrees
DISTANCE_K = 3.0
DISTANCE_FLOOR_MM = 3.0
DEFAULT_SIGMA_MM = 2.0  # localisation sd per coordinate when a file says nothing about its error
DEFAULT_DEFORMATION_MM = 1.5  # training pairs' residual when the files carry no training statistics
MIN_AXIS_MM = 10.0  # two landmarks closer than this fix their axis too poorly
AMBIGUITY_MARGIN_DEG = 10.0  # a candidate must need this much less turn than the other to be chosen


@dataclass(frozen=True)
class RotationPrior:
    """The training pairs' MR->US rotations (true landmarks, rigid fit), one rotation vector each."""

    rotvecs: np.ndarray  # (n, 3) radians

    @property
    def n(self) -> int:
        return len(self.rotvecs)

    @cached_property
    def mean(self) -> Rotation:
        """Chordal L2 mean of the training rotations (computed once: the Monte Carlo asks 400 times)."""
        return Rotation.from_rotvec(self.rotvecs).mean()

    @cached_property
    def deviations_deg(self) -> np.ndarray:
        """Each training rotation's angle from the mean (degrees): the spread of the prior."""
        return np.degrees((self.mean.inv() * Rotation.from_rotvec(self.rotvecs)).magnitude())

    @staticmethod
    def from_json(doc: Optional[dict], mr_is_source: bool) -> Optional["RotationPrior"]:
        """From a ``pair_rotation`` document of training statistics (rotations of its ``source``
        modality world into the other's); `mr_is_source` False inverts them into MR->US."""
        if not isinstance(doc, dict) or not isinstance(doc.get("rotvecs"), list) or len(doc["rotvecs"]) < 2:
            return None
        try:
            v = np.asarray(doc["rotvecs"], float).reshape(-1, 3)
        except (TypeError, ValueError):
            return None
        if not np.isfinite(v).all():
            return None
        return RotationPrior(v if mr_is_source else -v)  # R^-1 has rotation vector -v

    def to_json(self, source: str, target: str) -> dict:
        dev = self.deviations_deg
        return {"source": source, "target": target, "n": self.n, "rotvecs": np.round(self.rotvecs, 6).tolist(),
                "deviation_from_mean_deg": {"median": float(np.median(dev)), "p90": float(np.percentile(dev, 90)),
                                            "max": float(dev.max())}}


def closest_in_family(u: np.ndarray, v: np.ndarray, target: Rotation) -> Rotation:
    """The rotation R with R u = v (unit vectors) closest to `target` (exact: the spin theta about
    v maximises trace(Rot(v, theta) A target^T), A any rotation taking u to v)."""
    a, _ = Rotation.align_vectors(v[None], u[None])
    m = a.as_matrix() @ target.as_matrix().T
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    vmv = float(v @ m @ v)
    theta = math.atan2(float(np.trace(vx @ m)), float(np.trace(m)) - vmv)
    return Rotation.from_rotvec(theta * v) * a


def fit_two_landmarks(mr_pair: np.ndarray, us_pair: np.ndarray, prior: RotationPrior) -> RigidTransform:
    """MR->US rigid map putting the MR axis on the US axis (midpoint on midpoint, the
    least-squares translation) with the spin closest to the prior's mean rotation."""
    u, v = mr_pair[1] - mr_pair[0], us_pair[1] - us_pair[0]
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    r = closest_in_family(u, v, prior.mean).as_matrix()
    return RigidTransform(r, us_pair.mean(0) - r @ mr_pair.mean(0))


def spin_errors_deg(axis_mr: np.ndarray, prior: RotationPrior) -> np.ndarray:
    """How wrong the prior's spin was for each training pair about this MR axis: for a training
    rotation R_i, the family through R_i's image of the axis, its rotation closest to the mean,
    and the angle between that and R_i (degrees).  Leave-one-out would be fairer; with tens of
    pairs the mean hardly moves."""
    u = axis_mr / np.linalg.norm(axis_mr)
    mean = prior.mean
    out = []
    for rv in prior.rotvecs:
        r = Rotation.from_rotvec(rv)
        est = closest_in_family(u, r.apply(u), mean)
        out.append(math.degrees((est * r.inv()).magnitude()))
    return np.asarray(out)


@dataclass
class DistanceCheck:
    """Per pair of landmarks: MR and US distances, their difference and the limit (mm)."""

    rows: list[dict] = field(default_factory=list)

    @property
    def disagreeing(self) -> list[tuple[str, str]]:
        return [tuple(r["landmarks"]) for r in self.rows if r["disagrees"]]

    def to_json(self) -> list[dict]:
        return self.rows


def check_distances(names: Sequence[str], mr_points: np.ndarray, us_points: np.ndarray,
                    sigma_mr: Optional[np.ndarray], sigma_us: Optional[np.ndarray],
                    deformation_mm: Optional[float]) -> DistanceCheck:
    """Compare every landmark-to-landmark distance in MR and in US (world LPS mm)."""
    n = len(names)
    s_mr = np.full(n, DEFAULT_SIGMA_MM) if sigma_mr is None else np.asarray(sigma_mr, float)
    s_us = np.full(n, DEFAULT_SIGMA_MM) if sigma_us is None else np.asarray(sigma_us, float)
    deform = DEFAULT_DEFORMATION_MM if deformation_mm is None else float(deformation_mm)
    rows = []
    for i, j in combinations(range(n), 2):
        d_mr = float(np.linalg.norm(mr_points[i] - mr_points[j]))
        d_us = float(np.linalg.norm(us_points[i] - us_points[j]))
        sd = math.sqrt(s_mr[i] ** 2 + s_mr[j] ** 2 + s_us[i] ** 2 + s_us[j] ** 2)  # along the line: 1 sd each
        limit = max(DISTANCE_FLOOR_MM, math.hypot(DISTANCE_K * sd, DISTANCE_K * deform))
        rows.append({"landmarks": [names[i], names[j]], "mr_mm": d_mr, "us_mm": d_us, "difference_mm": abs(d_mr - d_us),
                     "limit_mm": limit, "disagrees": abs(d_mr - d_us) > limit})
    return DistanceCheck(rows)


@dataclass
class LeaveOut:
    """Which landmark to leave out (None: no single one explains the disagreement) and why."""

    name: Optional[str]
    reason: str


def landmark_to_leave_out(names: Sequence[str], mr_points: np.ndarray, us_points: np.ndarray,
                          check: DistanceCheck, prior: Optional[RotationPrior],
                          suspects: Optional[dict[str, str]] = None) -> LeaveOut:
    """The one landmark whose distances disagree while the other two agree (see module doc).
    `suspects`: landmark -> the reason its own model flagged it (e.g. the mirrored prediction
    disagrees); of the two candidates of one disagreeing distance, the only suspect is left out."""
    bad = check.disagreeing
    if not bad:
        return LeaveOut(None, "every landmark-to-landmark distance agrees between MR and US")
    candidates = [n for n in names if all(n in pair for pair in bad)]
    if len(bad) >= 3 or not candidates:
        return LeaveOut(None, f"{len(bad)} of {len(check.rows)} landmark distances disagree between MR and US: more "
                              f"than one landmark is wrong")
    described = "; ".join(f"{r['landmarks'][0]}-{r['landmarks'][1]} {r['mr_mm']:.1f} mm in MR, {r['us_mm']:.1f} mm "
                          f"in US (limit {r['limit_mm']:.1f})" for r in check.rows if r["disagrees"])
    if len(candidates) == 1:
        return LeaveOut(candidates[0], f"its distances to both other landmarks disagree ({described})")
    flagged = [c for c in candidates if c in (suspects or {})]
    if len(flagged) == 1:
        return LeaveOut(flagged[0], f"one distance disagrees ({described}) and of its two landmarks only "
                                    f"{flagged[0]} is flagged by its model ({suspects[flagged[0]]})")
    if prior is None:
        return LeaveOut(None, f"one distance disagrees ({described}); which of its two landmarks is wrong needs the "
                              f"training pairs' orientation, which the landmark files do not carry")
    turns = {}
    idx = {n: k for k, n in enumerate(names)}
    for c in candidates:
        keep = [idx[n] for n in names if n != c]
        t = fit_two_landmarks(mr_points[keep], us_points[keep], prior)
        turns[c] = math.degrees((Rotation.from_matrix(t.rotation) * prior.mean.inv()).magnitude())
    (best, t_best), (other, t_other) = sorted(turns.items(), key=lambda kv: kv[1])
    limit = float(prior.deviations_deg.max())
    if t_other - t_best >= AMBIGUITY_MARGIN_DEG and t_best <= limit + AMBIGUITY_MARGIN_DEG:
        return LeaveOut(best, f"one distance disagrees ({described}); without {best} the fit turns {t_best:.0f} deg "
                              f"from the training orientation, without {other} {t_other:.0f} deg (training at most "
                              f"{limit:.0f} deg)")
    return LeaveOut(None, f"one distance disagrees ({described}); leaving out {best} or {other} is about as "
                          f"plausible ({t_best:.0f} vs {t_other:.0f} deg from the training orientation)")


@dataclass
class TwoLandmarkFit:
    transform: RigidTransform
    names: list[str]
    residuals_mm: dict[str, float]
    spin_errors_deg: np.ndarray  # the training pairs' spin errors about this axis (spin_errors_deg)

    @property
    def spin_uncertainty_deg_90(self) -> float:
        return float(np.percentile(self.spin_errors_deg, 90))

    def to_json(self) -> dict:
        return {"landmarks_used": self.names, "spin_from": "training pairs' mean MR->US orientation",
                "spin_uncertainty_deg_90": self.spin_uncertainty_deg_90}


def two_landmark_fit(names: Sequence[str], mr_points: np.ndarray, us_points: np.ndarray, prior: RotationPrior
                     ) -> TwoLandmarkFit:
    """Fit on two landmark pairs (world LPS mm) with the prior's spin, and the training pairs'
    spin errors about this axis (their 90th percentile is the spin's uncertainty)."""
    t = fit_two_landmarks(mr_points, us_points, prior)
    res = np.linalg.norm(t.apply(mr_points) - us_points, axis=1)
    return TwoLandmarkFit(t, list(names), {n: float(x) for n, x in zip(names, res)},
                          spin_errors_deg(mr_points[1] - mr_points[0], prior))
