"""Issue 25: empty training runs are refused before anything is written, a run that fails before
its first step leaves no model folder behind, and --device cuda without CUDA is one line."""
from __future__ import annotations

import hashlib

import pytest
import torch

from lmkreg.run.train import main as train_main

RESULTS = "Dataset048_Phantom"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lmkreg.run.train import model_folder, train
    from toydata import folders_under, planned_phantoms

    with folders_under(tmp_path_factory.mktemp("leftovers")) as env:
        planned_phantoms(48, 4, 2, seed=6, num_folds=2)
        train("48", "MR", "all", num_epochs=1, iterations_per_epoch=1, num_workers=0, progress_bar=False)
        folder = model_folder(RESULTS, "LandmarkTrainer", "MR")
    return env, folder


@pytest.fixture
def model(trained, monkeypatch):
    from toydata import use_folders

    use_folders(monkeypatch, trained[0])
    return trained[1]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_epochs_0_is_refused_and_keeps_the_model(model, capsys):
    """Why: --epochs 0 exited 0 after replacing checkpoint_final.pth with a 0-step model."""
    ckpt = model / "fold_all" / "checkpoint_final.pth"
    before = _digest(ckpt)
    for flag in ("--epochs", "--iterations"):
        assert train_main(["-d", "48", "-m", "MR", "-f", "all", flag, "0", "--no-progress", "--workers", "0"]) == 2
        assert f"{flag} 0" in capsys.readouterr().err
    assert _digest(ckpt) == before


def test_failed_runs_leave_no_folder_behind(model, capsys):
    """Why: a failed -m MRI or -f 7 left TRAINER__MRI/ or fold_7/ behind."""
    assert train_main(["-d", "48", "-m", "MRI", "-f", "0", "--no-progress", "--workers", "0"]) == 2
    assert "MRI" in capsys.readouterr().err
    assert not (model.parent / "LandmarkTrainer__MRI").exists()
    assert train_main(["-d", "48", "-m", "MR", "-f", "7", "--no-progress", "--workers", "0"]) == 2
    assert "fold 7" in capsys.readouterr().err
    assert not (model / "fold_7").exists()
    assert not (model.parent / "LandmarkTrainer__US").exists()
    # a trainer that fails in its first step: the new folder goes, the existing model stays
    assert train_main(["-d", "48", "-m", "US", "-f", "0", "--no-progress", "--workers", "0", "-tr",
                       "NoSuchTrainer"]) == 2
    assert not (model.parent / "NoSuchTrainer__US").exists()
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(model, tmp_path, capsys):
    """Why: --device cuda without CUDA ended in a Python traceback in predict and train."""
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.run.predict import main as predict_main

    assert train_main(["-d", "48", "-m", "MR", "-f", "0", "--device", "cuda", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "available: cpu" in err
    assert not (model / "fold_0").exists()
    ds = open_dataset(48)
    image = ds.image_path(ds.cases("Ts", "MR")[0], "MR", "Ts")
    assert predict_main(["-i", str(image), "-o", str(tmp_path / "o"), "-d", "48", "-m", "MR", "--device", "cuda",
                         "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "available: cpu" in err
