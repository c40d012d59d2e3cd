"""One entry point for every landmark file format, chosen by the file ending.

=============  ==================================================================
``.mrk.json``  3D Slicer markups JSON (LPS or RAS on read, LPS on write)
``.fcsv``      legacy 3D Slicer fiducials (LPS or RAS on read, LPS on write)
``.json``      lmkreg JSON (LPS mm); a Slicer markups document is recognised by content
=============  ==================================================================

All points come back as a LandmarkSet in world LPS mm; missing landmarks survive every format.
Label maps (one label or channel per landmark) are images, not landmark files: see
``lmkreg.io.labelmap``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lmkreg.errors import InputError
from lmkreg.io.landmarks import LandmarkSet, lmkreg_json_dict, read_lmkreg_json, write_lmkreg_json
from lmkreg.io.slicer import (is_markups_document, markups_from_document, read_fcsv, read_markups_json,
                              write_fcsv, write_markups_json)

PathLike = Union[str, Path]
LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".json")  # order matters: .mrk.json must be tried before .json
_FORMATS = {".mrk.json": "markups", ".fcsv": "fcsv", ".json": "lmkreg"}


def landmark_format(path: PathLike) -> str:
    """'markups', 'fcsv' or 'lmkreg' from the file name; InputError for anything else."""
    name = Path(path).name.lower()
    for suffix in LANDMARK_SUFFIXES:
        if name.endswith(suffix):
            return _FORMATS[suffix]
    raise InputError(path, f"unknown landmark file type; use one of {', '.join(LANDMARK_SUFFIXES)}")


def is_landmark_file(path: PathLike) -> bool:
    """True for a file name with a landmark suffix (hidden files excluded)."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(LANDMARK_SUFFIXES)


def strip_landmark_suffix(filename: str) -> str:
    """'case1_MR.mrk.json' -> 'case1_MR' (any suffix of LANDMARK_SUFFIXES, case-insensitive)."""
    low = filename.lower()
    for suffix in LANDMARK_SUFFIXES:
        if low.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _no_duplicate_keys(source: Path):
    """json object hook: a key given twice is an error (json.loads would keep only the last)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InputError(source, f"key {key!r} occurs more than once in one JSON object "
                                         f"(a landmark name given twice?)")
            out[key] = value
        return out
    return hook


def _read_json_document(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys(p))
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except IsADirectoryError:
        raise InputError(p, "is a folder, not a landmark file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None


def read_landmarks(path: PathLike, names: Optional[Sequence[str]] = None) -> LandmarkSet:
    """Landmarks in world LPS mm; with `names`, exactly those (by name), in that order.

    A name in `names` that the file does not hold (not even as missing) is an InputError
    naming the file and the absent names.
    """
    p = Path(path)
    kind = landmark_format(p)
    if kind == "fcsv":
        result = read_fcsv(p)
    else:
        doc = _read_json_document(p)  # refuses duplicate keys in both JSON formats
        if kind == "markups" or is_markups_document(doc):
            result = markups_from_document(doc, p)
        else:
            result = read_lmkreg_json(p)
    return result if names is None else result.select(list(names), source=p)


def write_landmarks(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Write in the format the file ending names (always LPS), atomically."""
    kind = landmark_format(path)
    if kind == "markups":
        return write_markups_json(landmarks, path)
    if kind == "fcsv":
        return write_fcsv(landmarks, path)
    return write_lmkreg_json(landmarks, path)


__all__ = ["LANDMARK_SUFFIXES", "landmark_format", "is_landmark_file", "strip_landmark_suffix", "read_landmarks",
           "write_landmarks", "lmkreg_json_dict", "read_markups_json"]
