"""3D Slicer landmark files: markups JSON (``.mrk.json``) and legacy ``.fcsv``.

Both may store RAS or LPS coordinates; lmkreg converts to LPS on read (RAS -> LPS negates x
and y) and always writes LPS, stated in the file, so Slicer shows the points where they are.
A missing landmark is a control point with ``positionStatus: "missing"`` (markups JSON) or
with empty coordinates (``.fcsv``).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_write_text
from lmkreg.io.landmarks import LandmarkSet, check_unique_names

PathLike = Union[str, Path]
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
_CODES = {"RAS": "RAS", "LPS": "LPS", "0": "RAS", "1": "LPS"}  # legacy numeric codes of Slicer 4


def _system(value: Any, source: PathLike) -> str:
    cs = _CODES.get(str(value).strip().upper())
    if cs is None:
        raise InputError(source, f"unknown coordinate system {value!r}: expected LPS or RAS")
    return cs


def _point(values: Any, name: str, system: str, source: PathLike) -> np.ndarray:
    try:
        p = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        raise InputError(source, f"landmark {name!r} has non-numeric coordinates {values!r}") from None
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise InputError(source, f"landmark {name!r} must have 3 finite coordinates, got {values!r}")
    return p * _RAS_TO_LPS if system == "RAS" else p


# ---- markups JSON --------------------------------------------------------------------------------

def is_markups_document(doc: Any) -> bool:
    return isinstance(doc, dict) and "markups" in doc


def read_markups_json(path: PathLike) -> LandmarkSet:
    """Landmarks of all fiducial/point-list markups in a ``.mrk.json`` file, in LPS mm."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc})") from None
    return markups_from_document(doc, p)


def markups_from_document(doc: Any, source: PathLike) -> LandmarkSet:
    if not is_markups_document(doc) or not isinstance(doc["markups"], list):
        raise InputError(source, "not a 3D Slicer markups file (no 'markups' list)")
    points: dict[str, Optional[np.ndarray]] = {}
    names: list[str] = []
    for markup in doc["markups"]:
        if not isinstance(markup, dict):
            raise InputError(source, "each entry of 'markups' must be an object")
        if "coordinateSystem" not in markup:  # never guess between RAS and LPS
            raise InputError(source, "markup has no coordinateSystem (LPS or RAS); refusing to guess")
        system = _system(markup["coordinateSystem"], source)
        units = markup.get("coordinateUnits", "mm")
        if units != "mm":
            raise InputError(source, f"coordinateUnits must be 'mm', got {units!r}")
        for i, cp in enumerate(markup.get("controlPoints", [])):
            name = str(cp.get("label") or f"F-{i + 1}")
            names.append(name)
            status = cp.get("positionStatus", "defined")
            if status == "missing" or cp.get("position") is None:
                points[name] = None
            else:
                points[name] = _point(cp["position"], name, system, source)
    check_unique_names(names, source)
    if not names:
        raise InputError(source, "the markups file holds no control points")
    return LandmarkSet(points)


def markups_document(landmarks: LandmarkSet) -> dict:
    """A markups JSON document (one Fiducial markup, LPS) for `landmarks`."""
    control_points = []
    for i, (name, p) in enumerate(landmarks.points.items()):
        cp: dict[str, Any] = {"id": str(i + 1), "label": name, "description": "", "associatedNodeID": "",
                              "selected": True, "locked": False, "visibility": True,
                              "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]}
        if p is None:
            cp.update(position=[0.0, 0.0, 0.0], positionStatus="missing")
        else:
            cp.update(position=[float(v) for v in p], positionStatus="defined")
        control_points.append(cp)
    return {"@schema": MARKUPS_SCHEMA,
            "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
                         "labelFormat": "%N-%d", "controlPoints": control_points}]}


def write_markups_json(landmarks: LandmarkSet, path: PathLike) -> Path:
    atomic_write_text(path, json.dumps(markups_document(landmarks), indent=2) + "\n")
    return Path(path)


# ---- fcsv ----------------------------------------------------------------------------------------

_FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                 "associatedNodeID"]


def read_fcsv(path: PathLike) -> LandmarkSet:
    """Landmarks of a legacy Slicer ``.fcsv`` file (RAS or LPS header), in LPS mm."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(p, "not a text file") from None
    system, columns, rows = None, list(_FCSV_COLUMNS), []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "CoordinateSystem":
                system = _system(value, p)
            elif key.strip() == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            rows.append(line)
    if system is None:  # never guess between RAS and LPS
        raise InputError(p, "no '# CoordinateSystem = LPS|RAS' header line; refusing to guess")
    if not {"x", "y", "z", "label"} <= set(columns):
        raise InputError(p, f"the columns line must name x, y, z and label, got {columns}")
    points: dict[str, Optional[np.ndarray]] = {}
    names = []
    for values in csv.reader(rows):
        rec = dict(zip(columns, values))
        name = rec.get("label", "").strip()
        if not name:
            raise InputError(p, f"a point without a label: {values}")
        names.append(name)
        xyz = [rec.get(k, "").strip() for k in ("x", "y", "z")]
        if all(v == "" or v.lower() == "nan" for v in xyz):
            points[name] = None
        else:
            points[name] = _point(xyz, name, system, p)
    check_unique_names(names, p)
    if not names:
        raise InputError(p, "the file holds no points")
    return LandmarkSet(points)


def write_fcsv(landmarks: LandmarkSet, path: PathLike) -> Path:
    """Legacy ``.fcsv`` in LPS; a missing landmark has empty coordinates."""
    buf = io.StringIO()
    buf.write("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n")
    buf.write("# columns = " + ",".join(_FCSV_COLUMNS) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    for i, (name, p) in enumerate(landmarks.points.items()):
        xyz = ["", "", ""] if p is None else [repr(float(v)) for v in p]
        w.writerow([str(i + 1), *xyz, 0, 0, 0, 1, 1, 1, 0, name, "", ""])
    atomic_write_text(path, buf.getvalue())
    return Path(path)
