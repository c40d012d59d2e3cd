"""Training variants of the efficiency study: the plan key training.bf16_autocast_cpu really
changes the arithmetic of the training forward pass (and only of it), the default keeps fp32;
and benchmarks/convergence_study.py turns runs into idle-equivalent seconds and the
reach-and-stay step by the stated formula."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkreg.config.plans import Plans
from lmkreg.config.splits import load_or_create_splits
from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
from lmkreg.training.trainers import HeatmapMatchingTrainer

from benchscripts import load_benchmark
from toydata import folders_under, make_toy_dataset



@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A planned and preprocessed MR-only toy dataset (5 cases)."""
    root = tmp_path_factory.mktemp("variants")
    with folders_under(root):
        ds = make_toy_dataset(root / "raw", n_cases=5, dataset_id=7, modalities=("MR",))
        pre = plan_and_preprocess("7", workers=1)
        splits = load_or_create_splits(pre, ds.cases("Tr"))
    return pre, splits


def _conv_output_dtypes(toy, folder: Path, changes: dict, drop: tuple = ()) -> tuple[list, list, float]:
    """dtypes the first convolution produced in one training step and in one validation pass
    (`changes` set in the plan's training keys, `drop` removed from them)."""
    pre, splits = toy
    plans = Plans.load(pre / "plans.json")
    conf = plans.configuration("MR")
    conf.training = conf.training.with_changes(**changes).without(*drop)
    t = HeatmapMatchingTrainer(plans, "MR", 0, pre, folder, splits, device="cpu", num_epochs=1,
                               iterations_per_epoch=1, num_workers=0, progress_bar=False)
    folder.mkdir(parents=True)
    t._setup()
    seen: list = []
    for net in {id(t.network): t.network, id(t.eval_network): t.eval_network}.values():  # validation may run the average
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
        conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    sample = t.train_data.get(t.train_cases[0])
    batch = {"image": torch.from_numpy(sample["image"][None]), "landmarks": torch.from_numpy(sample["landmarks"][None]),
             "present": torch.ones(1, sample["landmarks"].shape[0], dtype=torch.bool)}
    loss = t.train_step(batch)
    train_dtypes, seen[:] = list(seen), []
    t.validate()
    assert all(p.dtype == torch.float32 for p in t.network.parameters())  # the weights stay fp32
    return train_dtypes, list(seen), loss


def test_bf16_autocast_key_changes_the_training_forward_pass_only(toy, tmp_path):
    train, val, loss = _conv_output_dtypes(toy, tmp_path / "bf16", {"bf16_autocast_cpu": True})
    assert train == [torch.bfloat16]
    assert val and set(val) == {torch.float32}  # validation (like prediction) stays fp32
    assert np.isfinite(loss)


def test_bf16_off_keeps_fp32(toy, tmp_path):
    train, val, loss = _conv_output_dtypes(toy, tmp_path / "off", {"bf16_autocast_cpu": False})
    assert train == [torch.float32] and set(val) == {torch.float32}
    assert np.isfinite(loss)


@pytest.mark.parametrize("native", [True, False])
def test_auto_bf16_follows_the_cpu_check(toy, tmp_path, monkeypatch, native):
    from lmkreg.training import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    train, val, _ = _conv_output_dtypes(toy, tmp_path / "auto", {"bf16_autocast_cpu": "auto"})
    assert train == [torch.bfloat16 if native else torch.float32]
    assert set(val) == {torch.float32}


def test_plans_ask_for_auto_and_the_trainer_defaults_to_it(toy, tmp_path, monkeypatch):
    from lmkreg.training import runtime

    pre, _ = toy
    assert Plans.load(pre / "plans.json").configuration("MR").training.bf16_autocast_cpu == "auto"
    assert Plans.load(pre / "plans.json").configuration("MR").training.weights_ema_decay == 0.98
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)  # a plan without the key: "auto"
    assert _conv_output_dtypes(toy, tmp_path / "keyless_fp32", {}, drop=("bf16_autocast_cpu",))[0] == [torch.float32]
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert _conv_output_dtypes(toy, tmp_path / "keyless_bf16", {}, drop=("bf16_autocast_cpu",))[0] == [torch.bfloat16]


def test_native_bf16_check_agrees_with_the_kernels_cpu_flags():
    """torch's CPU probe against an independent reference: the flags Linux lists for the CPU."""
    import re

    from lmkreg.training.runtime import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()) is not None
    assert cpu_has_native_bf16() is flags


def test_the_log_says_which_precision_trained(toy, tmp_path):
    pre, splits = toy
    plans = Plans.load(pre / "plans.json")
    conf = plans.configuration("MR")
    conf.training = conf.training.with_changes(bf16_autocast_cpu=True)
    HeatmapMatchingTrainer(plans, "MR", 0, pre, tmp_path / "run", splits, device="cpu", num_epochs=1,
                           iterations_per_epoch=2, num_workers=0, progress_bar=False).run()
    log = (tmp_path / "run" / "training_log.txt").read_text()
    assert "precision: bfloat16 autocast of the training forward pass, channels-last 3D memory layout" in log


# ---- benchmarks/convergence_study.py --summarize -------------------------------------------

def _study_module():
    return load_benchmark("convergence_study")


def test_first_stay_below():
    cs = _study_module()
    steps = [50, 100, 150, 200, 250]
    assert cs.first_stay_below(steps, [3.0, 1.4, 1.6, 1.4, 1.2], 1.5) == 200  # the dip at 100 does not count
    assert cs.first_stay_below(steps, [1.0, 1.1, 1.2, 1.3, 1.5], 1.5) == 50
    assert cs.first_stay_below(steps, [1.0, 1.1, 1.2, 1.3, 1.6], 1.5) is None


def test_summarize_converts_steps_to_idle_seconds_and_draws_the_figure(tmp_path):
    cs = _study_module()
    runs, results = tmp_path / "runs", tmp_path / "results"
    runs.mkdir()
    results.mkdir()
    (results / "thread_benchmark.json").write_text(json.dumps({"runs": [
        {"busy_processes": 0, "setting": "old", "configurations": {"MR": {"train_step_s": 9.0}}},
        {"busy_processes": 0, "setting": "new", "configurations": {"MR": {"train_step_s": 0.4}}},
        {"busy_processes": 1, "setting": "new", "configurations": {"MR": {"train_step_s": 0.8}}}]}))
    cs.step_time_file(results, "MR").write_text(json.dumps({"ratio_to_fp32": {"fp32": 1.0, "bf16_channels_last": 0.5}}))
    steps = [50, 100, 150, 200]
    for variant, mre in (("today", [5.0, 2.0, 1.4, 1.3]), ("bf16", [5.0, 1.4, 1.6, 1.2])):
        (runs / f"MR_{variant}.json").write_text(json.dumps(
            {"variant": variant, "modality": "MR", "steps": steps, "val_mre_mm": mre, "final_val_mre_mm": mre[-1],
             "epoch_seconds": [30.0, 20.0, 20.0, 25.0] if variant == "today" else [10.0, 10.0, 12.0, 11.0]}))
    figure = tmp_path / "fig.png"
    out = cs.summarize(runs, tmp_path / "summary.json", results_dir=results, figure=figure)
    by = {r["variant"]: r for r in out["runs"]}
    assert by["today"]["idle_equivalent_s"] == pytest.approx([20.0, 40.0, 60.0, 80.0])  # steps x 0.4 s x 1.0
    assert by["bf16"]["idle_equivalent_s"] == pytest.approx([10.0, 20.0, 30.0, 40.0])  # steps x 0.4 s x 0.5
    assert by["today"]["reach_and_stay"]["step"] == 150
    assert by["today"]["reach_and_stay"]["idle_equivalent_s"] == pytest.approx(60.0)
    assert by["bf16"]["reach_and_stay"]["step"] == 200
    assert by["bf16"]["reach_and_stay"]["idle_equivalent_s"] == pytest.approx(40.0)
    # measured seconds: the epochs' own times summed up to the validation that reached the target
    assert by["today"]["wall_clock_s"] == pytest.approx([30.0, 50.0, 70.0, 95.0])
    assert by["today"]["reach_and_stay"]["wall_clock_s"] == pytest.approx(70.0)
    assert by["bf16"]["reach_and_stay"]["wall_clock_s"] == pytest.approx(43.0)
    assert json.loads((tmp_path / "summary.json").read_text())["runs"][0]["variant"] == "bf16"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wall = tmp_path / "wall.png"
    cs.plot_wall_clock(out, wall)  # one line per run against its measured seconds
    assert wall.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_groups_pool_a_variants_seeds():
    cs = _study_module()
    steps = [50, 100]
    runs = [{"modality": "US", "variant": "v", "seed": 0, "steps": steps, "val_mre_mm": [3.0, 1.4],
             "final_val_mre_mm": 1.4, "idle_step_s": 0.2},
            {"modality": "US", "variant": "v", "seed": 1, "steps": steps, "val_mre_mm": [1.0, 1.8],
             "final_val_mre_mm": 1.8, "idle_step_s": 0.2},
            {"modality": "US", "variant": "v", "seed": 0, "steps": [50, 100, 150], "val_mre_mm": [9.0, 9.0, 1.0],
             "final_val_mre_mm": 1.0, "idle_step_s": 0.2}]
    two, longer = cs.seed_groups(runs, 1.5)
    assert (two["steps_run"], two["seeds"], longer["steps_run"]) == (100, [0, 1], 150)  # grouped by length too
    assert two["mean_curve_mm"] == pytest.approx([2.0, 1.6])
    assert two["mean_final_val_mre_mm"] == pytest.approx(1.6) and two["runs_at_or_below_target"] == 1
    assert two["mean_curve_reach_and_stay"]["step"] is None  # the mean ends above 1.5 mm
    assert longer["mean_curve_reach_and_stay"] == {"step": 150, "idle_equivalent_s": pytest.approx(30.0)}
    assert two["idle_equivalent_s_of_run"] == pytest.approx(20.0)
    other_fold = dict(runs[0], fold=1)
    groups = cs.seed_groups(runs + [other_fold], 1.5)
    assert [(g["steps_run"], g["fold"], g["seeds"]) for g in groups] == [(100, 0, [0, 1]), (100, 1, [0]), (150, 0, [0])]


def test_make_adam_updates_like_torchs_single_tensor_adam():
    """The trainer's optimiser (fused where torch has the kernel) takes the same steps as torch's
    reference per-tensor Adam, to rounding."""
    from lmkreg.training.runtime import make_adam

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True), torch.nn.Conv3d(4, 2, 1))
    b = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True), torch.nn.Conv3d(4, 2, 1))
    b.load_state_dict(a.state_dict())
    opt_a = make_adam(a.parameters(), 1e-2, weight_decay=1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False)
    x = torch.randn(2, 1, 6, 6, 6)
    for _ in range(5):
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (net(x) ** 2).mean().backward()
            opt.step()
    assert max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())) < 1e-5
    torch.manual_seed(0)  # c = a's initial weights
    c = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True), torch.nn.Conv3d(4, 2, 1))
    assert float((c[0].weight - a[0].weight).detach().abs().max()) > 1e-3  # the five steps did move the weights
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert opt_a.defaults.get("fused") is True  # torch >= 2.4 has the CPU kernel


def test_progress_plot_is_drawn_once_per_interval_and_at_the_end(toy, tmp_path, monkeypatch):
    """progress.png is drawn for the first epoch and at the end, not after every epoch, when the
    epochs are shorter than the plotting interval (a plot costs about 0.4 s)."""
    import lmkreg.training.trainers as trainers
    from lmkreg.training.progress import TrainingLog

    pre, splits = toy
    drawn = []
    original = TrainingLog.plot
    monkeypatch.setattr(TrainingLog, "plot", lambda self, path: (drawn.append(len(self.history["val_mre"])),
                                                                 original(self, path)))
    monkeypatch.setattr(trainers, "PLOT_EVERY_S", 3600.0)
    t = HeatmapMatchingTrainer(Plans.load(pre / "plans.json"), "MR", 0, pre, tmp_path / "run", splits, device="cpu",
                               num_epochs=3, iterations_per_epoch=1, num_workers=0, progress_bar=False)
    t.run()
    assert drawn == [1, 3]  # after the first epoch, then once at the end with all three
    assert (tmp_path / "run" / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn.clear()
    HeatmapMatchingTrainer(Plans.load(pre / "plans.json"), "MR", 0, pre, tmp_path / "one", splits, device="cpu",
                           num_epochs=1, iterations_per_epoch=1, num_workers=0, progress_bar=False).run()
    assert drawn == [1]  # a one-epoch run: drawn once, not again at the end


def test_weights_ema_is_the_running_average_validation_and_checkpoints_use(toy, tmp_path):
    """training.weights_ema_decay: the weights validated and saved as "network" are the
    exponential moving average of the training weights after each step (hand-computed here from
    snapshots), the training weights are kept for resuming, and a resumed run continues both."""
    from lmkreg.training.checkpoint import load_checkpoint

    pre, splits = toy
    plans = Plans.load(pre / "plans.json")
    conf = plans.configuration("MR")
    conf.training = conf.training.with_changes(weights_ema_decay=0.6)
    snapshots = []

    def trainer(epochs: int) -> HeatmapMatchingTrainer:
        t = HeatmapMatchingTrainer(plans, "MR", 0, pre, tmp_path / "run", splits, device="cpu", num_epochs=epochs,
                                   iterations_per_epoch=2, num_workers=0, progress_bar=False)
        step = t.train_step
        t.train_step = lambda batch: (step(batch), snapshots.append(
            {k: v.detach().clone() for k, v in t.network.state_dict().items()}))[0]
        return t

    trainer(1).run()
    first = load_checkpoint(tmp_path / "run" / "checkpoint_latest.pth", torch.device("cpu"))
    t = trainer(2)
    resumed = []
    original_resume = t.resume
    clone = lambda net: {k: v.detach().clone() for k, v in net.state_dict().items()}  # noqa: E731
    t.resume = lambda: (original_resume(), resumed.append((clone(t.network), clone(t.ema.module),
                                                           int(t.ema.n_averaged))))[0]
    t.run(resume=True)
    key = next(k for k in snapshots[0] if k.endswith("weight") and snapshots[0][k].dim() == 5)
    net, avg, n = resumed[0]  # the resumed run took up the training weights and the average where they were
    assert torch.equal(net[key], first["network_training"][key]) and torch.equal(avg[key], first["network"][key])
    assert n == 2 and len(snapshots) == 4
    expected = {k: v.clone() for k, v in snapshots[0].items()}  # the first update copies the weights
    for n, snap in enumerate(snapshots[1:], start=1):
        d = min(0.6, (1 + n) / (10 + n))  # the decay ramps up: 2/11, 3/12, 4/13 here (all below 0.6)
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * snap[k]
    state = load_checkpoint(tmp_path / "run" / "checkpoint_final.pth", torch.device("cpu"))
    assert torch.allclose(state["network"][key], expected[key], atol=1e-6)
    assert torch.allclose(state["network_training"][key], snapshots[-1][key])
    assert not torch.allclose(state["network"][key], state["network_training"][key])
    assert state["ema_updates"] == 4
    assert "exponential moving average of the training weights (decay 0.6)" in (tmp_path / "run" / "training_log.txt").read_text()
    # validation scored the averaged weights: the same MRE from a network holding them
    t.network.load_state_dict(state["network"])
    t.ema = None
    assert float(np.nanmean(t.validate()[1])) == pytest.approx(t.log.history["val_mre"][-1], abs=1e-6)
