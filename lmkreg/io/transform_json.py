"""The rigid transform's JSON file (``RigidTransform.to_json``), written atomically.

Here, not in lmkreg.geometry, because geometry holds no file code: io imports geometry, never
the reverse.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from lmkreg.errors import InputError
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.atomic import atomic_write_json

PathLike = Union[str, Path]


def write_rigid_transform(transform: RigidTransform, path: PathLike) -> Path:
    """Write `transform` (source world LPS mm -> target world LPS mm) to `path` atomically."""
    atomic_write_json(path, transform.to_json())
    return Path(path)


def read_rigid_transform(path: PathLike) -> RigidTransform:
    """The RigidTransform of a JSON file written by write_rigid_transform; errors name the file."""
    p = Path(path)
    try:
        return RigidTransform.from_json(json.loads(p.read_text(encoding="utf-8")), p)
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None
