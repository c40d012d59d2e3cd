"""Rigid transforms between world spaces (all LPS mm).

``RigidTransform`` maps points of a *source* world (e.g. MR) to a *target* world (e.g. US):
``y = R @ x + t``.  Its JSON form states the direction explicitly::

    {"type": "rigid", "source": "MR", "target": "US", "coordinate_system": "LPS",
     "units": "mm", "matrix": [[...4x4...]]}

``fit_rigid(mr_points, us_points)`` is the least-squares rigid fit of point pairs (Arun et al.
1987 / Kabsch, with the reflection fix): the RigidTransform T (MR world LPS mm -> US world LPS
mm) minimising sum_i w_i ||us_i - (R mr_i + t)||^2 over proper rotations R.  It lives here, not
in registration, so that trust and evaluation use it without importing registration.  Reading
and writing the JSON file is ``lmkreg.io.transform_json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy.spatial.transform import Rotation

from lmkreg.errors import InputError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class RigidTransform:
    """Rotation + translation from `source` world LPS mm to `target` world LPS mm."""

    rotation: np.ndarray  # (3, 3), proper rotation
    translation: np.ndarray  # (3,)
    source: str = "MR"
    target: str = "US"

    def __post_init__(self) -> None:
        r = np.asarray(self.rotation, dtype=float).reshape(3, 3)
        t = np.asarray(self.translation, dtype=float).reshape(3)
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError("rotation must be a proper orthonormal 3x3 matrix")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation", t)

    @staticmethod
    def identity(source: str = "MR", target: str = "US") -> "RigidTransform":
        return RigidTransform(np.eye(3), np.zeros(3), source, target)

    @staticmethod
    def from_matrix(matrix: np.ndarray, source: str = "MR", target: str = "US") -> "RigidTransform":
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError("expected a 4x4 homogeneous matrix with last row [0, 0, 0, 1]")
        return RigidTransform(m[:3, :3], m[:3, 3], source, target)

    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, points_source_lps: np.ndarray) -> np.ndarray:
        """Map source-world LPS points (..., 3) to target-world LPS points."""
        return np.asarray(points_source_lps, dtype=float) @ self.rotation.T + self.translation

    def inverse(self) -> "RigidTransform":
        return RigidTransform(self.rotation.T, -self.rotation.T @ self.translation, self.target, self.source)

    def compose(self, first: "RigidTransform") -> "RigidTransform":
        """self after first: x -> self(first(x))."""
        return RigidTransform(self.rotation @ first.rotation, self.rotation @ first.translation + self.translation,
                              first.source, self.target)

    def rotation_angle_deg(self) -> float:
        """Angle of the rotation (degrees), accurate near 0 (unlike arccos of the trace)."""
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    def to_json(self) -> dict:
        return {"type": "rigid", "source": self.source, "target": self.target, "coordinate_system": "LPS",
                "units": "mm", "matrix": self.matrix().tolist()}

    @staticmethod
    def from_json(d: dict, source_file: PathLike | None = None) -> "RigidTransform":
        if d.get("type") != "rigid":
            raise InputError(source_file, f"transform type must be 'rigid', got {d.get('type')!r}")
        if d.get("coordinate_system") != "LPS" or d.get("units") != "mm":
            raise InputError(source_file, "transform must be in LPS millimetres")
        try:
            return RigidTransform.from_matrix(np.asarray(d["matrix"], dtype=float), d.get("source", "MR"),
                                              d.get("target", "US"))
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(source_file, f"bad transform matrix ({exc})") from None


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


def fit_rigid_batch(mr_points: np.ndarray, us_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unweighted least-squares rigid fits of many point sets at once (the Monte Carlo of the
    transform uncertainty fits hundreds of perturbed triangles per pair; one batched SVD instead of
    a Python loop of ``fit_rigid``).  `mr_points`, `us_points`: (S, N, 3) world LPS mm.  Returns
    (rotations (S, 3, 3), translations (S, 3), valid (S,)): ``valid`` is False where
    ``check_configuration`` would refuse either point set (points that coincide or are collinear);
    the fit of such a set is returned but means nothing."""
    p = np.asarray(mr_points, float)
    q = np.asarray(us_points, float)
    if p.shape != q.shape or p.ndim != 3 or p.shape[2] != 3 or p.shape[1] < 3:
        raise ValueError(f"point arrays must both be (S, N >= 3, 3), got {p.shape} and {q.shape}")
    i, j = np.triu_indices(p.shape[1], 1)
    valid = np.ones(len(p), bool)
    for pts in (p, q):
        separation = np.linalg.norm(pts[:, i] - pts[:, j], axis=-1).min(1)
        spread = np.linalg.svd(pts - pts.mean(1, keepdims=True), compute_uv=False)[:, 1] / np.sqrt(p.shape[1])
        valid &= (separation >= MIN_SEPARATION_MM) & (spread >= MIN_TRIANGLE_HEIGHT_MM / 2)
    pc, qc = p.mean(1), q.mean(1)
    h = np.einsum("sni,snj->sij", p - pc[:, None], q - qc[:, None])
    u, _, vt = np.linalg.svd(h)
    v, ut = np.swapaxes(vt, 1, 2), np.swapaxes(u, 1, 2)
    d = np.sign(np.linalg.det(v @ ut))
    flip = np.ones((len(p), 3))
    flip[:, 2] = d  # d = -1 would be a reflection: flip the weakest axis
    r = (v * flip[:, None, :]) @ ut
    return r, qc - np.einsum("sij,sj->si", r, pc), valid


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
