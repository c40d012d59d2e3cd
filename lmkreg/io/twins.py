"""``CASE.json`` and ``CASE.mrk.json`` of one case: which one a consumer reads (issue 25).

lmkreg_predict writes both; documentation/inference.md tells users to correct landmarks in 3D
Slicer and save the ``.mrk.json``.  The rule (lmkreg_register, lmkreg_evaluate): the same
landmarks -> the ``.json`` (it carries confidence and provenance); different landmarks -> the
newer file, and the run says so; different and equally new -> an error naming both.  A Slicer
edit is never silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from lmkreg.errors import InputError
from lmkreg.io.landmark_files import read_landmarks

# two landmark files of one case agree when no shared landmark moved more than this (mm)
TWIN_TOLERANCE_MM = 1e-3


def choose_twin(first: Path, second: Path) -> tuple[Path, Optional[str]]:
    """The file to use of one case's ``CASE.json`` / ``CASE.mrk.json`` (see the module docstring),
    and a note to print when they disagree."""

    a, b = read_landmarks(first), read_landmarks(second)
    shared = [n for n in a.names if n in b.points]
    moved = {}
    for n in shared:
        pa, pb = a.points[n], b.points[n]
        if (pa is None) != (pb is None):
            moved[n] = float("inf")
        elif pa is not None:
            d = float(np.linalg.norm(pa - pb))
            if d > TWIN_TOLERANCE_MM:
                moved[n] = d
    if not moved and set(a.names) == set(b.names):
        plain = first if not first.name.lower().endswith(".mrk.json") else second
        return plain, None
    ta, tb = first.stat().st_mtime_ns, second.stat().st_mtime_ns
    if ta == tb:
        raise InputError(first, f"and {second.name} hold different landmarks and are equally new; delete the one "
                                f"that is wrong")
    newer, older = (first, second) if ta > tb else (second, first)
    detail = ", ".join(f"{n} {'added/removed' if d == float('inf') else f'moved {d:.1f} mm'}" for n, d in moved.items()) \
        or f"landmark names differ ({a.names} vs {b.names})"
    return newer, f"{newer.name} is newer than {older.name} and differs ({detail}): using {newer.name}"
