"""Bad input and faults not covered elsewhere (see documentation/reliability.md): each test checks
the message names the file and the problem, the exit status of the command, and that earlier
outputs are left as they were."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lmkreg.io.landmark_files import write_landmarks
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.paths import preprocessed_root, raw_root, results_root
from lmkreg.run.register import main as register_main

NAMES = ["apex", "bladder_neck", "posterior_median"]
MR_POINTS = np.array([[1.0, 20.0, -30.0], [-2.0, -5.0, 18.0], [0.5, 22.0, 3.0]])
# an earlier lmkreg transform JSON (lmkreg replaces only its own files, issue 25)
SENTINEL = ('{"written": "by an earlier run", "matrix": [], "itk_file": "case1_MR_to_US.tfm", '
            '"itk_file_direction": "US world point -> MR world point (ITK resampling convention)"}\n')


@pytest.fixture
def pair(tmp_path):
    """An MR/US landmark pair and an output folder holding an earlier result that must survive."""
    mr, us = tmp_path / "case1_MR.json", tmp_path / "case1_US.json"
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), mr)
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS + [3.0, -4.0, 5.0]), us)
    out = tmp_path / "out"
    out.mkdir()
    (out / "case1_MR_to_US.json").write_text(SENTINEL)
    return mr, us, out


def _unchanged(out):
    assert (out / "case1_MR_to_US.json").read_text() == SENTINEL
    assert sorted(p.name for p in out.iterdir()) == ["case1_MR_to_US.json"]  # nothing new, no temporary


# ---- images -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [0.0, -0.8], ids=["nifti_zero_spacing", "nifti_negative_spacing"])
def test_nifti_header_spacing_that_is_not_positive_is_refused(pair, tmp_path, rng, capsys, spacing):
    """NIfTI is the default format; nibabel and ITK both silently read a zero pixdim as 1 mm."""
    import nibabel

    mr, us, out = pair
    img = nibabel.Nifti1Image(rng.normal(size=(14, 13, 12)).astype(np.float32), np.diag([0.8, 0.9, 1.2, 1.0]))
    img.header["pixdim"][2] = spacing  # as written by a faulty exporter (the sform still says 0.9 mm)
    bad = tmp_path / "spacing_MR.nii.gz"
    nibabel.save(img, str(bad))
    good = tmp_path / "us.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(12, 13, 14)).astype(np.float32)), str(good))
    rc = register_main(["--mr", str(mr), "--us", str(us), "-o", str(out), "--mr-image", str(bad),
                        "--us-image", str(good)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "spacing_MR.nii.gz" in err and "spacing" in err and "not positive" in err, err
    _unchanged(out)


# ---- landmark files ---------------------------------------------------------------------------------

def test_landmark_file_missing_names_is_refused_naming_the_file(pair, capsys):
    mr, us, out = pair
    write_lmkreg_json(LandmarkSet({"apex": MR_POINTS[0]}), mr)  # bladder_neck and posterior_median absent
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "case1_MR.json" in err and "only 1 landmark(s) present in both MR and US" in err and "need 3" in err, err
    _unchanged(out)


# ---- duplicate case ids -----------------------------------------------------------------------------

def _fcsv(path, points):
    path.write_text("# CoordinateSystem = LPS\n# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                    + "".join(f"{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,{n},,\n"
                              for i, (n, p) in enumerate(zip(NAMES, points))))


def test_register_folders_refuse_two_files_of_one_case(tmp_path, capsys):
    """'c_MR.json' and 'c-mr.fcsv' are the same case 'c': one must not silently win."""
    mr_dir, us_dir, out = tmp_path / "mr", tmp_path / "us", tmp_path / "out"
    mr_dir.mkdir(), us_dir.mkdir(), out.mkdir()
    (out / "c_MR_to_US.json").write_text(SENTINEL)
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), mr_dir / "c_MR.json")
    _fcsv(mr_dir / "c-mr.fcsv", MR_POINTS + [9.0, 0.0, 0.0])
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS + 5.0), us_dir / "c_US.json")
    assert register_main(["--mr-dir", str(mr_dir), "--us-dir", str(us_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "c_MR.json" in err and "c-mr.fcsv" in err and "'c'" in err, err
    assert (out / "c_MR_to_US.json").read_text() == SENTINEL
    assert sorted(p.name for p in out.iterdir()) == ["c_MR_to_US.json"]


def test_register_with_one_folder_for_both_modalities_pairs_by_modality_not_to_itself(tmp_path, capsys):
    """One folder as --mr-dir and --us-dir: the _MR file is the MR side, the _US file the US side
    (issue 25: never an _MR file as US), so the case is registered MR -> US, never to itself."""
    both, out = tmp_path / "both", tmp_path / "out"
    both.mkdir()
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), both / "c_MR.json")
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS + 5.0), both / "c_US.json")
    assert register_main(["--mr-dir", str(both), "--us-dir", str(both), "-o", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "c_US.json (its name says US)" in out_text and "c_MR.json (its name says MR)" in out_text
    doc = json.loads((out / "c_MR_to_US.json").read_text())
    np.testing.assert_allclose(np.array(doc["matrix"])[:3, 3], [5.0, 5.0, 5.0], atol=1e-9)


def test_register_folders_accept_the_json_and_mrk_json_twins_that_predict_writes(tmp_path):
    mr_dir, us_dir, out = tmp_path / "mr", tmp_path / "us", tmp_path / "out"
    mr_dir.mkdir(), us_dir.mkdir()
    for folder, points, name in ((mr_dir, MR_POINTS, "c_MR"), (us_dir, MR_POINTS + 5.0, "c_US")):
        write_lmkreg_json(LandmarkSet.from_array(NAMES, points), folder / f"{name}.json")
        write_landmarks(LandmarkSet.from_array(NAMES, points), folder / f"{name}.mrk.json")
    assert register_main(["--mr-dir", str(mr_dir), "--us-dir", str(us_dir), "-o", str(out)]) == 0
    doc = json.loads((out / "c_MR_to_US.json").read_text())
    np.testing.assert_allclose(np.array(doc["matrix"])[:3, 3], [5.0, 5.0, 5.0], atol=1e-9)


# ---- a model folder without training: plans of a toy dataset, untrained weights ----------------------

@pytest.fixture
def model():
    """Toy dataset 7 planned (no preprocessing) and an untrained LandmarkTrainer__MR fold 0."""
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.training.checkpoint import save_checkpoint
    from lmkreg.training.trainers import LandmarkTrainer
    from toydata import make_toy_dataset

    ds = make_toy_dataset(raw_root(), n_cases=5, dataset_id=7)
    pre = plan_and_preprocess("7", workers=1, skip_preprocessing=True)
    folder = results_root() / ds.name / "LandmarkTrainer__MR"
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(pre / PLANS_FILE, folder / PLANS_FILE)
    conf = Plans.load(folder / PLANS_FILE).configuration("MR")
    net = LandmarkTrainer.build_network(conf, len(NAMES))
    save_checkpoint({"trainer": "LandmarkTrainer", "network": net.state_dict(), "epoch": 0},
                    folder / "fold_0" / "checkpoint_final.pth")
    return ds, folder


def _images(ds, tmp_path, n=3):
    folder = tmp_path / "in"
    folder.mkdir()
    for case in ds.cases("Tr")[:n]:
        shutil.copy(ds.image_path(case, "MR"), folder / ds.image_path(case, "MR").name)
    return folder


def _predict(inp, out):
    from lmkreg.run.predict import main as predict_main

    return predict_main(["-i", str(inp), "-o", str(out), "-d", "7", "-m", "MR", "--device", "cpu"])


def test_predict_refuses_two_images_of_one_case(model, tmp_path, capsys):
    """'toy000_MR.nii.gz' and 'toy000_MR.nrrd' would both be written as toy000_MR.json."""
    ds, _ = model
    inp, out = _images(ds, tmp_path, 1), tmp_path / "out"
    sitk.WriteImage(sitk.ReadImage(str(ds.image_path("toy001", "MR"))), str(inp / "toy000_MR.nrrd"))
    out.mkdir()
    (out / "toy000_MR.json").write_text(SENTINEL)
    assert _predict(inp, out) == 2
    err = capsys.readouterr().err
    assert "toy000_MR.nii.gz" in err and "toy000_MR.nrrd" in err, err
    assert (out / "toy000_MR.json").read_text() == SENTINEL
    assert sorted(p.name for p in out.iterdir()) == ["toy000_MR.json"]


def test_predict_rerun_skips_finished_cases_and_removes_temporaries_of_a_killed_run(model, tmp_path, capsys):
    """The state a SIGKILLed lmkreg_predict leaves (finished cases, a temporary of the dead
    process), made deterministic: the rerun removes the dead writer's temporary, keeps a live
    process's, skips the finished case untouched and predicts the rest."""
    from lmkreg.io.atomic import _owner_tag

    ds, _ = model
    inp, out = _images(ds, tmp_path), tmp_path / "out"
    first = tmp_path / "first"  # the case the killed run finished: a real output, with its provenance
    first.mkdir()
    shutil.copy(inp / "toy000_MR.nii.gz", first / "toy000_MR.nii.gz")
    assert _predict(first, out) == 0
    capsys.readouterr()
    finished = {p.name: p.read_bytes() for p in out.iterdir()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _owner_tag().rsplit("-", 1)[0]
    stale = out / f".toy001_MR.mrk.json.{host}-{dead.pid}.k1ll3dxy.tmp.mrk.json"
    stale.write_text('{"markups": [')  # half-written
    live = out / f".toy002_MR.json.{_owner_tag()}.l1vexxxx.tmp.json"
    live.write_text("{")
    assert _predict(inp, out) == 0
    captured = capsys.readouterr()
    assert "2 predicted, 1 skipped" in captured.out
    assert "removed 1 temporary file(s)" in captured.err
    assert not stale.exists() and live.exists()
    assert {n: (out / n).read_bytes() for n in finished} == finished
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(f"toy00{i}_MR{s}" for i in range(3) for s in (".json", ".mrk.json"))


class _Payload:
    """Pickled code: unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", ["foreign", "pickled_code"])
def test_predict_refuses_a_checkpoint_that_is_not_ours(model, tmp_path, capsys, content):
    ds, folder = model
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    marker = tmp_path / "pwned"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
        problem = "not an lmkreg checkpoint"
    else:
        torch.save({"format": "lmkreg-checkpoint-1", "trainer": "LandmarkTrainer", "payload": _Payload(marker)}, ckpt)
        problem = "pickled code"
    inp, out = _images(ds, tmp_path, 1), tmp_path / "out"
    out.mkdir()
    (out / "toy000_MR.json").write_text(SENTINEL)
    assert _predict(inp, out) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and problem in err, err
    assert not marker.exists(), "the checkpoint's pickled code was executed"
    assert sorted(p.name for p in out.iterdir()) == ["toy000_MR.json"]
    assert (out / "toy000_MR.json").read_text() == SENTINEL


# ---- dataset and plans ------------------------------------------------------------------------------

def test_fewer_cases_than_folds_stops_planning_naming_the_dataset(capsys):
    from lmkreg.run.plan_and_preprocess import main as plan_main
    from toydata import make_toy_dataset

    ds = make_toy_dataset(raw_root(), n_cases=3, dataset_id=7)
    assert plan_main(["-d", "7"]) == 2
    err = capsys.readouterr().err
    assert "Dataset007_Toy" in err and "3 training case(s)" in err and "5 folds" in err, err
    assert not (preprocessed_root() / ds.name).exists()  # refused before any work
    assert plan_main(["-d", "7", "--num-folds", "3", "--plan-only"]) == 0  # fewer folds: fine


def test_edited_plans_stop_training_naming_the_file_and_the_key(capsys):
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.config.plans import PLANS_FILE
    from lmkreg.run.train import main as train_main
    from toydata import make_toy_dataset

    make_toy_dataset(raw_root(), n_cases=5, dataset_id=7)
    plans = plan_and_preprocess("7", workers=1, skip_preprocessing=True) / PLANS_FILE
    doc = json.loads(plans.read_text())
    doc["configurations"]["MR"]["network"]["strides"].pop()
    plans.write_text(json.dumps(doc))
    capsys.readouterr()
    assert train_main(["7", "MR", "0", "--epochs", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert str(plans) in err and "'configurations.MR.network.strides'" in err, err
    assert not any(results_root().iterdir())  # nothing trained, nothing written


# ---- outputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["below_a_file", "is_a_file"])
def test_register_into_an_output_folder_that_cannot_be_made(pair, tmp_path, capsys, where):
    mr, us, _ = pair
    blocker = tmp_path / "results_file"
    blocker.write_text("keep me")
    target = blocker / "out" if where == "below_a_file" else blocker
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "output folder" in err, err
    assert blocker.read_text() == "keep me"


def test_disk_full_during_register_keeps_the_previous_transform(pair, capsys, monkeypatch):
    mr, us, out = pair

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc = register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2
    assert "case1_MR_to_US.json" in err and "No space left on device" in err, err
    _unchanged(out)


def test_register_moves_the_tfm_into_place_before_the_json_that_names_it(pair, monkeypatch):
    """Both files are written to temporaries, then the .tfm is renamed first: a register killed
    between the two renames leaves no JSON newer than the .tfm it names."""
    mr, us, out = pair
    out = out.parent / "fresh_out"
    moved = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: moved.append(Path(dst).name) or replace(src, dst))
    assert register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)]) == 0
    finals = [m for m in moved if not m.startswith(".")]
    assert finals == ["case1_MR_to_US.tfm", "case1_MR_to_US.json"]
    assert json.loads((out / "case1_MR_to_US.json").read_text())["itk_file"] == "case1_MR_to_US.tfm"
    assert sorted(p.name for p in out.iterdir()) == ["case1_MR_to_US.json", "case1_MR_to_US.tfm"]


@pytest.mark.parametrize("failing", ["tfm", "json"])
def test_a_failed_register_write_keeps_the_previous_transform_pair(pair, capsys, monkeypatch, failing):
    import lmkreg.run.register as register_cli

    mr, us, out = pair
    (out / "case1_MR_to_US.tfm").write_text("old tfm")
    if failing == "tfm":
        def broken(transform, path):
            raise register_cli.OutputError(path, "could not write transform (No space left on device)")
        monkeypatch.setattr(register_cli, "write_itk_transform", broken)
    else:
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    rc = register_main(["--mr", str(mr), "--us", str(us), "-o", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "case1_MR_to_US.json" in err, err
    assert (out / "case1_MR_to_US.json").read_text() == SENTINEL
    assert (out / "case1_MR_to_US.tfm").read_text() == "old tfm"
    assert sorted(p.name for p in out.iterdir()) == ["case1_MR_to_US.json", "case1_MR_to_US.tfm"]


def test_register_folders_with_a_bad_pairing_create_no_output_folder(tmp_path, capsys):
    mr_dir, us_dir, out = tmp_path / "mr", tmp_path / "us", tmp_path / "out"
    mr_dir.mkdir(), us_dir.mkdir()
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), mr_dir / "a_MR.json")
    write_lmkreg_json(LandmarkSet.from_array(NAMES, MR_POINTS), us_dir / "b_US.json")
    assert register_main(["--mr-dir", str(mr_dir), "--us-dir", str(us_dir), "-o", str(out)]) == 2
    assert "no case has landmark files in both" in capsys.readouterr().err
    assert not out.exists()
