"""Issue 25: every prediction records where it came from, and lmkreg_predict reuses an existing
output only when that record matches the input and the model.  References: SimpleITK's own
reading of the input (series UID, size) and hashlib's sha256 of the checkpoint files."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.io.provenance import Provenance, compare, image_sha256, read_provenance

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "prostate_mr_dicom"
if not REALDATA.is_dir():  # a worktree beside the main clone: ../shared next to the repository
    REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "prostate_mr_dicom"
needs_real = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real DICOM examination not found at {REALDATA}")
DATASET = "47"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny phantoms, an MR and a US LandmarkTrainer trained for one iteration on fold 'all'."""
    from lmkreg.run.train import model_folder, train
    from toydata import folders_under, planned_phantoms

    with folders_under(tmp_path_factory.mktemp("provenance_model")) as env:
        planned_phantoms(47, 4, 3, seed=5, num_folds=2)
        for m in ("MR", "US"):
            train(DATASET, m, "all", num_epochs=1, iterations_per_epoch=1, num_workers=0, progress_bar=False)
        folders = {m: model_folder("Dataset047_Phantom", "LandmarkTrainer", m) for m in ("MR", "US")}
    return env, folders


@pytest.fixture
def env(trained, monkeypatch):
    from toydata import use_folders

    use_folders(monkeypatch, trained[0])
    return trained[1]


def _predict(inp: Path, out: Path, modality: str = "MR", *extra: str) -> int:
    from lmkreg.run.predict import main as predict_main
    return predict_main(["-i", str(inp), "-o", str(out), "-d", DATASET, "-m", modality, "--no-optimize",
                         "--no-progress", *extra])


def _test_images(tmp_path: Path, modalities=("MR",)) -> Path:
    from lmkreg.dataset.layout import open_dataset

    ds = open_dataset(int(DATASET))
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for m in modalities:
        for case in ds.cases("Ts", m):
            src = ds.image_path(case, m, "Ts")
            shutil.copyfile(src, folder / src.name)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_of_a_nifti_prediction_matches_sitk_and_hashlib(env, tmp_path):
    inp, out = _test_images(tmp_path), tmp_path / "out"
    assert _predict(inp, out) == 0
    model = env["MR"]
    for image_file in sorted(inp.iterdir()):
        stem = image_file.name[: -len(".nii.gz")]
        rec = read_provenance(out / f"{stem}.json")
        assert rec is not None and rec.modality == "MR"
        ref = sitk.ReadImage(str(image_file))
        assert rec.input.size_xyz == list(ref.GetSize())
        np.testing.assert_allclose(rec.input.spacing_xyz, ref.GetSpacing())
        assert rec.input.image_sha256 == image_sha256(ref)
        assert rec.input.series_uid is None and rec.input.path == str(image_file)
        assert rec.model.checkpoints_sha256 == {"MR/fold_all/checkpoint_final.pth":
                                                _sha(model / "fold_all" / "checkpoint_final.pth")}
        assert rec.model.plans_sha256 == {"MR": _sha(model / "plans.json")}
        assert rec.model.dataset == "Dataset047_Phantom" and rec.model.trainer == "LandmarkTrainer"
        assert rec.options["tta"] is True and rec.options["folds"] == ["all"] and rec.options["cascade"] is False
        # the Slicer twin carries the same record, and is still recognised as lmkreg's own file
        assert compare(read_provenance(out / f"{stem}.mrk.json"), rec) == []
        from lmkreg.io.ownership import written_by_lmkreg
        assert written_by_lmkreg(out / f"{stem}.mrk.json")


def test_image_hash_depends_on_values_and_geometry():
    a = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    b = sitk.Image(a)
    assert image_sha256(a) == image_sha256(b)
    b.SetOrigin((0.0, 0.0, 1.0))
    assert image_sha256(a) != image_sha256(b)
    c = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)[::-1].copy())
    assert image_sha256(a) != image_sha256(c)


def test_record_round_trips_and_compare_names_differences():
    from lmkreg.io.provenance import InputRecord, ModelRecord

    rec = Provenance("MR", InputRecord("a.nii.gz", [2, 3, 4], [1.0, 1.0, 2.0], "0" * 64),
                     ModelRecord("D", "T", ["MR"], ["0"], "final", {"MR/fold_0/c.pth": "1" * 64}), {"tta": True})
    back = Provenance.from_json(json.loads(json.dumps(rec.to_json())))
    assert compare(rec, back) == []
    other = Provenance.from_json(rec.to_json())
    other.modality, other.options = "US", {"tta": False}
    diffs = compare(rec, other)
    assert any("modality MR vs US" in d for d in diffs) and any("option tta" in d for d in diffs)
    assert compare(rec, None) and Provenance.from_json({"no": "record"}) is None


@needs_real
def test_record_of_a_dicom_prediction_matches_sitk_and_hashlib(env, tmp_path):
    series = tmp_path / "t2_axial_3mm"
    shutil.copytree(REALDATA / "t2_axial_3mm", series)
    out = tmp_path / "out"
    assert _predict(series, out, "MR", "--no-tta") in (0, 3)
    rec = read_provenance(out / "t2_axial_3mm.json")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    assert rec.input.series_uid == reader.GetMetaData("0020|000e").strip()
    assert rec.input.series_description == reader.GetMetaData("0008|103e").strip()
    assert rec.input.num_slices == len(files) == 40
    series_reader = sitk.ImageSeriesReader()
    series_reader.SetFileNames(files)
    assert rec.input.size_xyz == list(series_reader.Execute().GetSize()) == [320, 320, 40]
    expected = hashlib.sha256(b"".join(bytes.fromhex(_sha(Path(f))) for f in files)).hexdigest()
    assert rec.input.files_sha256 == expected
    assert rec.model.checkpoints_sha256["MR/fold_all/checkpoint_final.pth"] == \
        _sha(env["MR"] / "fold_all" / "checkpoint_final.pth")


# ---- skip-if-done only for the same input and model ---------------------------------------------

def test_strict_rerun_over_unreliable_outputs_exits_3_again(env, tmp_path, capsys):
    """Why: '--strict exits 3; run again: 0 predicted, 5 skipped ... 0 flagged unreliable', exit 0."""
    inp, out = _test_images(tmp_path), tmp_path / "out"
    _predict(inp, out, "MR", "--strict")
    for f in out.glob("*.json"):  # every case unreliable, as the first --strict run found them
        if f.name.endswith(".mrk.json"):
            continue
        doc = json.loads(f.read_text())
        doc["extras"]["reliable"], doc["extras"]["flags"] = False, ["apex: error radius 9.0 mm > 5.0 mm"]
        f.write_text(json.dumps(doc))
    n = len(list(inp.iterdir()))
    capsys.readouterr()
    assert _predict(inp, out, "MR", "--strict") == 3
    text = capsys.readouterr().out
    assert f"0 predicted, {n} skipped" in text and f"{n} flagged unreliable" in text
    assert _predict(inp, out, "MR") == 0  # without --strict: written and reported, exit 0


def test_existing_output_of_another_image_or_model_is_predicted_again(env, tmp_path, capsys):
    inp, out = _test_images(tmp_path), tmp_path / "out"
    assert _predict(inp, out) == 0
    images = sorted(inp.iterdir())
    n = len(images)
    capsys.readouterr()
    assert _predict(inp, out) == 0
    assert f"0 predicted, {n} skipped" in capsys.readouterr().out
    # the same file name now holds another image: its old landmarks must not be kept
    shutil.copyfile(images[1], images[0])
    assert _predict(inp, out) == 0
    text = capsys.readouterr().out
    assert f"1 predicted, {n - 1} skipped" in text and "image_sha256" in text
    assert read_provenance(out / f"{images[0].name[:-7]}.json").input.image_sha256 == \
        image_sha256(sitk.ReadImage(str(images[1])))
    # other options (no mirror TTA): every case predicted again
    assert _predict(inp, out, "MR", "--no-tta") == 0
    assert f"{n} predicted, 0 skipped" in capsys.readouterr().out


def test_mixed_folder_predicts_only_the_modality_given(env, tmp_path, capsys):
    """Why: a CASE_MR/CASE_US folder given to -m MR predicted the _US files with the MR model and the
    later -m US run skipped them all."""
    inp, out = _test_images(tmp_path, ("MR", "US")), tmp_path / "out"
    n_us = len(list(inp.glob("*_US.nii.gz")))
    n_mr = len(list(inp.glob("*_MR.nii.gz")))
    assert _predict(inp, out, "MR") == 0
    text = capsys.readouterr().out
    assert f"{n_mr} predicted, 0 skipped" in text and f"skipped {n_us} input(s) that are not MR" in text
    assert "its name says US" in text
    assert not list(out.glob("*_US.json"))
    assert _predict(inp, out, "US") == 0
    assert f"{n_us} predicted, 0 skipped" in capsys.readouterr().out
    for f in out.glob("*_US.json"):
        assert read_provenance(f).modality == "US"


def test_two_series_of_one_folder_get_their_own_outputs(env, tmp_path, capsys):
    """Why: --series A then --series B into one folder: both named after the folder, B skipped
    and A's landmarks kept as B's."""
    from dicomdata import write_dicom_series
    from lmkreg.dataset.layout import open_dataset

    ds = open_dataset(int(DATASET))
    cases = ds.cases("Ts", "MR")[:2]
    exam = tmp_path / "exam"
    for k, case in enumerate(cases):
        write_dicom_series(sitk.ReadImage(str(ds.image_path(case, "MR", "Ts"))), exam, f"1.2.3.{k + 1}00",
                           description=f"T2 {case}")
    out = tmp_path / "out"
    assert _predict(exam, out, "MR", "--series", f"T2 {cases[0]}") == 0
    assert _predict(exam, out, "MR", "--series", f"T2 {cases[1]}") == 0
    text = capsys.readouterr().out
    assert "1 predicted, 0 skipped" in text.splitlines()[-1] or text.count("1 predicted, 0 skipped") == 2
    written = sorted(p.name for p in out.glob("*.json") if not p.name.endswith(".mrk.json"))
    assert written == sorted(f"exam_T2_{c}.json" for c in cases)
    uids = {read_provenance(out / w).input.series_uid for w in written}
    assert uids == {"1.2.3.100", "1.2.3.200"}
