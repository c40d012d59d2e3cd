"""Rigid registration of named landmark pairs: match by name, fit (``lmkreg.geometry.rigid.fit_rigid``,
the least-squares Kabsch fit), report the residual per landmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import RigidTransform, fit_rigid
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import Flag, read_flags

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
