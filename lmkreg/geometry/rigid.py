"""Rigid transforms between world spaces (all LPS mm).

``RigidTransform`` maps points of a *source* world (e.g. MR) to a *target* world (e.g. US):
``y = R @ x + t``.  Its JSON form states the direction explicitly::

    {"type": "rigid", "source": "MR", "target": "US", "coordinate_system": "LPS",
     "units": "mm", "matrix": [[...4x4...]]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_write_json

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
        from scipy.spatial.transform import Rotation

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

    def save(self, path: PathLike) -> Path:
        atomic_write_json(path, self.to_json())
        return Path(path)

    @staticmethod
    def load(path: PathLike) -> "RigidTransform":
        p = Path(path)
        try:
            return RigidTransform.from_json(json.loads(p.read_text(encoding="utf-8")), p)
        except FileNotFoundError:
            raise InputError(p, "file not found") from None
        except json.JSONDecodeError as exc:
            raise InputError(p, f"not valid JSON ({exc})") from None
