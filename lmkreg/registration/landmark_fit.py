"""Least-squares rigid fit of landmark pairs (Arun et al. 1987 / Kabsch), with the reflection fix.

``fit_rigid(mr_points, us_points)`` returns the RigidTransform T (MR world LPS mm -> US world
LPS mm) minimising sum_i w_i ||us_i - (R mr_i + t)||^2 over proper rotations R.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import Flag, read_flags

MIN_SEPARATION_MM = 1.0
MIN_TRIANGLE_HEIGHT_MM = 1.0


def check_configuration(points: np.ndarray, what: str = "landmarks") -> None:
    """A rigid fit needs >= 3 distinct, non-collinear points; say which problem it is."""
    if len(points) < 3:
        raise InputError(None, f"{what}: a rigid transform needs at least 3 landmark pairs, got {len(points)}")
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.triu_indices(len(points), 1)
    if np.min(d[i, j]) < MIN_SEPARATION_MM:
        k = int(np.argmin(d[i, j]))
        raise InputError(None, f"{what}: landmarks {i[k]} and {j[k]} coincide ({d[i[k], j[k]]:.3f} mm apart)")
    centred = points - points.mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    # second singular value ~ spread off the best line; too small means collinear
    if s[1] / np.sqrt(len(points)) < MIN_TRIANGLE_HEIGHT_MM / 2:
        raise InputError(None, f"{what}: landmarks are (nearly) collinear; the rotation about their line is undetermined")


def fit_rigid(mr_points: np.ndarray, us_points: np.ndarray, weights: Optional[Sequence[float]] = None,
              source: str = "MR", target: str = "US") -> RigidTransform:
    """Weighted least-squares rigid transform taking `mr_points` onto `us_points` (both (N, 3) world LPS mm)."""
    p = np.asarray(mr_points, float)
    q = np.asarray(us_points, float)
    if p.shape != q.shape or p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"point arrays must both be (N, 3), got {p.shape} and {q.shape}")
    check_configuration(p, source)
    check_configuration(q, target)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, float)
    if w.shape != (len(p),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per landmark, not all zero")
    w = w / w.sum()
    pc = (w[:, None] * p).sum(0)
    qc = (w[:, None] * q).sum(0)
    h = ((p - pc) * w[:, None]).T @ (q - qc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T  # d = -1 would be a reflection: flip the weakest axis
    return RigidTransform(r, qc - r @ pc, source, target)


@dataclass
class LandmarkRegistration:
    transform: RigidTransform
    names: list[str]
    residuals_mm: dict[str, float]  # ||T(mr) - us|| per landmark used
    trust: Optional[dict] = None  # pair plausibility and transform uncertainty (lmkreg.trust.pair)

    @property
    def flags(self) -> list[Flag]:
        """The pair's flags (lmkreg.trust.flags), read from its ``trust`` block."""
        return read_flags(self.trust or {}, self.names)

    @property
    def rms_mm(self) -> float:
        return float(np.sqrt(np.mean(np.square(list(self.residuals_mm.values())))))


def register_landmarks(mr: LandmarkSet, us: LandmarkSet, names: Optional[Sequence[str]] = None,
                       weights: Optional[dict[str, float]] = None) -> LandmarkRegistration:
    """Match landmarks by name (those present in both sets), fit, and report residuals."""
    names = list(names) if names is not None else [n for n in mr.names if n in us.points]
    used = [n for n in names if mr.points.get(n) is not None and us.points.get(n) is not None]
    if len(used) < 3:
        raise InputError(None, f"only {len(used)} landmark(s) present in both MR and US ({used}); need 3")
    p = np.array([mr.points[n] for n in used])
    q = np.array([us.points[n] for n in used])
    w = None if weights is None else [weights.get(n, 1.0) for n in used]
    t = fit_rigid(p, q, w)
    res = np.linalg.norm(t.apply(p) - q, axis=1)
    return LandmarkRegistration(t, used, {n: float(r) for n, r in zip(used, res)})
