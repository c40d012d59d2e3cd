"""One entry point for every landmark file format, chosen by the file ending.

=============  ==================================================================
``.mrk.json``  3D Slicer markups JSON (LPS or RAS on read, LPS on write)
``.fcsv``      legacy 3D Slicer fiducials (LPS or RAS on read, LPS on write)
``.json``      lmkreg JSON (LPS mm); a Slicer markups document is recognised too
=============  ==================================================================

All points come back as a LandmarkSet in world LPS mm; missing landmarks survive every format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

from lmkreg.errors import InputError
from lmkreg.io.landmarks import LandmarkSet, lmkreg_json_dict, read_lmkreg_json, write_lmkreg_json
from lmkreg.io.slicer import (is_markups_document, markups_from_document, read_fcsv, read_markups_json,
                              write_fcsv, write_markups_json)

PathLike = Union[str, Path]
LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".json")  # longest first: .mrk.json before .json


def landmark_format(path: PathLike) -> str:
    """'markups', 'fcsv' or 'lmkreg' from the file name; error for anything else."""
    name = Path(path).name.lower()
    if name.endswith(".mrk.json"):
        return "markups"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".json"):
        return "lmkreg"
    raise InputError(path, f"unknown landmark file type; use one of {', '.join(LANDMARK_SUFFIXES)}")


def strip_landmark_suffix(filename: str) -> str:
    """'case1_MR.mrk.json' -> 'case1_MR'."""
    low = filename.lower()
    for suffix in LANDMARK_SUFFIXES:
        if low.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def read_landmarks(path: PathLike, names: Optional[Sequence[str]] = None) -> LandmarkSet:
    """Landmarks in world LPS mm; with `names`, exactly those (by name), in that order."""
    p = Path(path)
    kind = landmark_format(p)
    if kind == "markups":
        result = read_markups_json(p)
    elif kind == "fcsv":
        result = read_fcsv(p)
    else:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(p, "file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(p, f"not valid JSON ({exc})") from None
        result = markups_from_document(doc, p) if is_markups_document(doc) else read_lmkreg_json(p)
    return result.select(names, source=p) if names is not None else result


def write_landmarks(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Write in the format the file ending names (always LPS), atomically."""
    kind = landmark_format(path)
    if kind == "markups":
        return write_markups_json(landmarks, path)
    if kind == "fcsv":
        return write_fcsv(landmarks, path)
    return write_lmkreg_json(landmarks, path)


__all__ = ["LANDMARK_SUFFIXES", "landmark_format", "strip_landmark_suffix", "read_landmarks", "write_landmarks",
           "lmkreg_json_dict"]
