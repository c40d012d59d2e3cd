"""3D Slicer landmark files: markups JSON (``.mrk.json``) and legacy ``.fcsv``.

Reading
    Both formats may store RAS or LPS coordinates.  The coordinate system is read per markup
    (``"coordinateSystem": "LPS" | "RAS"``) or from the ``.fcsv`` header line
    ``# CoordinateSystem = LPS | RAS | 0 | 1`` (Slicer 4 wrote the numeric codes 0 = RAS and
    1 = LPS).  RAS becomes LPS by negating x and y.  A file that does not state its coordinate
    system, or names another one, is refused: RAS and LPS differ by a 180 degree turn, so a
    guess that is wrong is worse than no answer.

    The control point ``label`` is the landmark name; names, not order, identify landmarks.
    Only millimetres are accepted (``coordinateUnits`` "mm", or the UCUM triple
    ``["mm", "UCUM", "millimeter"]``).  Only point lists (markup type ``Fiducial``, or no type)
    are read; lines, curves, planes and ROIs in the same file are skipped.

Missing landmarks
    Markups JSON: a control point whose ``positionStatus`` is ``"missing"`` or ``"undefined"``,
    or that has no ``position``.  ``.fcsv``: a row whose x, y and z are all empty or ``nan``.

Writing
    Always LPS, stated in the file.  Markups JSON: one ``Fiducial`` markup, schema
    markups-schema-v1.0.3, missing landmarks with ``"positionStatus": "missing"`` (position
    [0, 0, 0], which Slicer ignores for missing points).  ``.fcsv``: missing landmarks have
    empty x, y, z and the description ``missing``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_write_text
from lmkreg.io.landmarks import LandmarkSet, check_unique_names

PathLike = Union[str, Path]

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # the same diagonal maps LPS -> RAS

# "RAS"/"LPS", and the numeric codes of Slicer 4 (vtkMRMLStorageNode: 0 = RAS, 1 = LPS)
_SYSTEMS = {"RAS": "RAS", "LPS": "LPS", "0": "RAS", "1": "LPS"}
_POINT_LIST_TYPES = {"fiducial", "pointlist"}
_MISSING_STATUSES = {"missing", "undefined"}
_DEFINED_STATUSES = {"defined", "preview"}
MISSING_DESCRIPTION = "missing"


def coordinate_system(value: Any, source: Optional[PathLike]) -> str:
    """'LPS' or 'RAS' from a file's coordinate system entry; anything else is an InputError."""
    key = str(value).strip().upper()
    if key not in _SYSTEMS:
        raise InputError(source, f"unknown coordinate system {value!r}: expected LPS or RAS "
                                 f"(or the legacy codes 0 = RAS, 1 = LPS)")
    return _SYSTEMS[key]


def _to_lps(values: Any, name: str, system: str, source: Optional[PathLike]) -> np.ndarray:
    """Three numbers in `system` -> LPS point; non-numeric or non-finite values are refused."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
        raise InputError(source, f"landmark {name!r} must have 3 coordinates, got {values!r}")
    coords = []
    for v in values:
        if isinstance(v, bool):  # json true/false would otherwise pass as 1/0
            raise InputError(source, f"landmark {name!r} has non-numeric coordinates {list(values)!r}")
        try:
            coords.append(float(v))
        except (TypeError, ValueError):
            raise InputError(source, f"landmark {name!r} has non-numeric coordinates {list(values)!r}") from None
    point = np.asarray(coords, dtype=float)
    if not np.all(np.isfinite(point)):
        raise InputError(source, f"landmark {name!r} has non-finite coordinates {list(values)!r}")
    return point * RAS_TO_LPS if system == "RAS" else point


def _check_units(units: Any, source: Optional[PathLike]) -> None:
    """Accept 'mm' or a code triple whose code is 'mm' (schema v1.0.3 allows both forms)."""
    code = units[0] if isinstance(units, (list, tuple)) and units else units
    if code != "mm":
        raise InputError(source, f"coordinateUnits must be 'mm' (millimetres), got {units!r}")


# ---- markups JSON --------------------------------------------------------------------------------

def is_markups_document(doc: Any) -> bool:
    """True for a parsed JSON document that looks like Slicer markups (has a 'markups' key)."""
    return isinstance(doc, dict) and "markups" in doc


def read_markups_json(path: PathLike) -> LandmarkSet:
    """Landmarks of every point-list markup in a ``.mrk.json`` file, in world LPS mm."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except IsADirectoryError:
        raise InputError(p, "is a folder, not a landmark file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None
    return markups_from_document(doc, p)


def markups_from_document(doc: Any, source: Optional[PathLike]) -> LandmarkSet:
    """Landmarks of a parsed markups document; `source` names the file in errors."""
    if not is_markups_document(doc) or not isinstance(doc["markups"], list):
        raise InputError(source, "not a 3D Slicer markups file (no 'markups' list)")
    points: dict[str, Optional[np.ndarray]] = {}
    names: list[str] = []
    skipped_types: list[str] = []
    for markup in doc["markups"]:
        if not isinstance(markup, dict):
            raise InputError(source, "each entry of 'markups' must be an object")
        kind = str(markup.get("type", "Fiducial"))
        if kind.lower() not in _POINT_LIST_TYPES:
            skipped_types.append(kind)
            continue
        if "coordinateSystem" not in markup:  # never guess between RAS and LPS
            raise InputError(source, "markup has no coordinateSystem (LPS or RAS); refusing to guess")
        system = coordinate_system(markup["coordinateSystem"], source)
        _check_units(markup.get("coordinateUnits", "mm"), source)
        control_points = markup.get("controlPoints", [])
        if not isinstance(control_points, list):
            raise InputError(source, "'controlPoints' must be a list")
        for i, cp in enumerate(control_points):
            if not isinstance(cp, dict):
                raise InputError(source, f"control point {i + 1} is not an object")
            label = cp.get("label")
            if not isinstance(label, str) or not label.strip():
                raise InputError(source, f"control point {i + 1} has no label; lmkreg matches landmarks by label")
            name = label.strip()
            names.append(name)
            points[name] = _control_point_position(cp, name, system, source)
    check_unique_names(names, source)
    if not names:
        extra = f" (it holds only {sorted(set(skipped_types))} markups)" if skipped_types else ""
        raise InputError(source, f"the markups file holds no point-list control points{extra}")
    return LandmarkSet(points)


def _control_point_position(cp: dict, name: str, system: str, source: Optional[PathLike]) -> Optional[np.ndarray]:
    status = cp.get("positionStatus")
    position = cp.get("position")
    if status is None:  # schema default: defined when a position is given
        status = "defined" if position is not None else "missing"
    status = str(status).lower()
    if status in _MISSING_STATUSES:
        return None
    if status not in _DEFINED_STATUSES:
        raise InputError(source, f"landmark {name!r} has unknown positionStatus {cp.get('positionStatus')!r}; "
                                 f"expected one of defined, preview, undefined, missing")
    if position is None:
        return None
    return _to_lps(position, name, system, source)


def markups_document(landmarks: LandmarkSet) -> dict:
    """A markups JSON document (one Fiducial markup, LPS mm) holding `landmarks`."""
    control_points = []
    for i, (name, p) in enumerate(landmarks.points.items()):
        cp: dict[str, Any] = {"id": str(i + 1), "label": name, "description": "", "associatedNodeID": "",
                              "selected": True, "locked": False, "visibility": True,
                              "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]}
        if p is None:
            cp["position"], cp["positionStatus"] = [0.0, 0.0, 0.0], "missing"
        else:
            cp["position"], cp["positionStatus"] = [float(v) for v in p], "defined"
        control_points.append(cp)
    markup = {"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
              "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "controlPoints": control_points}
    return {"@schema": MARKUPS_SCHEMA, "markups": [markup]}


def write_markups_json(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Write a ``.mrk.json`` (LPS) atomically."""
    _check_writable(landmarks)
    atomic_write_text(path, json.dumps(markups_document(landmarks), indent=2, allow_nan=False) + "\n")
    return Path(path)


def _check_writable(landmarks: LandmarkSet) -> None:
    for name, p in landmarks.points.items():
        if p is not None and not all(math.isfinite(v) for v in p):
            raise ValueError(f"landmark {name!r} is not finite")
        if not name.strip():
            raise ValueError("a landmark name is empty")


# ---- fcsv ----------------------------------------------------------------------------------------

FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                "associatedNodeID")


def read_fcsv(path: PathLike) -> LandmarkSet:
    """Landmarks of a legacy Slicer ``.fcsv`` file (RAS, LPS, 0 or 1 header), in world LPS mm."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except IsADirectoryError:
        raise InputError(p, "is a folder, not a landmark file") from None
    except UnicodeDecodeError:
        raise InputError(p, "not a text file") from None
    system: Optional[str] = None
    columns = list(FCSV_COLUMNS)
    rows: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if not sep:
                continue
            if key.strip().lower() == "coordinatesystem":
                system = coordinate_system(value, p)
            elif key.strip().lower() == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            rows.append(line)
    if system is None:  # never guess between RAS and LPS
        raise InputError(p, "no '# CoordinateSystem = LPS|RAS' header line; refusing to guess")
    if not {"x", "y", "z", "label"} <= set(columns):
        raise InputError(p, f"the columns line must name x, y, z and label, got {columns}")
    points: dict[str, Optional[np.ndarray]] = {}
    names: list[str] = []
    for line_no, values in enumerate(csv.reader(rows), start=1):
        record = dict(zip(columns, values))
        name = record.get("label", "").strip()
        if not name:
            raise InputError(p, f"point {line_no} has no label; lmkreg matches landmarks by label")
        names.append(name)
        xyz = [record.get(k, "").strip() for k in ("x", "y", "z")]
        if all(v == "" or v.lower() == "nan" for v in xyz):
            points[name] = None
        else:
            points[name] = _to_lps(xyz, name, system, p)
    check_unique_names(names, p)
    if not names:
        raise InputError(p, "the file holds no points")
    return LandmarkSet(points)


def fcsv_text(landmarks: LandmarkSet) -> str:
    """The ``.fcsv`` text (LPS header) for `landmarks`; a missing landmark has empty x, y, z."""
    buf = io.StringIO()
    buf.write("# Markups fiducial file version = 4.11\n")
    buf.write("# CoordinateSystem = LPS\n")
    buf.write("# columns = " + ",".join(FCSV_COLUMNS) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    for i, (name, p) in enumerate(landmarks.points.items()):
        if p is None:
            xyz, desc = ["", "", ""], MISSING_DESCRIPTION
        else:
            xyz, desc = [repr(float(v)) for v in p], ""
        writer.writerow([str(i + 1), *xyz, 0, 0, 0, 1, 1, 1, 0, name, desc, ""])
    return buf.getvalue()


def write_fcsv(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Write a legacy ``.fcsv`` (LPS) atomically; see fcsv_text for missing landmarks."""
    _check_writable(landmarks)
    atomic_write_text(path, fcsv_text(landmarks))
    return Path(path)
