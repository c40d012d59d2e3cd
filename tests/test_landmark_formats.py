"""Landmark file formats: Slicer markups JSON and .fcsv (RAS or LPS), lmkreg JSON; missing
landmarks survive every format; errors name the file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmkreg.errors import InputError
from lmkreg.io.landmark_files import read_landmarks, strip_landmark_suffix, write_landmarks
from lmkreg.io.landmarks import LandmarkSet

POINTS = {"apex": np.array([12.5, -40.25, 7.0]), "bladder_neck": None, "posterior_median": np.array([-3.0, 8.5, 61.75])}


def _markups(system, points):
    cps = [{"label": n, "position": list(p) if p is not None else [0, 0, 0],
            "positionStatus": "defined" if p is not None else "missing"} for n, p in points.items()]
    return {"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm",
                                         "controlPoints": cps}]}


def test_ras_markups_read_as_lps(tmp_path):
    ras = {n: (None if p is None else p * [-1, -1, 1]) for n, p in POINTS.items()}
    f = tmp_path / "a.mrk.json"
    f.write_text(json.dumps(_markups("RAS", ras)))
    got = read_landmarks(f)
    assert got.missing() == ["bladder_neck"]
    np.testing.assert_array_equal(got["apex"], POINTS["apex"])
    np.testing.assert_array_equal(got["posterior_median"], POINTS["posterior_median"])


@pytest.mark.parametrize("header", ["RAS", "LPS", "0", "1"])
def test_fcsv_headers(tmp_path, header):
    is_ras = header in ("RAS", "0")
    lines = [f"# Markups fiducial file version = 4.11", f"# CoordinateSystem = {header}",
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
    for i, (n, p) in enumerate(POINTS.items()):
        q = ["", "", ""] if p is None else list(p * ([-1, -1, 1] if is_ras else 1))
        lines.append(",".join(map(str, [i, *q, 0, 0, 0, 1, 1, 1, 0, n, "", ""])))
    f = tmp_path / "a.fcsv"
    f.write_text("\n".join(lines) + "\n")
    got = read_landmarks(f)
    assert got.equals(LandmarkSet(POINTS))


@pytest.mark.parametrize("suffix", [".json", ".mrk.json", ".fcsv"])
def test_every_format_round_trips_with_a_missing_landmark(tmp_path, suffix):
    f = tmp_path / f"case_US{suffix}"
    write_landmarks(LandmarkSet(POINTS), f)
    got = read_landmarks(f)
    assert got.equals(LandmarkSet(POINTS)) and got.missing() == ["bladder_neck"]
    assert strip_landmark_suffix(f.name) == "case_US"
    if suffix == ".mrk.json":
        assert json.loads(f.read_text())["markups"][0]["coordinateSystem"] == "LPS"


def test_selection_is_by_name_not_order(tmp_path):
    f = tmp_path / "x.mrk.json"
    write_landmarks(LandmarkSet(POINTS), f)
    got = read_landmarks(f, ["posterior_median", "apex"])
    assert got.names == ["posterior_median", "apex"]
    np.testing.assert_array_equal(got["apex"], POINTS["apex"])
    with pytest.raises(InputError, match=r"x\.mrk\.json.*urethra"):
        read_landmarks(f, ["urethra"])


@pytest.mark.parametrize("broken, message", [
    (lambda d: d["markups"][0].update(coordinateSystem="XYZ"), "unknown coordinate system"),
    (lambda d: d["markups"][0].update(coordinateUnits="cm"), "coordinateUnits"),
    (lambda d: d["markups"][0]["controlPoints"][2].update(label="apex"), "more than once"),
    (lambda d: d["markups"][0]["controlPoints"][0].update(position=["a", 1, 2]), "non-numeric"),
])
def test_broken_markups_are_named(tmp_path, broken, message):
    doc = _markups("LPS", POINTS)
    broken(doc)
    f = tmp_path / "bad_case.mrk.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"bad_case.mrk.json.*{message}"):
        read_landmarks(f)


def test_lmkreg_json_refuses_ras_and_other_units(tmp_path):
    f = tmp_path / "p.json"
    for key, value, message in (("coordinate_system", "RAS", "coordinate_system"), ("units", "cm", "units")):
        doc = {"coordinate_system": "LPS", "units": "mm", "landmarks": {"apex": [1, 2, 3]}}
        doc[key] = value
        f.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=f"p.json.*{message}"):
            read_landmarks(f)
