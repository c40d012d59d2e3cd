"""Landmark sets and the plain lmkreg landmark JSON.

A ``LandmarkSet`` maps landmark names to world points in LPS millimetres (x, y, z), or to
``None`` for a landmark that is explicitly missing.  Names, not order, identify landmarks.
Format readers/writers convert to LPS at the edge; nothing inside lmkreg sees RAS.

lmkreg JSON::

    {"coordinate_system": "LPS", "units": "mm",
     "landmarks": {"apex": [x, y, z], "bladder_neck": null, ...}}

Optional per-landmark extras (e.g. confidence) live under ``"extras"`` and are kept.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_write_json

PathLike = Union[str, Path]

DEFAULT_LANDMARK_NAMES = ("apex", "bladder_neck", "posterior_median")
LMKREG_JSON_SUFFIX = ".json"


@dataclass
class LandmarkSet:
    """Named landmarks in world LPS mm; a value of None means 'missing'."""

    points: dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, Optional[np.ndarray]] = {}
        for name, p in self.points.items():
            clean[str(name)] = None if p is None else _as_point(p, name)
        self.points = clean

    @property
    def names(self) -> list[str]:
        return list(self.points)

    def missing(self) -> list[str]:
        return [n for n, p in self.points.items() if p is None]

    def __getitem__(self, name: str) -> Optional[np.ndarray]:
        return self.points[name]

    def __contains__(self, name: str) -> bool:
        return name in self.points

    def __len__(self) -> int:
        return len(self.points)

    def to_array(self, names: Optional[Sequence[str]] = None) -> np.ndarray:
        """(N, 3) world LPS array in the order of `names`; NaN rows for missing or absent names."""
        names = self.names if names is None else list(names)
        out = np.full((len(names), 3), np.nan)
        for i, n in enumerate(names):
            p = self.points.get(n)
            if p is not None:
                out[i] = p
        return out

    @staticmethod
    def from_array(names: Sequence[str], array: np.ndarray) -> "LandmarkSet":
        """Inverse of to_array: NaN rows become missing landmarks."""
        arr = np.asarray(array, dtype=float).reshape(len(names), 3)
        return LandmarkSet({n: (None if np.any(np.isnan(r)) else r) for n, r in zip(names, arr)})

    def select(self, names: Sequence[str], *, source: Optional[PathLike] = None) -> "LandmarkSet":
        """The landmarks `names`, in that order; a name absent from the file is an error."""
        absent = [n for n in names if n not in self.points]
        if absent:
            raise InputError(source, f"landmark(s) {absent} not found; the file has {self.names}")
        return LandmarkSet({n: self.points[n] for n in names}, dict(self.extras))

    def equals(self, other: "LandmarkSet", atol: float = 1e-9) -> bool:
        if self.names != other.names:
            return False
        for n in self.names:
            a, b = self.points[n], other.points[n]
            if (a is None) != (b is None):
                return False
            if a is not None and not np.allclose(a, b, atol=atol, rtol=0):
                return False
        return True


def _as_point(value: Any, name: str, source: Optional[PathLike] = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(source, f"landmark {name!r} has non-numeric coordinates {value!r}") from None
    if arr.shape != (3,):
        raise InputError(source, f"landmark {name!r} must have 3 coordinates, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise InputError(source, f"landmark {name!r} has non-finite coordinates {list(arr)}")
    return arr


def check_unique_names(names: Iterable[str], source: Optional[PathLike]) -> None:
    """Raise if a landmark name occurs twice (matching is by name, so this is ambiguous)."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(source, f"landmark name {n!r} occurs more than once")
        seen.add(n)


def read_lmkreg_json(path: PathLike) -> LandmarkSet:
    """Read the plain lmkreg landmark JSON (LPS mm only)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "landmarks" not in data:
        raise InputError(p, "not an lmkreg landmark file (no 'landmarks' key)")
    cs = data.get("coordinate_system")
    if cs != "LPS":
        raise InputError(p, f"coordinate_system must be 'LPS', got {cs!r}")
    units = data.get("units")
    if units != "mm":
        raise InputError(p, f"units must be 'mm', got {units!r}")
    lms = data["landmarks"]
    if not isinstance(lms, Mapping):
        raise InputError(p, "'landmarks' must be an object mapping names to [x, y, z] or null")
    points = {str(n): (None if v is None else _as_point(v, n, p)) for n, v in lms.items()}
    return LandmarkSet(points, dict(data.get("extras", {})))


def lmkreg_json_dict(landmarks: LandmarkSet) -> dict:
    """The lmkreg JSON document for a landmark set."""
    doc: dict[str, Any] = {
        "coordinate_system": "LPS",
        "units": "mm",
        "landmarks": {n: (None if p is None else [float(v) for v in p]) for n, p in landmarks.points.items()},
    }
    if landmarks.extras:
        doc["extras"] = landmarks.extras
    return doc


def write_lmkreg_json(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Write the plain lmkreg JSON atomically."""
    for n, p in landmarks.points.items():
        if p is not None and not all(math.isfinite(v) for v in p):
            raise ValueError(f"landmark {n!r} is not finite")
    atomic_write_json(path, lmkreg_json_dict(landmarks))
    return Path(path)
