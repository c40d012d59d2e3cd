"""Bad input through the command line: a clear message naming the file and the problem, a
non-zero exit, and no existing output overwritten or half-written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.run.register import main as register_main

NAMES = ["apex", "bladder_neck", "posterior_median"]
MR_POINTS = np.array([[1.0, 20.0, -30.0], [-2.0, -5.0, 18.0], [0.5, 22.0, 3.0]])
SENTINEL = '{"written": "by an earlier run"}\n'


def _mha(path, spacing: str, values: np.ndarray) -> None:
    header = (f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, values.shape[::-1]))}\n"
              f"ElementType = MET_FLOAT\nElementSpacing = {spacing}\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + values.astype(np.float32).tobytes())


def _image(path, rng, kind: str):
    """Write a bad (or good) image of the given kind to `path` (the suffix may change)."""
    arr = rng.normal(size=(12, 13, 14)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    if kind == "good":
        sitk.WriteImage(img, str(path))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_an_image":
        path.write_text("patient notes, not an image\n")
    elif kind in ("truncated", "corrupt"):
        sitk.WriteImage(img, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else data[:40] + bytes(range(256)) * 4)
    elif kind == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(arr[0]), str(path))
    elif kind == "4d":
        sitk.WriteImage(sitk.JoinSeries([img, img]), str(path))
    elif kind in ("nan", "inf"):
        arr[3, 4, 5] = np.nan if kind == "nan" else np.inf
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    elif kind == "constant":
        sitk.WriteImage(sitk.GetImageFromArray(np.full_like(arr, 5.0)), str(path))
    elif kind in ("zero_spacing", "negative_spacing"):
        path = path.with_name(path.name.replace(".nii.gz", ".mha"))
        _mha(path, "0 1 1" if kind == "zero_spacing" else "1 -0.8 1", arr)
    elif kind == "sheared":
        path = path.with_name(path.name.replace(".nii.gz", ".nrrd"))
        path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 14 13 12\n"
                         b"space directions: (1,0,0) (0.5,1,0) (0,0,1)\nkinds: domain domain domain\n"
                         b"endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n" + arr.astype("<f4").tobytes())
    return path


@pytest.fixture
def pair(tmp_path):
    mr, us = tmp_path / "case1_MR.json", tmp_path / "case1_US.json"
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), mr)
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS + [3.0, -4.0, 5.0]), us)
    out = tmp_path / "out"
    out.mkdir()
    (out / "case1_MR_to_US.json").write_text(SENTINEL)  # an earlier result that must survive
    return mr, us, out


@pytest.mark.parametrize("kind, problem", [
    ("empty", "empty"), ("not_an_image", "not a readable image"), ("truncated", "truncated|not a readable"),
    ("corrupt", "not a readable image"), ("2d", "3D volume"), ("4d", "3D volume"), ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"), ("constant", "constant"), ("zero_spacing", "spacing .* not positive"),
    ("negative_spacing", "spacing .* not positive"), ("sheared", "orthonormal|not a readable image"),
])
def test_bad_image_is_named_and_nothing_is_overwritten(pair, tmp_path, rng, capsys, kind, problem):
    mr, us, out = pair
    bad = _image(tmp_path / "bad_MR.nii.gz", rng, kind)
    good = _image(tmp_path / "us.nii.gz", rng, "good")
    rc = register_main(["--mr", str(mr), "--us", str(us), "-o", str(out), "--mr-image", str(bad),
                        "--us-image", str(good)])
    err = capsys.readouterr().err
    assert rc == 2
    assert bad.name in err
    assert __import__("re").search(problem, err), err
    assert (out / "case1_MR_to_US.json").read_text() == SENTINEL
    assert sorted(p.name for p in out.iterdir()) == ["case1_MR_to_US.json"]


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.update(coordinate_system="RAS"), "coordinate_system must be 'LPS'"),
    (lambda d: d.update(coordinate_system="ijk"), "coordinate_system"),
    (lambda d: d.update(units="cm"), "units must be 'mm'"),
    (lambda d: d["landmarks"].update(apex=["1.0", "x", 3]), "non-numeric"),
    (lambda d: d["landmarks"].pop("bladder_neck") and d["landmarks"].pop("posterior_median"), "3"),
])
def test_bad_landmark_file_is_named(pair, capsys, edit, problem):
    mr, us, out = pair
    doc = json.loads(mr.read_text())
    edit(doc)
    mr.write_text(json.dumps(doc))
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert mr.name in err and problem in err, err
    assert (out / "case1_MR_to_US.json").read_text() == SENTINEL


def test_ras_markups_without_a_coordinate_system_is_refused_not_guessed(pair, tmp_path, capsys):
    _, us, out = pair
    mrk = tmp_path / "case1_MR.mrk.json"
    mrk.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": n, "position": list(p)} for n, p in zip(NAMES, MR_POINTS * [-1, -1, 1])]}]}))
    assert register_main(["--mr", str(mrk), "--us", str(us), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "case1_MR.mrk.json" in err and "coordinateSystem" in err
    fcsv = tmp_path / "case1_MR.fcsv"
    fcsv.write_text("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + "".join(
        f"{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,{n},,\n" for i, (n, p) in enumerate(zip(NAMES, MR_POINTS))))
    assert register_main(["--mr", str(fcsv), "--us", str(us), "-o", str(out)]) == 2
    assert "case1_MR.fcsv" in capsys.readouterr().err


def test_duplicate_landmark_names_are_refused(pair, tmp_path, capsys):
    _, us, out = pair
    mrk = tmp_path / "dup_MR.mrk.json"
    cps = [{"label": n, "position": list(p)} for n, p in zip(["apex", "apex", "posterior_median"], MR_POINTS)]
    mrk.write_text(json.dumps({"markups": [{"coordinateSystem": "LPS", "controlPoints": cps}]}))
    assert register_main(["--mr", str(mrk), "--us", str(us), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dup_MR.mrk.json" in err and "more than once" in err


@pytest.mark.parametrize("points, problem", [
    (np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), "collinear"),
    (np.array([[0.0, 0, 0], [0, 0, 0], [5, 1, 2]]), "coincide"),
])
def test_degenerate_landmarks_are_refused(pair, capsys, points, problem):
    mr, us, out = pair
    write_lmkreg_json(LandmarkSet.from_array(NAMES, points), mr)
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "case1_MR.json" in err and problem in err
    assert (out / "case1_MR_to_US.json").read_text() == SENTINEL


def test_a_case_name_cannot_escape_the_output_folder(pair, tmp_path, capsys):
    mr, us, out = pair
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(out), "--name", "../escaped"]) == 2
    assert "unsafe case id" in capsys.readouterr().err
    assert not (tmp_path / "escaped_MR_to_US.json").exists()


def test_an_output_folder_that_is_a_file_is_named(tmp_path, capsys):
    from lmkreg.run.predict import check_writable
    from lmkreg.errors import ConfigurationError

    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    with pytest.raises(ConfigurationError, match="results"):
        check_writable(blocker / "sub")
    assert blocker.read_text() == "keep me"


def test_mask_on_another_grid_stops_preprocessing_naming_the_mask(tmp_path, capsys):
    from lmkreg.run.plan_and_preprocess import main as plan_main
    from toydata import make_toy_dataset
    from lmkreg.paths import raw_root

    ds = make_toy_dataset(raw_root(), n_cases=5, dataset_id=7)
    case = ds.cases("Tr")[2]
    mask_path = ds.mask_path(case, "MR")
    mask = sitk.ReadImage(str(mask_path))
    mask.SetOrigin(tuple(np.array(mask.GetOrigin()) + [4.0, 0, 0]))
    sitk.WriteImage(mask, str(mask_path))
    assert plan_main(["-d", "7"]) == 2
    err = capsys.readouterr().err
    assert mask_path.name in err and "mask grid differs" in err
