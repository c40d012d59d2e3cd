"""Atomic output: write to a temporary file next to the target, then rename.

A crash or a full disk never leaves a half-written file under the final name, and an
existing file is only replaced once the new one is complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
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


def _owner_tag() -> str:
    """'host-pid' of this process, so a later run can tell a dead writer's temporary from a live one."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete temporaries left in `folder` by writers on this host that were killed (SIGKILL,
    power loss) before renaming; return what was removed.

    Temporaries of live processes, and of other hosts sharing the folder (``--num-parts``
    over machines), are left alone: they may still be written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _owner_tag().rsplit("-", 1)[0]
    removed = []
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and p.is_file() and m["host"] == host and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock so threads agree)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask_mode(path: PathLike) -> None:
    """Give `path` the mode an ordinary ``open()`` would (0666 minus the umask: 0644 under 022).

    ``mkstemp`` creates 0600 files so colleagues sharing a server could not read models,
    predictions or transforms; outputs follow the user's umask instead."""
    os.chmod(path, 0o666 & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same suffix; move it onto `path` on success.

    The suffix is kept because writers such as SimpleITK choose the format by extension.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _, suffix = split_suffix(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".tmp" + suffix,
                                   dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(target, f"cannot write here ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        apply_umask_mode(tmp_path)
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
