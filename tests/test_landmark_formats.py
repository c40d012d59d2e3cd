"""Landmark file formats and label maps.

Slicer markups JSON and .fcsv (RAS or LPS), lmkreg JSON: RAS is converted to LPS, missing
landmarks survive every format, matching is by name, and every malformed file is refused
with its name in the message.  Label maps: centroids on an oblique anisotropic grid agree
with the analytic centre of a voxel box (computed here from origin + D diag(spacing) index,
independently of lmkreg) and with SimpleITK's LabelShapeStatisticsImageFilter.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.errors import ConfigurationError, InputError
from lmkreg.io.labelmap import landmarks_from_labelmap
from lmkreg.io.landmark_files import landmark_format, read_landmarks, strip_landmark_suffix, write_landmarks
from lmkreg.io.landmarks import LandmarkSet

POINTS = {"apex": np.array([12.5, -40.25, 7.0]), "bladder_neck": None, "posterior_median": np.array([-3.0, 8.5, 61.75])}
RAS = np.array([-1.0, -1.0, 1.0])
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"


def _markups(system, points, units="mm"):
    cps = [{"label": n, "position": list(p) if p is not None else [0, 0, 0],
            "positionStatus": "defined" if p is not None else "missing"} for n, p in points.items()]
    return {"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": units,
                                         "controlPoints": cps}]}


def _fcsv_text(header, points, flip=False):
    lines = ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {header}", FCSV_COLUMNS]
    for i, (n, p) in enumerate(points.items()):
        q = ["", "", ""] if p is None else list(p * (RAS if flip else 1))
        lines.append(",".join(map(str, [f"vtkMRMLMarkupsFiducialNode_{i}", *q, 0, 0, 0, 1, 1, 1, 0, n, "", ""])))
    return "\n".join(lines) + "\n"


# ---- Slicer markups JSON ----------------------------------------------------------------------------

def test_ras_markups_read_as_lps_with_x_and_y_negated(tmp_path):
    ras = {n: (None if p is None else p * RAS) for n, p in POINTS.items()}
    f = tmp_path / "a.mrk.json"
    f.write_text(json.dumps(_markups("RAS", ras)))
    got = read_landmarks(f)
    assert got.names == list(POINTS) and got.missing() == ["bladder_neck"]
    for n in ("apex", "posterior_median"):
        np.testing.assert_array_equal(got[n][:2], -ras[n][:2])  # x, y negated
        np.testing.assert_array_equal(got[n][2], ras[n][2])  # z unchanged
        np.testing.assert_array_equal(got[n], POINTS[n])


def test_lps_markups_are_read_unchanged(tmp_path):
    f = tmp_path / "lps.mrk.json"
    f.write_text(json.dumps(_markups("LPS", POINTS)))
    assert read_landmarks(f).equals(LandmarkSet(POINTS))


def test_markups_undefined_status_or_no_position_is_missing_and_other_markup_types_are_skipped(tmp_path):
    doc = _markups("LPS", {"apex": POINTS["apex"]}, units=["mm", "UCUM", "millimeter"])
    doc["markups"][0]["controlPoints"] += [{"label": "bladder_neck", "positionStatus": "undefined",
                                            "position": [1.0, 2.0, 3.0]},
                                           {"label": "posterior_median"}]
    doc["markups"].append({"type": "Line", "coordinateSystem": "LPS",
                           "controlPoints": [{"label": "ruler", "position": [0, 0, 0]}]})
    f = tmp_path / "statuses.mrk.json"
    f.write_text(json.dumps(doc))
    got = read_landmarks(f)
    assert got.names == ["apex", "bladder_neck", "posterior_median"]
    assert got.missing() == ["bladder_neck", "posterior_median"]
    np.testing.assert_array_equal(got["apex"], POINTS["apex"])


def test_markups_document_in_a_plain_json_file_is_recognised_by_content(tmp_path):
    f = tmp_path / "case_MR.json"
    f.write_text(json.dumps(_markups("RAS", {"apex": POINTS["apex"] * RAS})))
    np.testing.assert_array_equal(read_landmarks(f)["apex"], POINTS["apex"])


@pytest.mark.parametrize("suffix", [".json", ".mrk.json", ".fcsv"])
def test_every_format_round_trips_with_a_missing_landmark(tmp_path, suffix):
    f = tmp_path / f"case_US{suffix}"
    write_landmarks(LandmarkSet(POINTS), f)
    got = read_landmarks(f)
    assert got.equals(LandmarkSet(POINTS)) and got.missing() == ["bladder_neck"]
    assert strip_landmark_suffix(f.name) == "case_US"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f.name]  # atomic: no temporary file left


def test_written_files_state_lps_and_mark_missing_points(tmp_path):
    mrk, fcsv = tmp_path / "w.mrk.json", tmp_path / "w.fcsv"
    write_landmarks(LandmarkSet(POINTS), mrk)
    write_landmarks(LandmarkSet(POINTS), fcsv)
    doc = json.loads(mrk.read_text())
    assert "markups-schema-v1.0.3" in doc["@schema"]
    markup = doc["markups"][0]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    status = {cp["label"]: cp["positionStatus"] for cp in markup["controlPoints"]}
    assert status == {"apex": "defined", "bladder_neck": "missing", "posterior_median": "defined"}
    lines = fcsv.read_text().splitlines()
    assert "# CoordinateSystem = LPS" in lines
    row = next(line for line in lines if ",bladder_neck," in line).split(",")
    assert row[1:4] == ["", "", ""] and row[12] == "missing"


def test_format_is_chosen_by_suffix_with_mrk_json_before_json(tmp_path):
    assert landmark_format("a.mrk.json") == "markups"
    assert landmark_format("A.MRK.JSON") == "markups"
    assert landmark_format("a.fcsv") == "fcsv"
    assert landmark_format("a.json") == "lmkreg"
    with pytest.raises(InputError, match=r"a\.txt.*unknown landmark file type"):
        landmark_format(tmp_path / "a.txt")


# ---- fcsv -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["RAS", "LPS", "0", "1"])
def test_fcsv_headers(tmp_path, header):
    f = tmp_path / "a.fcsv"
    f.write_text(_fcsv_text(header, POINTS, flip=header in ("RAS", "0")))
    assert read_landmarks(f).equals(LandmarkSet(POINTS))


def test_fcsv_nan_coordinates_are_a_missing_landmark(tmp_path):
    f = tmp_path / "nan.fcsv"
    f.write_text(_fcsv_text("LPS", {"apex": POINTS["apex"]}) + "x,nan,nan,nan,0,0,0,1,1,1,0,bladder_neck,,\n")
    got = read_landmarks(f)
    assert got.missing() == ["bladder_neck"]


# ---- matching by name ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".mrk.json", ".fcsv"])
def test_selection_is_by_name_not_order(tmp_path, suffix):
    f = tmp_path / f"x{suffix}"
    write_landmarks(LandmarkSet(POINTS), f)
    got = read_landmarks(f, ["posterior_median", "apex", "bladder_neck"])
    assert got.names == ["posterior_median", "apex", "bladder_neck"]
    np.testing.assert_array_equal(got["apex"], POINTS["apex"])
    np.testing.assert_array_equal(got.to_array()[0], POINTS["posterior_median"])
    with pytest.raises(InputError, match=rf"x{suffix.replace('.', chr(92) + '.')}.*urethra"):
        read_landmarks(f, ["apex", "urethra"])


# ---- malformed files are named ----------------------------------------------------------------------

@pytest.mark.parametrize("broken, message", [
    (lambda d: d["markups"][0].update(coordinateSystem="XYZ"), "unknown coordinate system"),
    (lambda d: d["markups"][0].pop("coordinateSystem"), "no coordinateSystem"),
    (lambda d: d["markups"][0].update(coordinateUnits="cm"), "coordinateUnits"),
    (lambda d: d["markups"][0].update(coordinateUnits="um"), "coordinateUnits"),
    (lambda d: d["markups"][0]["controlPoints"][2].update(label="apex"), "more than once"),
    (lambda d: d["markups"][0]["controlPoints"][0].update(position=["a", 1, 2]), "non-numeric"),
    (lambda d: d["markups"][0]["controlPoints"][0].update(position=[1, 2]), "3 coordinates"),
    (lambda d: d["markups"][0]["controlPoints"][0].update(positionStatus="somewhere"), "positionStatus"),
    (lambda d: d["markups"][0]["controlPoints"][0].pop("label"), "no label"),
])
def test_broken_markups_are_named(tmp_path, broken, message):
    doc = _markups("LPS", POINTS)
    broken(doc)
    f = tmp_path / "bad_case.mrk.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=rf"bad_case\.mrk\.json.*{message}"):
        read_landmarks(f)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("CoordinateSystem = LPS", "CoordinateSystem = IJK"), "unknown coordinate system"),
    (lambda t: t.replace("# CoordinateSystem = LPS\n", ""), "CoordinateSystem"),
    (lambda t: t.replace("posterior_median", "apex"), "more than once"),
    (lambda t: t.replace("12.5", "twelve"), "non-numeric"),
    (lambda t: t.replace(",apex,", ",,"), "no label"),
])
def test_broken_fcsv_is_named(tmp_path, edit, message):
    f = tmp_path / "bad_case.fcsv"
    f.write_text(edit(_fcsv_text("LPS", POINTS)))
    with pytest.raises(InputError, match=rf"bad_case\.fcsv.*{message}"):
        read_landmarks(f)


@pytest.mark.parametrize("text, message", [
    ('{"coordinate_system": "RAS", "units": "mm", "landmarks": {"apex": [1, 2, 3]}}', "coordinate_system"),
    ('{"coordinate_system": "LPS", "units": "cm", "landmarks": {"apex": [1, 2, 3]}}', "units"),
    ('{"coordinate_system": "LPS", "units": "mm", "landmarks": {"apex": [1, 2, 3], "apex": [4, 5, 6]}}',
     "more than once"),
    ('{"coordinate_system": "LPS", "units": "mm", "landmarks": {"apex": [1, "b", 3]}}', "non-numeric"),
    ('{"coordinate_system": "LPS", "units": "mm", "landmarks": {"apex": [1, 2', "not valid JSON"),
])
def test_broken_lmkreg_json_is_named(tmp_path, text, message):
    f = tmp_path / "p_case.json"
    f.write_text(text)
    with pytest.raises(InputError, match=rf"p_case\.json.*{message}"):
        read_landmarks(f)


# ---- label maps ---------------------------------------------------------------------------------------

BOXES = {  # landmark -> (z0, z1, y0, y1, x0, x1), inclusive voxel index ranges
    "apex": (2, 4, 3, 6, 1, 5),
    "bladder_neck": (10, 13, 15, 20, 20, 27),
    "posterior_median": (6, 6, 9, 12, 14, 14),
}


def _analytic_world(geom, box):
    """Centre of a voxel box mapped with world = origin + D diag(spacing) (x, y, z): written out
    here so the reference does not use lmkreg's ImageGeometry."""
    z0, z1, y0, y1, x0, x1 = box
    index_xyz = np.array([(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2])
    d = np.asarray(geom.direction, dtype=float).reshape(3, 3)
    return np.asarray(geom.origin_xyz) + d @ (np.asarray(geom.spacing_xyz) * index_xyz)


def _box_mask(shape, box):
    z0, z1, y0, y1, x0, x1 = box
    m = np.zeros(shape, dtype=bool)
    m[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = True
    return m


def _sitk_centroids(label_image):
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(label_image)
    return {int(lab): np.array(stats.GetCentroid(lab)) for lab in stats.GetLabels()}


@pytest.mark.parametrize("suffix, tol", [(".nrrd", 1e-9), (".nii.gz", 2e-4)])  # NIfTI: float32 geometry
def test_labelmap_3d_centroids_match_analytic_and_simpleitk(tmp_path, oblique_geometry, suffix, tol):
    geom = oblique_geometry
    labels = np.zeros(geom.shape_zyx, dtype=np.uint8)
    for value, box in zip((1, 2, 3), BOXES.values()):
        labels[_box_mask(geom.shape_zyx, box)] = value
    labels[0, 0, :4] = 7  # an unrelated label (e.g. the gland) is ignored
    f = tmp_path / f"case_US_label{suffix}"
    sitk.WriteImage(geom.make_image(labels), str(f))
    got = landmarks_from_labelmap(f, list(BOXES))
    assert got.names == list(BOXES) and not got.missing()
    reference = _sitk_centroids(sitk.ReadImage(str(f)))
    for value, (name, box) in zip((1, 2, 3), BOXES.items()):
        np.testing.assert_allclose(got[name], _analytic_world(geom, box), atol=tol, rtol=0)
        np.testing.assert_allclose(got[name], reference[value], atol=1e-9, rtol=0)


def test_labelmap_irregular_labels_match_simpleitk_and_empty_label_is_missing(tmp_path, oblique_geometry, rng):
    geom = oblique_geometry
    labels = rng.choice([0, 0, 0, 5, 9], size=geom.shape_zyx).astype(np.int16)  # scattered irregular labels
    f = tmp_path / "scattered.mha"
    sitk.WriteImage(geom.make_image(labels), str(f))
    got = landmarks_from_labelmap(f, ["a", "b", "c"], labels={"a": 9, "b": 5, "c": 4})  # 4 is absent
    reference = _sitk_centroids(sitk.ReadImage(str(f)))
    np.testing.assert_allclose(got["a"], reference[9], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["b"], reference[5], atol=1e-9, rtol=0)
    assert got["c"] is None and got.missing() == ["c"]


def _channel_images(geom, boxes, extra_first=False):
    channels = [np.zeros(geom.shape_zyx, np.uint8)] if extra_first else []
    for box in boxes:
        channels.append(_box_mask(geom.shape_zyx, box).astype(np.uint8))
    channels[-1][:] = 0  # the last landmark has no voxels: missing, no crash
    channels[0][0, 0, 0] = int(extra_first)  # a gland-like channel 0 when extra_first
    return [geom.make_image(c) for c in channels]


@pytest.mark.parametrize("layout", ["4d", "vector"])
def test_labelmap_one_channel_per_landmark(tmp_path, oblique_geometry, layout):
    geom = oblique_geometry
    images = _channel_images(geom, BOXES.values())
    joined = sitk.JoinSeries(images) if layout == "4d" else sitk.Compose(images)
    f = tmp_path / f"case_MR_{layout}.nrrd"
    sitk.WriteImage(joined, str(f))
    got = landmarks_from_labelmap(f, list(BOXES))
    assert got.missing() == ["posterior_median"]
    for name in ("apex", "bladder_neck"):
        np.testing.assert_allclose(got[name], _analytic_world(geom, BOXES[name]), atol=1e-9, rtol=0)
        reference = _sitk_centroids(images[list(BOXES).index(name)])[1]
        np.testing.assert_allclose(got[name], reference, atol=1e-9, rtol=0)


def test_labelmap_4d_nifti_with_a_gland_channel_first(tmp_path, oblique_geometry):
    """µ-RegPro style: 4D NIfTI, channel 0 the gland, landmarks in channels 1..N."""
    geom = oblique_geometry
    f = tmp_path / "case000001.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(_channel_images(geom, BOXES.values(), extra_first=True)), str(f))
    got = landmarks_from_labelmap(f, list(BOXES), labels=[1, 2, 3])
    assert got.missing() == ["posterior_median"]
    np.testing.assert_allclose(got["apex"], _analytic_world(geom, BOXES["apex"]), atol=2e-4, rtol=0)
    with pytest.raises(InputError, match=r"case000001\.nii\.gz.*4 channels but 3 landmark names"):
        landmarks_from_labelmap(f, list(BOXES))
    with pytest.raises(InputError, match=r"case000001\.nii\.gz.*channel\(s\) \[4\] do not exist"):
        landmarks_from_labelmap(f, list(BOXES), labels=[1, 2, 4])
    with pytest.raises(ConfigurationError, match="one per landmark"):
        landmarks_from_labelmap(f, list(BOXES), labels=[1, 2])


def test_broken_labelmap_is_named(tmp_path, oblique_geometry):
    f = tmp_path / "broken_label.nii.gz"
    sitk.WriteImage(oblique_geometry.make_image(np.ones(oblique_geometry.shape_zyx, np.uint8)), str(f))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match=r"broken_label\.nii\.gz.*not a readable image"):
        landmarks_from_labelmap(f, ["apex"])
    with pytest.raises(InputError, match=r"absent\.nii\.gz.*file not found"):
        landmarks_from_labelmap(tmp_path / "absent.nii.gz", ["apex"])
