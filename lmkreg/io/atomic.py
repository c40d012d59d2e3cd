"""Atomic output: write to a temporary file next to the target, then rename.

A crash or a full disk never leaves a half-written file under the final name, and an
existing file is only replaced once the new one is complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from lmkreg.errors import OutputError

PathLike = Union[str, Path]


def split_suffix(path: PathLike) -> tuple[str, str]:
    """Split a file name into stem and full suffix ('.nii.gz', '.mrk.json' count as one)."""
    name = Path(path).name
    for double in (".nii.gz", ".mrk.json", ".seg.nrrd"):
        if name.lower().endswith(double):
            return name[: -len(double)], name[-len(double):]
    p = Path(name)
    return p.stem, p.suffix


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same suffix; move it onto `path` on success.

    The suffix is kept because writers such as SimpleITK choose the format by extension.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _, suffix = split_suffix(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(target, f"cannot write here ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:  # disk full, quota, permissions: the old file (if any) is untouched
        raise OutputError(target, f"could not be written ({exc.strerror or exc}); any previous version is "
                                  f"unchanged") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text atomically (fsync before the rename, so power loss cannot truncate it)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write JSON atomically, indented for humans."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
