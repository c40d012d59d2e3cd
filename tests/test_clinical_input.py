"""Clinical data as it arrives (issue 15): DICOM series, the team's own landmark names and folder
layouts, shared output folders, safe plans.json limits and the rough edges of the commands."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomdata import REALDATA, write_dicom_series
from lmkreg.errors import ConfigurationError, InputError
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.dicom import find_series, read_dicom_series
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.io.transform_json import read_rigid_transform

NAMES = ["apex", "bladder_neck", "posterior_median"]
needs_real = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real DICOM examination not found at {REALDATA} "
                                                             f"(shared/realdata beside the repository)")


def _oblique_image(seed: int = 0, shape_zyx=(7, 12, 14), spacing=(0.8, 0.9, 2.5),
                   angles=(20.0, -12.0, 33.0), origin=(12.5, -40.0, 31.0)) -> sitk.Image:
    geom = ImageGeometry.create(shape_zyx, spacing, np.array(origin), rotation_direction(angles))
    arr = np.random.default_rng(seed).integers(0, 1000, geom.shape_zyx).astype(np.int16)
    return geom.make_image(arr)


def _sitk_series(folder: Path, uid=None) -> sitk.Image:
    """The independent reference: SimpleITK's own series reader, as its documentation shows it."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), uid) if uid else reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()


def _same_geometry(a: sitk.Image, b: sitk.Image, atol=1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# ---- DICOM reading ------------------------------------------------------------------------------

def test_oblique_dicom_series_reads_with_the_written_geometry(tmp_path):
    image = _oblique_image()
    write_dicom_series(image, tmp_path / "s", "1.2.826.0.1.3680043.2.1125.7.1")  # file names shuffled
    got = read_dicom_series(tmp_path / "s")
    _same_geometry(got, image)  # slice order, spacing from positions, oblique direction
    _same_geometry(got, _sitk_series(tmp_path / "s"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(image))
    # a voxel's world point is the one of the image that was written
    np.testing.assert_allclose(got.TransformIndexToPhysicalPoint((3, 5, 6)),
                               image.TransformIndexToPhysicalPoint((3, 5, 6)), atol=1e-4)


def test_folder_with_two_series_is_chosen_by_uid_or_description(tmp_path):
    a, b = _oblique_image(1), _oblique_image(2, shape_zyx=(5, 10, 9), angles=(0, 0, 0))
    write_dicom_series(a, tmp_path / "exam", "1.2.3.100", description="T2 TSE TRA")
    write_dicom_series(b, tmp_path / "exam", "1.2.3.200", description="ADC")
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path / "exam")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "1.2.3.100" in msg and "T2 TSE TRA" in msg and "ADC" in msg and "--series" in msg
    _same_geometry(read_dicom_series(tmp_path / "exam", "1.2.3.200"), b)
    _same_geometry(read_dicom_series(tmp_path / "exam", "t2 tse tra"), a)
    with pytest.raises(InputError, match="matches no series.*1.2.3.100"):
        read_dicom_series(tmp_path / "exam", "DWI")


def test_series_with_a_missing_slice_is_refused(tmp_path):
    write_dicom_series(_oblique_image(), tmp_path / "s", "1.2.3.9", skip_slice=3)
    with pytest.raises(InputError, match="not evenly spaced"):
        read_dicom_series(tmp_path / "s")


def test_folder_without_images_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    from lmkreg.io.inputs import find_input_images
    with pytest.raises(InputError, match=r"no image file.*no DICOM series.*2 file\(s\) \(notes.txt, report.pdf\)"):
        find_input_images(tmp_path)


@needs_real
def test_real_examination_reads_like_simpleitk_series_reader():
    folder = REALDATA / "t2_axial_3mm"
    got = read_dicom_series(folder)
    ref = _sitk_series(folder)
    _same_geometry(got, ref, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(ref))
    assert got.GetSize() == (320, 320, 40)
    np.testing.assert_allclose(got.GetSpacing(), (0.5, 0.5, 3.0), atol=1e-6)  # SOURCE.txt
    # slice spacing really is the distance of consecutive ImagePositionPatient along the normal
    normal = np.asarray(got.GetDirection()).reshape(3, 3)[:, 2]
    reader = sitk.ImageFileReader()
    z = []
    for f in find_series(folder)[0].files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        z.append(np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")]) @ normal)
    np.testing.assert_allclose(np.diff(np.sort(z)), got.GetSpacing()[2], atol=1e-3)


# ---- import: DICOM, name maps, shared folders ------------------------------------------------------

def _lmk_inside(image: sitk.Image, labels=("Apex", "BN", "PM", "F-1")) -> LandmarkSet:
    size = np.array(image.GetSize())
    idx = [size * f for f in ((0.3, 0.4, 0.5), (0.6, 0.5, 0.4), (0.5, 0.7, 0.6), (0.2, 0.2, 0.2))]
    return LandmarkSet({lab: np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, i))))
                        for lab, i in zip(labels, idx)})


def _write_mrk(landmarks: LandmarkSet, path: Path) -> None:
    from lmkreg.io.landmark_files import write_landmarks
    write_landmarks(landmarks, path)


def test_import_dicom_cases_with_slicer_names_mapped(tmp_path):
    from lmkreg.run.dataset import import_main
    from lmkreg.dataset.layout import open_dataset

    images, lmks = tmp_path / "mr", tmp_path / "lmk"
    written = {}
    for k, case in enumerate(("P001", "P002")):
        written[case] = _oblique_image(k)
        write_dicom_series(written[case], images / case, f"1.2.3.{k + 1}")
        _write_mrk(_lmk_inside(written[case]), lmks / f"{case}.mrk.json")
    argv = ["-d", "41", "--name", "Clinic", "--images", f"MR={images}", "--landmarks", f"MR={lmks}", "--no-progress",
            "--landmark-map", "apex=apex", "bn=bladder_neck", "PM=posterior_median"]
    assert import_main(argv) == 0
    ds = open_dataset(41)
    assert ds.cases("Tr") == ["P001", "P002"]
    for case, image in written.items():
        got = sitk.ReadImage(str(ds.image_path(case, "MR")))
        _same_geometry(got, image)
        lm = read_lmkreg_json(ds.landmarks_path(case, "MR"))
        assert lm.names == NAMES  # F-1 ignored
        np.testing.assert_allclose(lm["bladder_neck"], _lmk_inside(image)["BN"], atol=1e-6)


def test_import_without_a_map_refuses_and_names_the_labels(tmp_path, capsys):
    from lmkreg.run.dataset import import_main

    write_dicom_series(_oblique_image(), tmp_path / "mr" / "P001", "1.2.3.1")
    _write_mrk(_lmk_inside(_oblique_image()), tmp_path / "lmk" / "P001.mrk.json")
    assert import_main(["-d", "42", "--name", "X", "--images", f"MR={tmp_path / 'mr'}", "--landmarks",
                        f"MR={tmp_path / 'lmk'}", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "not found" in out and "BN" in out


def test_import_one_folder_holding_both_modalities(tmp_path):
    """lmkreg's own imagesTs layout: CASE_MR and CASE_US files side by side."""
    from lmkreg.dataset.importer import ModalitySource, import_dataset

    both, lmk = tmp_path / "images", tmp_path / "landmarks"
    for case in ("c1", "c2"):
        for m, seed in (("MR", 0), ("US", 5)):
            img = _oblique_image(seed)
            sitk.WriteImage(img, str(both / f"{case}_{m}.nii.gz")) if both.is_dir() else (
                both.mkdir(), sitk.WriteImage(img, str(both / f"{case}_{m}.nii.gz")))
            lm = _lmk_inside(img, labels=NAMES)
            lmk.mkdir(exist_ok=True)
            write_lmkreg_json(lm, lmk / f"{case}_{m}.json")
    report = import_dataset(43, "Both", {m: ModalitySource(both, lmk) for m in ("MR", "US")}, progress=False)
    assert sorted(report.imported) == ["c1", "c2"] and not report.warnings


def test_truly_duplicated_case_is_reported_once_with_the_right_reason(tmp_path):
    from lmkreg.dataset.importer import ModalitySource, import_dataset

    both = tmp_path / "images"
    both.mkdir()
    img = _oblique_image()
    for name in ("c1_MR.nii.gz", "c1_MR_image.nrrd", "c1_US.nii.gz"):
        sitk.WriteImage(img, str(both / name))
    with pytest.raises(InputError) as err:
        import_dataset(44, "Dup", {m: ModalitySource(both, both) for m in ("MR", "US")}, progress=False)
    msg = str(err.value)
    assert "c1_MR.nii.gz, c1_MR_image.nrrd" in msg and "upper/lower case" not in msg
    assert msg.count("all map to case") == 1


# ---- register: only the dataset's landmark names -------------------------------------------------

def test_register_ignores_stray_slicer_points_and_maps_names(tmp_path, capsys):
    from scipy.spatial.transform import Rotation

    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.run.register import main as register_main

    t = RigidTransform(Rotation.from_euler("xyz", [8.0, -5.0, 6.0], degrees=True).as_matrix(), np.array([3.0, -2, 1]))
    mr = np.array([[1.0, 20.0, -30.0], [-2.0, -5.0, 18.0], [0.5, 22.0, 3.0]])
    us = t.apply(mr)
    stray_mr, stray_us = np.array([40.0, -30.0, 10.0]), np.array([-25.0, 35.0, -20.0])  # F-1: unrelated clicks
    _write_mrk(LandmarkSet({"Apex": mr[0], "BN": mr[1], "PM": mr[2], "F-1": stray_mr}), tmp_path / "c_MR.mrk.json")
    _write_mrk(LandmarkSet({"apex": us[0], "Bladder_Neck": us[1], "pm": us[2], "F-1": stray_us}),
               tmp_path / "c_US.mrk.json")
    out = tmp_path / "out"
    assert register_main(["--mr", str(tmp_path / "c_MR.mrk.json"), "--us", str(tmp_path / "c_US.mrk.json"),
                          "-o", str(out), "--landmark-map", "BN=bladder_neck", "pm=posterior_median"]) == 0
    printed = capsys.readouterr().out
    assert "landmarks used: apex, bladder_neck, posterior_median; ignored: F-1" in printed
    got = read_rigid_transform(out / "c_MR_to_US.json")
    np.testing.assert_allclose(got.matrix(), t.matrix(), atol=1e-9)
    doc = json.loads((out / "c_MR_to_US.json").read_text())
    assert doc["landmarks_used"] == NAMES
    # without the map the labels do not match and the command says how to fix it
    assert register_main(["--mr", str(tmp_path / "c_MR.mrk.json"), "--us", str(tmp_path / "c_US.mrk.json"),
                          "-o", str(tmp_path / "o2")]) == 2
    assert "--landmark-map" in capsys.readouterr().err


# ---- shared use: permissions and other tools' files ----------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_and_checkpoints_follow_the_umask(tmp_path, umask, mode):
    import torch

    from lmkreg.io.atomic import atomic_write_json
    from lmkreg.io.images import write_image
    from lmkreg.training.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        write_image(_oblique_image(), tmp_path / "b.nii.gz")
        save_checkpoint({"network": {"w": torch.zeros(2)}}, tmp_path / "c.pth")
    finally:
        os.umask(old)
    for name in ("a.json", "b.nii.gz", "c.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_files_lmkreg_did_not_write_are_recognised(tmp_path):
    from lmkreg.io.ownership import written_by_lmkreg

    write_lmkreg_json(LandmarkSet({"apex": np.zeros(3)}), tmp_path / "ours.json")
    _write_mrk(LandmarkSet({"apex": np.zeros(3)}), tmp_path / "ours.mrk.json")
    (tmp_path / "sidecar.json").write_text(json.dumps({"Modality": "MR", "SeriesDescription": "t2"}))
    slicer = json.loads((tmp_path / "ours.mrk.json").read_text())
    slicer["markups"][0]["display"] = {"visibility": True}  # as 3D Slicer saves it
    (tmp_path / "slicer.mrk.json").write_text(json.dumps(slicer))
    assert written_by_lmkreg(tmp_path / "ours.json") and written_by_lmkreg(tmp_path / "ours.mrk.json")
    assert not written_by_lmkreg(tmp_path / "sidecar.json") and not written_by_lmkreg(tmp_path / "slicer.mrk.json")


# ---- plans.json bounds ---------------------------------------------------------------------------

@pytest.mark.parametrize("edit, key, words", [
    (lambda c: c.update(input_size_zyx=[8192, 8192, 8192]), "input_size_zyx", "GB"),
    (lambda c: c["network"].update(features_per_stage=[1000000] * len(c["network"]["features_per_stage"])),
     "features_per_stage", "at most"),
    (lambda c: c.update(batch_size=1000000), "batch_size", "at most"),
])
def test_plans_with_impossible_sizes_are_refused_naming_the_key(tmp_path, edit, key, words):
    from lmkreg.config.plans import Plans
    from toydata import planned_toy_mr_dataset

    env, ds, pre = planned_toy_mr_dataset(tmp_path, n_cases=5, dataset_id=45)
    doc = json.loads((pre / "plans.json").read_text())
    edit(doc["configurations"]["MR"])
    (tmp_path / "plans.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError) as err:
        Plans.load(tmp_path / "plans.json")
    assert key in str(err.value) and words in str(err.value)
    assert Plans.load(pre / "plans.json")  # the planned file itself passes


# ---- predict and evaluate with a phantom-trained tiny model ----------------------------------------

@pytest.fixture(scope="module")
def phantom_model(tmp_path_factory):
    """Tiny MR phantoms (4 cases) and a LandmarkTrainer trained for one iteration on all of them:
    enough for files to go through every stage, not for plausible landmarks."""
    from lmkreg.run.train import model_folder, train
    from toydata import folders_under, planned_phantoms

    with folders_under(tmp_path_factory.mktemp("clinical_model")) as env:
        planned_phantoms(46, 4, 0, seed=4, num_folds=2)
        train("46", "MR", "all", num_epochs=1, iterations_per_epoch=1, num_workers=0, progress_bar=False)
        folder = model_folder("Dataset046_Phantom", "LandmarkTrainer", "MR")
    return env, folder


@pytest.fixture
def model(phantom_model, monkeypatch):
    from toydata import use_folders

    env, folder = phantom_model
    use_folders(monkeypatch, env)
    return folder


def _predict(inp, out, *extra) -> int:
    from lmkreg.run.predict import main as predict_main
    # no -tr: the only trained MR model is used
    return predict_main(["-i", str(inp), "-o", str(out), "-d", "46", "-m", "MR", "--no-optimize", "--no-progress",
                         "--no-tta", *extra])  # the expected points are the plain network output


def _expected_world_points(model_folder: Path, image: sitk.Image) -> np.ndarray:
    """Landmarks recomputed from the network output with SimpleITK's index -> world mapping of the
    predictor's grid (independent of the predictor's own affine arithmetic)."""
    import torch

    from lmkreg.inference.predictor import LandmarkPredictor

    predictor = LandmarkPredictor(model_folder, optimize=False)
    array, grid = predictor.preprocess(image)
    with torch.inference_mode():
        mm, _ = predictor.trainer.decode(predictor.networks[0](torch.from_numpy(array[None])).float(),
                                         list(predictor.conf.spacing_zyx))
    vox_zyx = mm[0].double().numpy() / np.asarray(predictor.conf.spacing_zyx)
    grid_image = grid.make_image(np.zeros(grid.shape_zyx, np.uint8))
    return np.array([grid_image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, v[::-1])))
                     for v in vox_zyx])


def _inside(image: sitk.Image, points: np.ndarray) -> bool:
    size = np.array(image.GetSize())
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points])
    return bool(np.all((idx >= -0.5) & (idx <= size - 0.5)))


@needs_real
def test_predict_real_dicom_examination_end_to_end(model, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(REALDATA, out) == 0  # a folder whose subfolders each hold one series
    assert "2 predicted" in capsys.readouterr().out
    for case in ("t2_axial_3mm", "t2_needle_guidance"):
        got = read_lmkreg_json(out / f"{case}.json")
        image = _sitk_series(REALDATA / case)
        points = got.to_array(NAMES)
        assert _inside(image, points), (case, points)
        np.testing.assert_allclose(points, _expected_world_points(model, image), atol=1e-3)
        assert (out / f"{case}.mrk.json").is_file()


def test_predict_a_folder_that_is_one_oblique_series(model, tmp_path, capsys):
    image = _oblique_image(3, shape_zyx=(12, 40, 44), spacing=(1.0, 1.0, 2.0), angles=(10.0, -6.0, 15.0))
    series = tmp_path / "Patient_7"
    write_dicom_series(image, series, "1.2.3.77")
    assert _predict(series, tmp_path / "out") == 0  # today: '0 predicted' and exit 0
    got = read_lmkreg_json(tmp_path / "out" / "Patient_7.json").to_array(NAMES)
    np.testing.assert_allclose(got, _expected_world_points(model, image), atol=1e-3)
    assert _inside(image, got)


def test_predict_input_edges(model, tmp_path, capsys):
    """Empty folder, a file given to -i, macOS ._ files, a damaged image named once."""
    from lmkreg.io.images import write_image

    (tmp_path / "empty").mkdir()
    assert _predict(tmp_path / "empty", tmp_path / "o0") == 2
    assert "it is empty" in capsys.readouterr().err
    inp = tmp_path / "in"
    inp.mkdir()
    write_image(_oblique_image(3, shape_zyx=(12, 40, 44)), inp / "a.nii.gz")
    (inp / "._a.nii.gz").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # AppleDouble junk
    assert _predict(inp / "a.nii.gz", tmp_path / "o1") == 0  # -i given a file
    assert (tmp_path / "o1" / "a.json").is_file()
    (inp / "b.nii.gz").write_bytes(b"not an image")
    assert _predict(inp, tmp_path / "o2") == 1
    captured = capsys.readouterr()
    assert "._a" not in captured.out + captured.err
    bad = str(inp / "b.nii.gz")
    lines = [line for line in captured.err.splitlines() if "b.nii.gz" in line]
    assert lines and all(line.count(bad) == 1 for line in lines), lines  # today: 'error: X: X: ...'
    assert f"{bad}: {bad}" not in captured.err


def test_predict_never_replaces_a_dcm2niix_sidecar(model, tmp_path, capsys):
    from lmkreg.io.images import write_image

    folder = tmp_path / "nifti"
    folder.mkdir()
    write_image(_oblique_image(3, shape_zyx=(12, 40, 44)), folder / "T2.nii.gz")
    sidecar = json.dumps({"Modality": "MR", "SeriesDescription": "t2_tse_tra", "EchoTime": 0.1})
    (folder / "T2.json").write_text(sidecar)
    assert _predict(folder, folder) == 2
    assert str(folder / "T2.json") in capsys.readouterr().err
    assert (folder / "T2.json").read_text() == sidecar and not (folder / "T2.mrk.json").exists()
    assert _predict(folder, folder, "--overwrite") == 0
    assert read_lmkreg_json(folder / "T2.json").names == NAMES
    assert stat.S_IMODE((folder / "T2.json").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_predict_lists_trained_models_when_there_are_several(model, tmp_path, capsys):
    other = model.parent / "HeatmapMatchingTrainer__MR"
    other.mkdir()
    try:
        assert _predict(tmp_path, tmp_path / "o") == 2
        err = capsys.readouterr().err
        assert "HeatmapMatchingTrainer, LandmarkTrainer" in err and "-tr/--trainer" in err
    finally:
        other.rmdir()


def test_evaluate_into_an_existing_file_fails_before_the_work(model, tmp_path, capsys):
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.run.evaluate import main as evaluate_main

    ds = open_dataset(46)
    case = ds.cases("Tr")[0]
    preds = {m: tmp_path / m for m in ("MR", "US")}
    for m, folder in preds.items():
        folder.mkdir()
        shutil.copy(ds.landmarks_path(case, m), folder / f"{case}_{m}.json")
    report = tmp_path / "report.md"
    report.write_text("mine")
    code = evaluate_main(["-d", "46", "--mr-pred", str(preds["MR"]), "--us-pred", str(preds["US"]), "-o", str(report),
                          "--split", "Tr", "--cases", case, "--qc", "0", "--workers", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{report}: exists and is not a folder" in err and "case(s) evaluated" not in err
    assert report.read_text() == "mine"
