"""lmkreg_import and lmkreg_verify_dataset.

Import: a folder set made here with mixed formats (NRRD / MHA images, Slicer RAS .mrk.json,
.fcsv and lmkreg JSON landmarks, 0/255 masks, 3D and 4D landmark label maps) lands in the
layout with geometry, voxel values and landmark positions unchanged (references computed
here, not by the importer), and verifies clean.  Verify: each kind of broken case gives exit
status 1 and names the offending file; the phantom generator's output verifies clean.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.run.dataset import import_main, verify_main
from lmkreg.dataset.importer import ModalitySource, case_name, import_dataset
from lmkreg.dataset.layout import Dataset, DatasetSpec, open_dataset
from lmkreg.dataset.verify import verify_dataset
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.paths import raw_root
from lmkreg.io.transform_json import write_rigid_transform

NAMES = list(DEFAULT_LANDMARK_NAMES)
RAS = np.array([-1.0, -1.0, 1.0])
SIZE = (16, 16, 16)
GEOMS = {
    "MR": ImageGeometry.create(SIZE, (0.8, 0.9, 1.7), (-10.0, 5.0, -20.0), rotation_direction((12.0, -7.0, 25.0))),
    "US": ImageGeometry.create(SIZE, (0.6, 0.6, 0.75), (4.0, -8.0, 3.0), rotation_direction((-20.0, 9.0, 4.0))),
}
US_BOXES = {"apex": (2, 4, 3, 5, 4, 7), "bladder_neck": (10, 12, 9, 13, 6, 8), "posterior_median": (7, 8, 2, 3, 11, 13)}


def _world(geom, index_zyx):
    """origin + D diag(spacing) (x, y, z), written out independently of ImageGeometry."""
    z, y, x = index_zyx
    d = np.asarray(geom.direction, float).reshape(3, 3)
    return np.asarray(geom.origin_xyz) + d @ (np.asarray(geom.spacing_xyz) * np.array([x, y, z]))


def _box_centre_world(geom, box):
    z0, z1, y0, y1, x0, x1 = box
    return _world(geom, ((z0 + z1) / 2, (y0 + y1) / 2, (x0 + x1) / 2))


def _random_image(geom, rng, dtype=np.float32):
    return geom.make_image((rng.random(geom.shape_zyx) * 100).astype(dtype))


def _sphere_mask(geom, value=1):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in geom.shape_zyx], indexing="ij")
    inside = (zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2 <= 16
    return geom.make_image((inside * value).astype(np.uint8))


def _mr_truth(i):
    """Known MR landmarks of case i (voxel positions well inside the grid), world LPS mm."""
    idx = {"apex": (3.0 + i, 4.0, 5.5), "bladder_neck": (11.0, 10.5 - i, 9.0), "posterior_median": (7.25, 3.0, 12.0)}
    pts = {n: _world(GEOMS["MR"], v) for n, v in idx.items()}
    if i == 2:
        pts["bladder_neck"] = None  # explicitly missing
    return pts


def _labelmap_3d(geom):
    arr = np.zeros(geom.shape_zyx, np.uint8)
    for value, (z0, z1, y0, y1, x0, x1) in zip((1, 2, 3), US_BOXES.values()):
        arr[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = value
    return geom.make_image(arr)


def _labelmap_4d(geom):
    channels = []
    for z0, z1, y0, y1, x0, x1 in US_BOXES.values():
        c = np.zeros(geom.shape_zyx, np.uint8)
        c[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 1
        channels.append(geom.make_image(c))
    return sitk.JoinSeries(channels)


@pytest.fixture
def sources(tmp_path, rng):
    """Three cases P01..P03 in mixed formats and naming styles; returns (folders, source images)."""
    d = {k: tmp_path / "src" / k for k in ("mr", "mr_lmk", "mr_mask", "us", "us_labels")}
    for f in d.values():
        f.mkdir(parents=True)
    originals = {}
    for i, case in enumerate(("P01", "P02", "P03")):
        mr, us = _random_image(GEOMS["MR"], rng), _random_image(GEOMS["US"], rng, np.int16)
        sitk.WriteImage(mr, str(d["mr"] / f"{case}_T2.nrrd"))
        sitk.WriteImage(us, str(d["us"] / f"{case}_US.mha"))
        originals[case] = {"MR": mr, "US": us}
        truth = _mr_truth(i)
        if i == 0:  # Slicer markups in RAS, control points in another order than the dataset's names
            cps = [{"label": n, "position": list(truth[n] * RAS), "positionStatus": "defined"}
                   for n in reversed(NAMES)]
            (d["mr_lmk"] / f"{case}_MR.mrk.json").write_text(json.dumps(
                {"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": "RAS",
                                              "coordinateUnits": "mm", "controlPoints": cps}]}))
        elif i == 1:  # legacy fcsv, LPS header, an extra non-dataset landmark
            rows = [",".join(map(str, [k, *truth[n], 0, 0, 0, 1, 1, 1, 0, n, "", ""])) for k, n in enumerate(NAMES)]
            rows.append("9,1,2,3,0,0,0,1,1,1,0,urethra,,")
            (d["mr_lmk"] / f"{case}-landmarks.fcsv").write_text(
                "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + "\n".join(rows) + "\n")
        else:  # lmkreg JSON with a missing landmark
            write_lmkreg_json(LandmarkSet(truth), d["mr_lmk"] / f"{case}.json")
        if i < 2:  # P03 has no MR mask
            sitk.WriteImage(_sphere_mask(GEOMS["MR"], 255 if i == 0 else 1), str(d["mr_mask"] / f"{case}_mask.nii.gz"))
        labelmap = _labelmap_4d(GEOMS["US"]) if i == 2 else _labelmap_3d(GEOMS["US"])
        sitk.WriteImage(labelmap, str(d["us_labels"] / f"{case}_US_label.nii.gz"))
    (d["mr"] / "README.txt").write_text("not an image")
    return d, originals


def _sources(d):
    return {"MR": ModalitySource(images=d["mr"], landmarks=d["mr_lmk"], masks=d["mr_mask"]),
            "US": ModalitySource(images=d["us"], landmark_labelmaps=d["us_labels"])}


def test_case_name_rule():
    assert case_name("P01_T2.nrrd", "MR") == "P01"
    assert case_name("P01-MR-landmarks.mrk.json", "MR", "landmarks") == "P01"
    assert case_name("P01_US_label.nii.gz", "US") == "P01"
    assert case_name("case_0001_mask.nii.gz", "MR") == "case_0001"  # numbers are never stripped
    assert case_name("MR.nii.gz", "MR") == "MR"  # never stripped to nothing
    assert case_name("notes.txt", "MR") is None
    assert case_name("scan7_site2_MR.nii.gz", "MR", case_pattern=r"scan(?P<case>\d+)") == "7"


def test_import_mixed_formats_then_verify_passes(sources, capsys):
    d, originals = sources
    report = import_dataset(5, "Mixed", _sources(d), NAMES, progress=False)
    assert report.ok and report.imported == ["P01", "P02", "P03"]
    assert any("urethra" in w for w in report.warnings)  # extra fcsv landmark ignored, said so
    assert any("P03" in w and "mask" in w for w in report.warnings)
    assert any(f.name == "README.txt" for f in report.ignored_files)
    ds = open_dataset(5)
    assert ds.name == "Dataset005_Mixed" and ds.spec.modalities == ["MR", "US"] and ds.spec.num_training == 3
    assert ds.cases("Tr") == ["P01", "P02", "P03"]
    for i, case in enumerate(ds.cases("Tr")):
        for m in ("MR", "US"):  # images: same grid, same voxels, now .nii.gz
            got = sitk.ReadImage(str(ds.image_path(case, m)))
            assert ImageGeometry.from_image(got).same_as(GEOMS[m], tolerance_mm=1e-4)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(originals[case][m]))
        mr = read_lmkreg_json(ds.landmarks_path(case, "MR"))
        assert mr.names == NAMES
        for n, p in _mr_truth(i).items():
            if p is None:
                assert mr[n] is None
            else:
                np.testing.assert_allclose(mr[n], p, atol=1e-9, rtol=0)
        us = read_lmkreg_json(ds.landmarks_path(case, "US"))
        for n, box in US_BOXES.items():  # label-map centroids (NIfTI geometry is float32)
            np.testing.assert_allclose(us[n], _box_centre_world(GEOMS["US"], box), atol=2e-4, rtol=0)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.mask_path("P01", "MR"))))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}  # 0/255 became 0/1
    assert not ds.mask_path("P03", "MR").exists()

    result = verify_dataset(ds)
    assert result.ok, result.format()
    assert [p.case for p in result.infos] == ["P03"]  # the explicitly missing landmark
    assert any(p.case == "P03" and "mask" in p.problem for p in result.warnings)
    capsys.readouterr()
    assert verify_main(["-d", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "P01" in out and "P03" in out
    assert verify_main(["-d", "5", "--strict", "--no-progress"]) == 1  # the mask warning fails --strict


def test_import_cli_refuses_incomplete_unsafe_and_existing_cases(sources, capsys):
    d, _ = sources
    base = ["-d", "6", "--name", "Cli", "--images", f"MR={d['mr']}", "--images", f"US={d['us']}",
            "--landmarks", f"MR={d['mr_lmk']}", "--landmark-labelmaps", f"US={d['us_labels']}",
            "--masks", f"MR={d['mr_mask']}", "--no-progress"]
    shutil.copy(d["us"] / "P01_US.mha", d["us"] / "P04_US.mha")  # a US image without an MR image
    assert import_main(base) == 2
    err = capsys.readouterr().err
    assert "P04" in err and "no MR image" in err and "--skip-incomplete" in err
    assert not (raw_root() / "Dataset006_Cli").exists()  # nothing written

    assert import_main(base + ["--skip-incomplete"]) == 0
    out = capsys.readouterr().out
    assert "imported 3 case(s)" in out and "P04" in out
    assert open_dataset(6).cases("Tr") == ["P01", "P02", "P03"]

    assert import_main(base + ["--skip-incomplete"]) == 2  # would overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert import_main(base + ["--skip-incomplete", "--overwrite"]) == 0
    capsys.readouterr()

    (d["us"] / "P04_US.mha").unlink()
    shutil.copy(d["us"] / "P01_US.mha", d["us"] / "bad case_US.mha")
    assert import_main(base + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "bad case_US.mha" in err and "unsafe case id" in err

    (d["us"] / "bad case_US.mha").unlink()
    shutil.copy(d["us"] / "P01_US.mha", d["us"] / "p01.mha")  # same case, other spelling
    assert import_main(base + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "P01_US.mha" in err and "p01.mha" in err

    (d["us"] / "p01.mha").unlink()
    assert import_main(base + ["--overwrite", "--split", "Ts"]) == 2  # the cases are already training cases
    assert "one split only" in capsys.readouterr().err


def test_import_reports_an_unreadable_case_and_imports_the_others(sources, capsys):
    d, _ = sources
    (d["mr_lmk"] / "P02-landmarks.fcsv").write_text("# CoordinateSystem = LPS\n1,a,b,c,0,0,0,1,1,1,0,apex,,\n")
    report = import_dataset(8, "Partial", _sources(d), NAMES, progress=False)
    assert not report.ok and report.imported == ["P01", "P03"]
    assert "P02-landmarks.fcsv" in report.failed["P02"] and "non-numeric" in report.failed["P02"]
    ds = open_dataset(8)
    assert ds.cases("Tr") == ["P01", "P03"] and ds.spec.num_training == 2
    assert not ds.image_path("P02", "MR").exists()  # nothing of the failed case was written


def test_import_with_case_regex(tmp_path, rng):
    folder, lmk = tmp_path / "img", tmp_path / "lmk"
    folder.mkdir()
    lmk.mkdir()
    for i in (1, 2):
        sitk.WriteImage(_random_image(GEOMS["MR"], rng), str(folder / f"study{i}_series4_acq.nii.gz"))
        write_lmkreg_json(LandmarkSet(_mr_truth(0)), lmk / f"annot_study{i}.json")
    report = import_dataset(11, "Regex", {"MR": ModalitySource(images=folder, landmarks=lmk)}, NAMES,
                            case_pattern=r"study(?P<case>\d+)", progress=False)
    assert report.imported == ["1", "2"]
    assert verify_dataset(open_dataset(11)).ok


# ---- verify: one broken case at a time ------------------------------------------------------------

def _write_case(ds, case, rng, split="Tr"):
    for m, geom in GEOMS.items():
        sitk.WriteImage(_random_image(geom, rng), str(ds.image_path(case, m, split)))
        sitk.WriteImage(_sphere_mask(geom), str(ds.mask_path(case, m, split)))
        pts = {n: _world(geom, (4.0 + k, 8.0, 11.0 - k)) for k, n in enumerate(NAMES)}
        write_lmkreg_json(LandmarkSet(pts), ds.landmarks_path(case, m, split))
    write_rigid_transform(RigidTransform(np.eye(3), np.array([1.0, 2.0, 3.0])), ds.transform_path(case, split))


@pytest.fixture
def good_dataset(rng):
    spec = DatasetSpec(name="Dataset003_Check", modalities=["MR", "US"], landmarks=NAMES, num_training=2)
    ds = Dataset.create(raw_root() / spec.name, spec)
    for f in ("imagesTr", "masksTr", "landmarksTr", "transformsTr"):
        (ds.folder / f).mkdir()
    for case in ("c1", "c2"):
        _write_case(ds, case, rng)
    return ds


def _nifti(path, array, geom=GEOMS["MR"]):
    sitk.WriteImage(geom.make_image(array), str(path))


def _truncate(ds, rng):
    p = ds.image_path("c2", "MR")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p, "not a readable image"


def _corrupt(ds, rng):
    p = ds.image_path("c2", "US")
    p.write_bytes(b"\x00garbage" * 50)
    return p, "not a readable image"


def _nan(ds, rng):
    arr = rng.random(GEOMS["MR"].shape_zyx).astype(np.float32)
    arr[3, 4, 5] = np.nan
    _nifti(ds.image_path("c2", "MR"), arr)
    return ds.image_path("c2", "MR"), "NaN"


def _constant(ds, rng):
    _nifti(ds.image_path("c2", "MR"), np.full(GEOMS["MR"].shape_zyx, 3.0, np.float32))
    return ds.image_path("c2", "MR"), "constant"


def _two_d(ds, rng):
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((16, 16)).astype(np.float32)), str(ds.image_path("c2", "US")))
    return ds.image_path("c2", "US"), "3D"


def _mask_geometry(ds, rng):
    g = GEOMS["MR"]
    shifted = ImageGeometry.create(g.shape_zyx, g.spacing_xyz, np.add(g.origin_xyz, [0.0, 0.0, 2.0]), g.direction)
    sitk.WriteImage(_sphere_mask(shifted), str(ds.mask_path("c2", "MR")))
    return ds.mask_path("c2", "MR"), "grid"


def _mask_not_binary(ds, rng):
    _nifti(ds.mask_path("c2", "MR"), rng.integers(0, 3, GEOMS["MR"].shape_zyx).astype(np.uint8))
    return ds.mask_path("c2", "MR"), "not binary"


def _no_landmarks(ds, rng):
    ds.landmarks_path("c2", "US").unlink()
    return ds.landmarks_path("c2", "US"), "no US landmark file"


def _outside(ds, rng):
    p = ds.landmarks_path("c2", "MR")
    lms = read_lmkreg_json(p)
    lms.points["apex"] = _world(GEOMS["MR"], (8.0, 8.0, 17.5))  # x index 17.5 > 15.5
    write_lmkreg_json(lms, p)
    return p, "outside the image"


def _name_absent(ds, rng):
    p = ds.landmarks_path("c1", "US")
    lms = read_lmkreg_json(p)
    write_lmkreg_json(LandmarkSet({"apex": lms["apex"], "urethra": lms["posterior_median"],
                                   "posterior_median": lms["posterior_median"]}), p)
    return p, "['bladder_neck'] absent"


def _unsafe_id(ds, rng):
    bad = ds.folder / "imagesTr" / "-c3_MR.nii.gz"
    shutil.copy(ds.image_path("c1", "MR"), bad)
    return bad, "unsafe case id"


def _duplicate_by_case(ds, rng):
    dup = ds.folder / "imagesTr" / "C1_MR.nii.gz"
    shutil.copy(ds.image_path("c1", "MR"), dup)
    return dup, "duplicate case id"


def _duplicate_by_ending(ds, rng):
    dup = ds.folder / "imagesTr" / "c1_MR.nrrd"  # the same case again, in another format
    sitk.WriteImage(sitk.ReadImage(str(ds.image_path("c1", "MR"))), str(dup))
    return dup, "file ending '.nrrd'"


def _in_both_splits(ds, rng):
    for f in ("imagesTs", "masksTs", "landmarksTs", "transformsTs"):
        (ds.folder / f).mkdir()
    _write_case(ds, "c2", rng, split="Ts")
    return ds.image_path("c2", "MR", "Ts"), "both splits"


def _bad_transform(ds, rng):
    p = ds.transform_path("c1")
    p.write_text('{"type": "affine"}')
    return p, "rigid"


BROKEN = {f.__name__.lstrip("_"): f for f in (
    _truncate, _corrupt, _nan, _constant, _two_d, _mask_geometry, _mask_not_binary, _no_landmarks, _outside,
    _name_absent, _unsafe_id, _duplicate_by_case, _duplicate_by_ending, _in_both_splits, _bad_transform)}


def test_good_dataset_verifies_clean(good_dataset, capsys):
    report = verify_dataset(good_dataset)
    assert report.ok and not report.warnings and not report.infos, report.format()
    assert [c.case for c in report.cases] == ["c1", "c2"] and all(c.transform for c in report.cases)
    assert verify_main(["-d", "3", "--no-progress"]) == 0


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_broken_case_fails_verification_naming_the_file(good_dataset, rng, capsys, kind):
    offending, keyword = BROKEN[kind](good_dataset, rng)
    capsys.readouterr()
    assert verify_main(["-d", "3", "--no-progress"]) == 1
    out = capsys.readouterr().out
    error_lines = [line for line in out.splitlines() if line.strip().startswith("ERROR")]
    assert any(str(offending) in line and keyword in line for line in error_lines), out
    assert "FAILED" in out


def test_stray_files_and_extra_names_are_warnings_not_errors(good_dataset, capsys):
    ds = good_dataset
    (ds.folder / "imagesTr" / "notes.txt").write_text("x")
    (ds.folder / "labelsTr").mkdir()
    p = ds.landmarks_path("c1", "MR")
    lms = read_lmkreg_json(p)
    lms.points["urethra"] = lms["apex"]
    write_lmkreg_json(lms, p)
    report = verify_dataset(ds)
    assert report.ok
    flagged = {(w.file.name, w.severity) for w in report.warnings}
    assert {("notes.txt", "warning"), ("labelsTr", "warning"), (p.name, "warning")} <= flagged
    assert verify_main(["-d", "3", "--no-progress"]) == 0


def test_phantom_dataset_verifies_clean(capsys):
    from lmkreg.phantoms.generator import generate_dataset

    folder = generate_dataset(9, 2, 0, preset="tiny", workers=1, progress=False)
    assert (folder / "phantom_cases.json").is_file()  # the generator's extra file is tolerated
    report = verify_dataset(Dataset(folder))
    assert report.ok and not report.warnings, report.format()
    assert len(report.cases) == 2
    assert verify_main(["-d", "9", "--no-progress"]) == 0
    assert "OK:" in capsys.readouterr().out


def test_verify_cli_unknown_dataset_exits_2(capsys):
    assert verify_main(["-d", "42"]) == 2
    assert "no dataset with id 42" in capsys.readouterr().err


def test_import_fails_a_case_whose_landmark_file_lacks_a_name(sources):
    d, _ = sources
    report = import_dataset(12, "Names", {"MR": _sources(d)["MR"]}, ["apex", "urethra"], progress=False)
    assert report.imported == ["P02"]  # only the fcsv has a 'urethra' point
    assert sorted(report.failed) == ["P01", "P03"]
    assert "P01_MR.mrk.json" in report.failed["P01"] and "urethra" in report.failed["P01"]
    assert "FAILED 2 case(s)" in report.format()


def test_import_warns_about_landmarks_outside_the_image_and_verify_fails(tmp_path, rng, capsys):
    img, lmk = tmp_path / "img", tmp_path / "lmk"
    img.mkdir()
    lmk.mkdir()
    sitk.WriteImage(_random_image(GEOMS["MR"], rng), str(img / "A1.nii.gz"))
    pts = _mr_truth(0)
    pts["apex"] = _world(GEOMS["MR"], (8.0, -3.0, 8.0))  # y index -3: outside the grid
    write_lmkreg_json(LandmarkSet(pts), lmk / "A1.json")
    report = import_dataset(13, "Outside", {"MR": ModalitySource(images=img, landmarks=lmk)}, NAMES, progress=False)
    assert report.imported == ["A1"]
    assert any("A1.json" in w and "['apex']" in w and "outside" in w for w in report.warnings)
    assert verify_main(["-d", "13", "--no-progress"]) == 1
    assert "A1_MR.json" in capsys.readouterr().out
