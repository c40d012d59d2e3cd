"""Prediction on tiny phantoms with briefly trained models: the same preprocessing as training,
the same answer as the trainer's own validation, independence of how the volume is stored,
fold ensembling, and folder prediction (skip, overwrite, shards, bad files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.config.plans import Plans
from lmkreg.config.splits import load_or_create_splits
from lmkreg.dataset.layout import open_dataset
from lmkreg.run.predict import main as predict_main
from lmkreg.run.predict import predict_folder
from lmkreg.inference.predictor import LandmarkPredictor
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.paths import preprocessed_folder
from lmkreg.preprocessing.storage import load_array
from lmkreg.run.train import model_folder, train
from lmkreg.io.transform_json import read_rigid_transform
from toydata import folders_under, planned_phantoms, use_folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny phantoms (8 training, 3 test cases), LandmarkTrainer folds 0 and 1 for MR and US."""
    with folders_under(tmp_path_factory.mktemp("inference_data")) as env:
        planned_phantoms(2, 8, 3, seed=21)
        for modality in ("MR", "US"):
            for fold in (0, 1):
                train("2", modality, fold, num_epochs=2, iterations_per_epoch=8, num_workers=0, progress_bar=False)
        folders = {m: model_folder("Dataset002_Phantom", "LandmarkTrainer", m) for m in ("MR", "US")}
    return env, folders


@pytest.fixture
def env(trained, monkeypatch):
    use_folders(monkeypatch, trained[0])
    return trained[1]


@pytest.mark.parametrize("modality", ["MR", "US"])
def test_prediction_preprocessing_is_the_training_preprocessing(env, modality):
    ds = open_dataset(2)
    pre = preprocessed_folder(ds)
    conf = Plans.load(pre / "plans.json").configuration(modality)
    predictor = LandmarkPredictor(env[modality], folds=["0"])
    for case in ds.cases("Tr", modality)[:3]:
        array, grid = predictor.preprocess(read_image(ds.image_path(case, modality)))
        stored = load_array(pre / conf.data_identifier / f"{case}.b2nd")
        meta = json.loads((pre / conf.data_identifier / f"{case}.json").read_text())
        np.testing.assert_allclose(array, stored, atol=1e-5)
        np.testing.assert_allclose(grid.index_to_world_affine(), meta["index_to_world"], atol=1e-9)


@pytest.mark.parametrize("modality", ["MR", "US"])
def test_prediction_equals_the_trainers_validation_prediction(env, modality):
    ds = open_dataset(2)
    val = load_or_create_splits(preprocessed_folder(ds), ds.cases("Tr"))[0]["val"]
    predictor = LandmarkPredictor(env[modality], folds=["0"])
    for case in val:
        pred = predictor.predict(read_image(ds.image_path(case, modality)))
        expected = read_lmkreg_json(env[modality] / "fold_0" / "validation" / f"{case}.json")
        np.testing.assert_allclose(pred.landmarks.to_array(expected.names), expected.to_array(), atol=1e-3)


def test_prediction_does_not_depend_on_voxel_storage_order(env):
    """The same physical volume stored RAI instead of LPS (axes flipped) gives the same world points."""
    ds = open_dataset(2)
    image = read_image(ds.image_path(ds.cases("Ts", "MR")[0], "MR", "Ts"))
    flipped = sitk.DICOMOrient(image, "RAI")
    assert not np.allclose(np.array(flipped.GetDirection()), np.array(image.GetDirection()))
    predictor = LandmarkPredictor(env["MR"], folds=["0"])
    a = predictor.predict(image).landmarks.to_array()
    b = predictor.predict(flipped).landmarks.to_array()
    np.testing.assert_allclose(b, a, atol=1e-3)


def test_fold_ensemble_is_the_mean_with_rms_disagreement(env):
    ds = open_dataset(2)
    image = read_image(ds.image_path(ds.cases("Ts", "US")[0], "US", "Ts"))
    single = [LandmarkPredictor(env["US"], folds=[f]).predict(image).landmarks.to_array() for f in ("0", "1")]
    both = LandmarkPredictor(env["US"], folds=["0", "1"]).predict(image)
    mean = (single[0] + single[1]) / 2
    np.testing.assert_allclose(both.landmarks.to_array(), mean, atol=1e-6)
    rms = np.linalg.norm(single[0] - single[1], axis=1) / 2  # both folds are half the gap from the mean
    np.testing.assert_allclose([both.fold_disagreement_mm[n] for n in both.landmarks.names], rms, atol=1e-6)
    assert all(np.isfinite(v) and v > 0 for v in both.spread_mm.values())


def test_mirror_tta_averages_the_mirrored_prediction(env):
    ds = open_dataset(2)
    image = read_image(ds.image_path(ds.cases("Ts", "MR")[0], "MR", "Ts"))
    plain = LandmarkPredictor(env["MR"], folds=["0"]).predict(image)
    tta = LandmarkPredictor(env["MR"], folds=["0"], mirror_tta=True).predict(image)
    # the mirrored pass is a second model: its disagreement with the plain pass is half their gap
    gap = 2 * np.array([tta.fold_disagreement_mm[n] for n in tta.landmarks.names])
    assert np.all(np.isfinite(gap))
    moved = np.linalg.norm(tta.landmarks.to_array() - plain.landmarks.to_array(), axis=1)
    np.testing.assert_allclose(moved, gap / 2, atol=1e-6)


def _test_folder(tmp_path: Path, modality: str = "US") -> Path:
    ds = open_dataset(2)
    folder = tmp_path / "in"
    folder.mkdir()
    for case in ds.cases("Ts", modality):
        src = ds.image_path(case, modality, "Ts")
        (folder / src.name).write_bytes(src.read_bytes())
    return folder


def test_predict_folder_writes_slicer_and_lmkreg_files_and_skips_done_cases(env, tmp_path, capsys):
    from lmkreg.io.landmark_files import read_landmarks

    inp, out = _test_folder(tmp_path), tmp_path / "out"
    assert predict_main(["-i", str(inp), "-o", str(out), "-d", "2", "-m", "US"]) == 0
    images = sorted(inp.iterdir())
    for image in images:
        stem = image.name[: -len(".nii.gz")]
        ours, slicer = read_lmkreg_json(out / f"{stem}.json"), read_landmarks(out / f"{stem}.mrk.json")
        np.testing.assert_allclose(slicer.to_array(ours.names), ours.to_array(), atol=1e-6)
        assert set(ours.extras["confidence"]) == set(ours.names)
        doc = json.loads((out / f"{stem}.mrk.json").read_text())
        assert doc["markups"][0]["coordinateSystem"] == "LPS"
    first = (out / f"{images[0].name[:-7]}.json").stat().st_mtime_ns
    capsys.readouterr()
    assert predict_main(["-i", str(inp), "-o", str(out), "-d", "2", "-m", "US"]) == 0
    assert f"0 predicted, {len(images)} skipped" in capsys.readouterr().out
    assert (out / f"{images[0].name[:-7]}.json").stat().st_mtime_ns == first
    assert predict_main(["-i", str(inp), "-o", str(out), "-d", "2", "-m", "US", "--overwrite"]) == 0
    assert f"{len(images)} predicted, 0 skipped" in capsys.readouterr().out


def test_bad_case_is_named_and_the_rest_predicted(env, tmp_path, capsys):
    inp, out = _test_folder(tmp_path), tmp_path / "out"
    (inp / "broken_US.nii.gz").write_bytes(b"not an image at all")
    assert predict_main(["-i", str(inp), "-o", str(out), "-d", "2", "-m", "US"]) == 1
    captured = capsys.readouterr()
    assert "broken_US.nii.gz" in captured.err
    assert "3 predicted" in captured.out and "1 failed" in captured.out
    assert not any(p.name.startswith("broken") for p in out.iterdir())


def test_shards_cover_the_folder_once(env, tmp_path):
    inp = _test_folder(tmp_path)
    predictor = LandmarkPredictor(env["US"], folds=["0"])
    done = []
    for part in range(2):
        report = predict_folder(predictor, inp, tmp_path / "out", num_parts=2, part_id=part, progress_bar=False)
        done += report.done
        assert not report.failed and not report.skipped
    assert sorted(done) == sorted(p.name for p in inp.iterdir())


def test_missing_model_and_bad_folders_give_clear_errors(env, tmp_path, capsys):
    inp = _test_folder(tmp_path)
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "-d", "2", "-m", "US", "-tr",
                         "HeatmapMatchingTrainer"]) == 2
    assert "HeatmapMatchingTrainer__US" in capsys.readouterr().err
    assert predict_main(["-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"), "-d", "2", "-m", "US"]) == 2
    assert "nowhere" in capsys.readouterr().err
    blocker = tmp_path / "results_file"  # an output "folder" that cannot be created: refused before any work
    blocker.write_text("keep me")
    assert predict_main(["-i", str(inp), "-o", str(blocker / "o"), "-d", "2", "-m", "US"]) == 2
    assert "results_file" in capsys.readouterr().err and blocker.read_text() == "keep me"


def test_one_shot_register_from_two_volumes(env, tmp_path):
    """lmkreg_register -d: predicts both volumes' landmarks, then fits the rigid map to them."""
    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.run.register import main as register_main
    from lmkreg.registration.landmark_fit import register_landmarks

    ds = open_dataset(2)
    case = ds.cases("Ts")[0]
    out = tmp_path / "out"
    rc = register_main(["-d", "2", "--mr-image", str(ds.image_path(case, "MR", "Ts")), "--us-image",
                        str(ds.image_path(case, "US", "Ts")), "-o", str(out), "--name", case, "-f", "0"])
    assert rc == 0
    mr, us = read_lmkreg_json(out / f"{case}_MR.json"), read_lmkreg_json(out / f"{case}_US.json")
    expected = register_landmarks(mr, us).transform
    np.testing.assert_allclose(read_rigid_transform(out / f"{case}_MR_to_US.json").matrix(), expected.matrix(),
                               atol=1e-9)
    assert (out / f"{case}_MR_to_US.tfm").is_file() and (out / f"{case}_US.mrk.json").is_file()


def test_prediction_killed_mid_folder_leaves_no_partial_file_and_rerun_completes(env, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from lmkreg.io.landmark_files import read_landmarks

    inp = _test_folder(tmp_path)
    for i, src in enumerate(sorted(inp.iterdir())):  # 9 images, so the kill lands mid-folder
        for k in (1, 2):
            (inp / f"copy{k}{i}_US.nii.gz").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmkreg.run.predict", "-i", str(inp), "-o", str(out), "-d", "2",
           "-m", "US"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not list(out.glob("*.mrk.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finished = sorted(p.name for p in out.glob("*_US.json")) if out.exists() else []
    assert len(finished) < 9, "the run ended before it could be killed"
    for path in out.iterdir() if out.exists() else []:  # every visible file is a whole landmark file
        if not path.name.startswith("."):
            read_landmarks(path)
    for name in finished:  # a case's lmkreg JSON is written last: if it exists, both files are whole
        read_landmarks(out / name)
        read_landmarks(out / name.replace(".json", ".mrk.json"))
    rc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert f"{9 - len(finished)} predicted, {len(finished)} skipped" in rc.stdout
    assert len(list(out.glob("*_US.json"))) == 9 and len(list(out.glob("*.mrk.json"))) == 9
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files of the killed run were not cleaned up: {leftovers}"
