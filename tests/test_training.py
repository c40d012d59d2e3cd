"""Training end to end on tiny phantoms: every trainer, a real drop in validation MRE, resume
after SIGKILL reproducing the uninterrupted weights, and a 2-process gloo run matching the
single-process run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkreg.config.plans import Plans
from lmkreg.config.splits import load_or_create_splits
from lmkreg.dataset.layout import open_dataset
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.paths import preprocessed_folder
from lmkreg.phantoms.generator import generate_dataset
from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
from lmkreg.training.checkpoint import load_checkpoint
from lmkreg.run.train import model_folder, train
from lmkreg.training.runtime import seed_everything
from lmkreg.training.trainers import LandmarkTrainer

TRAINERS = ["LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance", "DirectRegressionTrainer",
            "HeatmapMatchingTrainer"]


@pytest.fixture(scope="module")
def phantom_env(tmp_path_factory):
    """A planned and preprocessed tiny phantom dataset (10 training cases) shared by the module."""
    root = tmp_path_factory.mktemp("training_data")
    env = {"LMKREG_raw": str(root / "raw"), "LMKREG_preprocessed": str(root / "pre")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        generate_dataset(1, 10, 0, preset="tiny", seed=5, workers=1, root=Path(env["LMKREG_raw"]), progress=False)
        plan_and_preprocess("1", workers=1)
    return env


@pytest.fixture
def env(phantom_env, monkeypatch, tmp_path):
    """The shared dataset with results in this test's own folder."""
    for k, v in phantom_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LMKREG_results", str(tmp_path / "results"))
    return {**phantom_env, "LMKREG_results": str(tmp_path / "results")}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, torch.device("cpu"))["network"]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_trains_and_validates(env, trainer):
    summary = train("1", "US", 0, trainer, num_epochs=1, iterations_per_epoch=2, num_workers=0, progress_bar=False)
    folder = model_folder("Dataset001_Phantom", trainer, "US") / "fold_0"
    ds = open_dataset(1)
    splits = load_or_create_splits(preprocessed_folder(ds), ds.cases("Tr"))
    assert summary["trainer"] == trainer and summary["num_cases"] == len(splits[0]["val"])
    assert np.isfinite(summary["mre_mm"])
    for name in ("final", "latest", "best"):
        state = load_checkpoint(folder / f"checkpoint_{name}.pth", torch.device("cpu"))
        assert state["trainer"] == trainer
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # validation predictions are world LPS points; the recorded MRE is their distance to the truth
    errors = []
    for case in splits[0]["val"]:
        pred = read_lmkreg_json(folder / "validation" / f"{case}.json")
        true = read_lmkreg_json(ds.landmarks_path(case, "US"))
        errors.append(np.linalg.norm(pred.to_array(true.names) - true.to_array(), axis=1))
    expected = np.nanmean(np.nanmean(np.array(errors), axis=0))
    assert summary["mre_mm"] == pytest.approx(expected, rel=1e-6)
    # the largest errors and the median, which the demo's verdict quotes, from the same files
    flat = np.array(errors).ravel()
    flat = flat[np.isfinite(flat)]
    assert summary["median_landmark_error_mm"] == pytest.approx(np.median(flat), rel=1e-6)
    assert [r["error_mm"] for r in summary["largest_errors_mm"]] == pytest.approx(sorted(flat)[::-1][:3], rel=1e-6)
    assert (model_folder("Dataset001_Phantom", trainer, "US") / "plans.json").is_file()


def test_short_run_reduces_validation_mre(env, tmp_path):
    ds = open_dataset(1)
    pre = preprocessed_folder(ds)
    plans = Plans.load(pre / "plans.json")
    splits = load_or_create_splits(pre, ds.cases("Tr"))
    trainer = LandmarkTrainer(plans, "MR", 0, pre, tmp_path / "run", splits, num_epochs=6, iterations_per_epoch=10,
                              num_workers=2, seed=3, progress_bar=False)
    trainer.output_folder.mkdir(parents=True)
    trainer._setup()
    _, untrained, _ = trainer.validate()
    summary = trainer.run()
    before, after = float(np.nanmean(untrained)), summary["mre_mm"]
    # untrained, the flat heatmap points at the grid centre (about 18 mm off on this data)
    assert after < 0.75 * before, (before, after, trainer.log.history["val_mre"])
    assert min(trainer.log.history["val_mre"]) == pytest.approx(trainer.best_mre)


def _cli_env(env: dict) -> dict:
    out = dict(os.environ)
    out.update(env)
    out["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return out


def _latest_epoch(folder: Path) -> int:
    path = folder / "checkpoint_latest.pth"
    return int(load_checkpoint(path, torch.device("cpu"))["epoch"]) if path.is_file() else 0


def test_sigkill_then_resume_reproduces_uninterrupted_weights(env, tmp_path):
    args = ["1", "MR", "0", "--epochs", "4", "--iterations", "8", "--workers", "0", "--seed", "7"]
    reference = train("1", "MR", 0, num_epochs=4, iterations_per_epoch=8, num_workers=0, seed=7, progress_bar=False)
    ref_folder = model_folder("Dataset001_Phantom", "LandmarkTrainer", "MR") / "fold_0"

    killed_env = dict(env, LMKREG_results=str(tmp_path / "killed"))
    folder = tmp_path / "killed" / "Dataset001_Phantom" / "LandmarkTrainer__MR" / "fold_0"
    proc = subprocess.Popen([sys.executable, "-m", "lmkreg.run.train", *args], env=_cli_env(killed_env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while _latest_epoch(folder) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = _latest_epoch(folder)
    assert 1 <= stopped_at < 4, f"the run was not killed mid-training (latest epoch {stopped_at})"
    assert not (folder / "checkpoint_final.pth").exists()

    rc = subprocess.run([sys.executable, "-m", "lmkreg.run.train", *args, "--c"], env=_cli_env(killed_env),
                        capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    log = (folder / "training_log.txt").read_text()
    assert f"at epoch {stopped_at}" in log
    resumed, uninterrupted = _weights(folder / "checkpoint_final.pth"), _weights(ref_folder / "checkpoint_final.pth")
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=f"weights differ at {key}")
    history = load_checkpoint(folder / "checkpoint_final.pth", torch.device("cpu"))["history"]
    assert len(history["val_mre"]) == 4
    assert history["val_mre"][-1] == pytest.approx(reference["mre_mm"], rel=1e-4)


def test_two_process_gloo_run_matches_single_process(env, tmp_path):
    """torchrun with 2 CPU processes: each takes half of every global batch and DDP averages the
    gradients, so the weights follow the single-process run with the same seed."""
    args = ["1", "MR", "0", "--epochs", "1", "--iterations", "3", "--workers", "0", "--seed", "11"]
    # fp32 arithmetic: bfloat16 autocast (the plans' "auto" on a CPU with bf16 units) rounds the
    # half-batches of the two processes differently from the whole batch, which is not what is tested
    plans_file = preprocessed_folder(open_dataset(1)) / "plans.json"
    planned = plans_file.read_text()
    data = json.loads(planned)
    data["configurations"]["MR"]["training"]["bf16_autocast_cpu"] = False
    plans_file.write_text(json.dumps(data))
    try:
        _two_process_run_matches(env, tmp_path, args)
    finally:
        plans_file.write_text(planned)


def _two_process_run_matches(env: dict, tmp_path: Path, args: list[str]) -> None:
    train("1", "MR", 0, num_epochs=1, iterations_per_epoch=3, num_workers=0, seed=11, progress_bar=False)
    single = model_folder("Dataset001_Phantom", "LandmarkTrainer", "MR") / "fold_0" / "checkpoint_final.pth"

    ddp_env = dict(env, LMKREG_results=str(tmp_path / "ddp"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmkreg.run.train", *args]
    env2 = _cli_env(ddp_env)
    env2["OMP_NUM_THREADS"] = "1"
    rc = subprocess.run(cmd, env=env2, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout[-2000:] + rc.stderr[-4000:]
    ddp = tmp_path / "ddp" / "Dataset001_Phantom" / "LandmarkTrainer__MR" / "fold_0" / "checkpoint_final.pth"
    a, b = _weights(single), _weights(ddp)
    seed_everything(11)  # what the trainer does before building the network
    conf = Plans.load(preprocessed_folder(open_dataset(1)) / "plans.json").configuration("MR")
    initial = LandmarkTrainer.build_network(conf, 3).state_dict()
    # Adam normalises each gradient element, so rounding differences between the two reduction
    # orders are amplified; compare whole updates instead of single weights
    update = torch.cat([(a[k] - initial[k]).flatten() for k in a])
    difference = torch.cat([(b[k] - a[k]).flatten() for k in a])
    assert update.norm() > 1e-3, "the single-process run did not train"
    # measured: the two runs' updates differ by about 2% of their size after 3 Adam steps
    # (deep instance norms over few voxels amplify rounding); the same samples in a different
    # split would differ by the whole update
    assert difference.norm() < 0.05 * update.norm(), (float(difference.norm()), float(update.norm()))
    h1 = load_checkpoint(single, torch.device("cpu"))["history"]
    h2 = load_checkpoint(ddp, torch.device("cpu"))["history"]
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)  # same samples, same losses


def test_time_budget_cuts_the_number_of_epochs(env, capsys):
    summary = train("1", "MR", 0, num_epochs=50, iterations_per_epoch=2, num_workers=0, progress_bar=False,
                    time_budget_s=1e-3)
    folder = model_folder("Dataset001_Phantom", "LandmarkTrainer", "MR") / "fold_0"
    history = load_checkpoint(folder / "checkpoint_final.pth", torch.device("cpu"))["history"]
    assert summary["epochs"] == 1 and len(history["val_mre"]) == 1
    log = (folder / "training_log.txt").read_text()
    assert "time budget" in log
    # 2 steps, far below the plan's minimum: the run says so in the summary, the log and the console
    assert summary["steps"] == 2 and summary["fit_for_use"] is False
    assert any("fewer than the plan's minimum" in r for r in summary["undertrained_reasons"])
    assert "not fit for use" in log and "not fit for use" in capsys.readouterr().err


class _DyingWorkerTrainer(LandmarkTrainer):
    """Its augmentation kills the data worker process that runs it."""

    def _setup(self) -> None:
        super()._setup()

        def die(sample, rng):
            os._exit(3)

        self.augmentation = die


def test_dead_data_worker_stops_training_with_a_clear_message(env, tmp_path):
    from lmkreg.errors import LmkregError

    ds = open_dataset(1)
    pre = preprocessed_folder(ds)
    trainer = _DyingWorkerTrainer(Plans.load(pre / "plans.json"), "MR", 0, pre, tmp_path / "run",
                                  load_or_create_splits(pre, ds.cases("Tr")), num_epochs=2, iterations_per_epoch=5,
                                  num_workers=2, progress_bar=False)
    started = time.time()
    with pytest.raises(LmkregError, match="worker"):
        trainer.run()
    assert time.time() - started < 60  # stopped, not hung until the loader's long timeout
    assert not (tmp_path / "run" / "checkpoint_final.pth").exists()
