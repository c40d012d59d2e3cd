"""Training-efficiency study: validation MRE against optimiser steps for today's training and
candidate changes, same data, same seed, converted to idle-equivalent seconds.

Why steps: on a shared CPU seconds depend on what else runs; validation MRE after N steps does
not.  Step times are measured as ratios to today's step, back to back in one process
(``--step-time``), and today's idle step time comes from benchmarks/results/thread_benchmark.json;
``--summarize`` multiplies them out (documentation/benchmarks.md states the formula).

    # one variant, one modality, fixed length (the demo's dataset 900 must be planned and preprocessed)
    python benchmarks/convergence_study.py -d 900 -m MR --variant today --steps 700 -o /tmp/study
    python benchmarks/convergence_study.py -d 900 -m MR --variant bf16 --steps 700 -o /tmp/study
    python benchmarks/convergence_study.py --step-time -d 900 -m MR     # today's step vs each candidate
    python benchmarks/convergence_study.py --summarize /tmp/study       # -> benchmarks/results/convergence_study.json
                                                                        #    and documentation/figures/convergence_wallclock.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "convergence_study.json"
WALL_RESULTS = ROOT / "benchmarks" / "results" / "convergence_study_wall_clock.json"

# plan "training" keys each variant changes (the trainer reads them with fallbacks); "batch_size"
# is the configuration's batch size, not a training key.  Every variant is compared with "today".
# Each variant spells out bf16 and the sweep cut, so that it means the same training after the
# defaults changed (2026-12-02: bf16 "auto" and the US sweep cut became defaults).
SWEEP_CUT = {"p": 0.2, "beyond_mm": [-2.0, 6.0]}


def _variant(bf16: bool = False, sweep_cut: bool = False, **changes) -> dict:
    """Plan training keys of one variant: channels-last unless changed, fp32 unless `bf16`, no
    sweep cut unless `sweep_cut`, plus `changes`."""
    return {"bf16_autocast_cpu": bf16, "augmentation": {"sweep_cut": dict(SWEEP_CUT) if sweep_cut else None}, **changes}


VARIANTS = {
    # the demo's training before issue 16: fp32, default memory layout, Adam lr 1e-3, polynomial decay
    "today": _variant(channels_last=False),
    "baseline": _variant(),  # channels-last 3D layout on the CPU (the default from issue 16 on)
    "bf16": _variant(bf16=True),  # + bfloat16 autocast of the training forward pass
    "lr2e-3_warmup": _variant(learning_rate=2e-3, lr_warmup_steps=50),
    "bf16_lr2e-3_warmup": _variant(bf16=True, learning_rate=2e-3, lr_warmup_steps=50),
    # + the TRUS sweep that ends inside the gland (lmkreg.training.augmentation.SweepCut)
    "sweep_cut": _variant(sweep_cut=True),
    # the kept training (the defaults since 2026-12-02 on a CPU with native bf16; MR has no sweep cut)
    "sweep_cut_bf16": _variant(bf16=True, sweep_cut=True),
    "sweep_cut_bf16_lr2e-3_warmup": _variant(bf16=True, sweep_cut=True, learning_rate=2e-3, lr_warmup_steps=50),
    "lr3e-3_warmup": _variant(learning_rate=3e-3, lr_warmup_steps=50),
    "warmup": _variant(lr_warmup_steps=50),
    "batch1": _variant(batch_size=1),
    "batch4": _variant(batch_size=4),
    # the kept training with batch 1: a step costs 0.61-0.67x of batch 2's, so more updates per second
    "sweep_cut_bf16_batch1": _variant(bf16=True, sweep_cut=True, batch_size=1),
}


def _study_trainer(dataset: str, modality: str, trainer_name: str, fold: int, folder: Path, changes: dict, **kwargs):
    """The trainer of one study run on the planned and preprocessed `dataset`: the plan's
    configuration with `changes` (training keys; "batch_size" sets the batch), and its dataset."""
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.config.splits import load_or_create_splits
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.paths import preprocessed_folder
    from lmkreg.training.registry import find_trainer

    ds = open_dataset(dataset)
    pre = preprocessed_folder(ds)
    plans = Plans.load(pre / PLANS_FILE)
    conf = plans.configuration(modality)
    changes = dict(changes)
    if "batch_size" in changes:
        conf.batch_size = int(changes.pop("batch_size"))
    conf.training = conf.training.with_changes(**changes)
    splits = load_or_create_splits(pre, ds.cases("Tr"))
    return find_trainer(trainer_name)(plans, modality, fold, pre, folder, splits, progress_bar=False, **kwargs), ds


def train_variant(dataset: str, modality: str, variant: str, steps: int, iterations: int, trainer_name: str,
                  out: Path, seed: int, workers: int, label: str | None = None, fold: int = 0) -> dict:
    label = label or variant
    t, ds = _study_trainer(dataset, modality, trainer_name, fold, out / f"{modality}_{label}", VARIANTS[variant],
                           num_epochs=-(-steps // iterations), iterations_per_epoch=iterations, num_workers=workers,
                           seed=seed)
    t0 = time.perf_counter()
    summary = t.run()
    h = t.log.history
    result = {"variant": variant, "label": label, "changes": VARIANTS[variant], "modality": modality, "trainer": trainer_name,
              "batch_size": t.conf.batch_size, "iterations_per_epoch": iterations,
              "dataset": ds.name, "seed": seed, "fold": fold, "steps": h["steps"], "val_mre_mm": h["val_mre"],
              "epoch_seconds": h["epoch_seconds"], "wall_s": time.perf_counter() - t0,
              "final_val_mre_mm": summary["mre_mm"], "verdict": summary["training_verdict"],
              "load_1min_at_end": os.getloadavg()[0]}
    (out / f"{modality}_{label}.json").write_text(json.dumps(result, indent=1))
    return result


# step-time candidates: (channels-last 3D layout, bfloat16 autocast, batch size or None = planned, torch.compile);
# "fp32" is today's step (default layout, fp32, planned batch) and the reference of every ratio
CANDIDATE_SETTINGS = {
    "fp32": (False, False, None, False),
    "channels_last": (True, False, None, False),
    "bf16": (False, True, None, False),
    "bf16_channels_last": (True, True, None, False),
    "compile": (False, False, None, True),
    "batch1": (True, False, 1, False),
    "batch4": (True, False, 4, False),
}
# what --step-time compares by default (torch.compile is left out: minutes of compilation, 0.90x measured before)
CANDIDATES = ["fp32", "channels_last", "bf16", "bf16_channels_last", "batch1", "batch4"]
# the step-time candidate each training variant runs with (current defaults: channels-last on the CPU)
VARIANT_STEP = {"today": "fp32", "baseline": "channels_last", "bf16": "bf16_channels_last",
                "lr2e-3_warmup": "channels_last", "bf16_lr2e-3_warmup": "bf16_channels_last", "sweep_cut": "channels_last",
                "sweep_cut_bf16": "bf16_channels_last", "sweep_cut_bf16_lr2e-3_warmup": "bf16_channels_last",
                "lr3e-3_warmup": "channels_last", "warmup": "channels_last",
                "batch1": "batch1", "batch4": "batch4",
                "sweep_cut_bf16_batch1": "bf16_batch1"}  # not timed alone: measured seconds only


def step_time(dataset: str, modality: str, repeats: int, kinds: list[str] = CANDIDATES) -> dict:
    """Seconds per training step of the planned network: today's fp32 step against each
    candidate, timed in alternation so that a change in machine load hits all alike."""
    import torch

    from lmkreg.dataset.layout import open_dataset
    from lmkreg.paths import preprocessed_folder
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.threads import configure_threads
    from lmkreg.training.network import UNet3D

    plan = configure_threads(0)
    conf = Plans.load(preprocessed_folder(open_dataset(dataset)) / PLANS_FILE).configuration(modality)

    def make(kind):
        channels_last, bf16, batch, compiled = CANDIDATE_SETTINGS[kind]
        batch = batch or conf.batch_size
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, *conf.input_size_zyx, generator=gen)
        target = torch.rand(batch, 3, *conf.input_size_zyx, generator=gen)
        torch.manual_seed(0)
        net = UNet3D(1, 3, conf.network, head_bias=True)
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if compiled:
            net = torch.compile(net)
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(x)
            loss = ((out.float() - target) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
        return step

    kinds = ["fp32"] + [k for k in kinds if k != "fp32"]
    steps, times, errors = {}, {k: [] for k in kinds}, {}
    for k in kinds:
        try:
            steps[k] = make(k)
            for _ in range(2):  # warm-up (compilation for torch.compile)
                steps[k]()
        except Exception as e:  # a candidate this CPU or build does not support
            errors[k] = f"{type(e).__name__}: {e}"[:300]
    for _ in range(repeats):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items() if v}
    return {"modality": modality, "input_size_zyx": conf.input_size_zyx, "batch_size": conf.batch_size,
            "candidates": {k: dict(zip(("channels_last", "bf16", "batch_size", "compile"), CANDIDATE_SETTINGS[k]))
                           for k in kinds},
            "threads": plan.describe(), "median_step_s": med, "ratio_to_fp32": {k: v / med["fp32"] for k, v in med.items()},
            "samples_s": times, "errors": errors, "load_1min": os.getloadavg()[0]}


TARGET_MRE_MM = 1.5  # the demo's accuracy target per modality (documentation/benchmarks.md)
FIGURE = ROOT / "documentation" / "figures" / "convergence_wallclock.png"
WALL_FIGURE = ROOT / "documentation" / "figures" / "convergence_measured_seconds.png"
PLOT_NAMES = {"today": "today: fp32, default layout", "baseline": "channels-last (the default until 2026-12-02)",
              "bf16": "bf16 + channels-last (MR kept before the weight average)", "bf16_1000": "bf16 + channels-last, 1000 steps",
              "lr2e-3_warmup": "lr 2e-3 + warm-up", "bf16_lr2e-3_warmup": "bf16 + lr 2e-3 + warm-up",
              "sweep_cut": "channels-last + sweep cut", "sweep_cut_seed1": "channels-last + sweep cut, seed 1",
              "baseline_seed1": "channels-last, seed 1", "today_seed1": "today, seed 1", "bf16_lr2e-3_warmup_seed1": "bf16 + lr 2e-3 + warm-up, seed 1",
              "sweep_cut_bf16": "sweep cut + bf16 (US kept before the weight average)", "sweep_cut_bf16_seed1": "sweep cut + bf16, seed 1",
              "sweep_cut_bf16_lr2e-3_warmup": "sweep cut + bf16 + lr 2e-3 + warm-up",
              "sweep_cut_bf16_lr2e-3_warmup_seed1": "sweep cut + bf16 + lr 2e-3 + warm-up, seed 1",
              "sweep_cut_bf16_batch1": "sweep cut + bf16, batch 1",
              "sweep_cut_bf16_ema": "US kept now: sweep cut + bf16 + weight average",
              "bf16_ema": "MR kept now: bf16 + weight average"}


def step_time_file(results_dir: Path, modality: str, kinds: list[str] = CANDIDATES) -> Path:
    name = modality if list(kinds) == CANDIDATES else f"{modality}_{'_'.join(kinds)}"
    return results_dir / f"step_time_candidates_{name}.json"


def idle_step_seconds(results_dir: Path) -> dict[str, float]:
    """Today's training step (fp32, default layout, planned batch) on 2 idle cores, per modality,
    from the thread benchmark (benchmarks/thread_benchmark.py, current thread settings, no busy process)."""
    d = json.loads((results_dir / "thread_benchmark.json").read_text())
    run = next(r for r in d["runs"] if r["busy_processes"] == 0 and r["setting"] == "new")
    return {m: float(c["train_step_s"]) for m, c in run["configurations"].items()}


def first_stay_below(steps: list[int], mre: list[float], target: float) -> int | None:
    """First validation step from which the validation MRE stays <= target to the end of the run."""
    first = None
    for s, m in zip(steps, mre):
        if m <= target:
            first = s if first is None else first
        else:
            first = None
    return first


def final_validation_errors(run_folder: Path, dataset: str | None, modality: str, over_mm: float = 4.0) -> dict | None:
    """The final model's validation errors of one run (per landmark, mm, against the dataset's
    landmark files): the MRE, the MRE over the errors <= 10 mm, and every error above `over_mm`
    ("case:landmark") -- which shows whether one case decides a run's MRE.  None without the
    run's validation folder or the dataset."""
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.io.landmark_files import read_landmarks

    files = sorted((run_folder / "validation").glob("*.json"))
    files = [f for f in files if f.name != "summary.json"]
    if not files or not dataset:
        return None
    try:
        ds = open_dataset(dataset)
    except Exception:
        return None
    errors, large = [], {}
    for f in files:
        pred, truth = read_landmarks(f), read_landmarks(ds.landmarks_path(f.stem, modality))
        for n in truth.names:
            if truth.points.get(n) is None or pred.points.get(n) is None:
                continue
            e = float(np.linalg.norm(np.asarray(pred.points[n]) - np.asarray(truth.points[n])))
            errors.append(e)
            if e > over_mm:
                large[f"{f.stem}:{n}"] = round(e, 2)
    small = [e for e in errors if e <= 10.0]
    return {"mre_mm": float(np.mean(errors)), "mre_without_errors_over_10mm": float(np.mean(small)) if small else None,
            "errors_over_mm": over_mm, "large_errors_mm": large, "landmarks": len(errors)}


def seed_groups(runs: list[dict], target: float) -> list[dict]:
    """The runs of one variant and length over their seeds: each seed's final validation MRE, the
    mean, how many ended at or below `target`, and the mean curve with its reach-and-stay step
    (one fold's 8 validation cases and one seed swing the final US MRE by +-0.3 mm, so a verdict
    rests on the seeds together).  Runs need "steps", "val_mre_mm", "final_val_mre_mm"."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["modality"], r["variant"], r["steps"][-1] if r["steps"] else 0, r.get("fold", 0)),
                          []).append(r)
    out = []
    for (m, variant, steps_run, fold), rs in sorted(groups.items()):
        finals = [float(r["final_val_mre_mm"]) for r in rs]
        same = all(r["steps"] == rs[0]["steps"] for r in rs)
        curve = np.mean([r["val_mre_mm"] for r in rs], axis=0).tolist() if same else None
        step = first_stay_below(rs[0]["steps"], curve, target) if curve else None
        idle_s = rs[0].get("idle_step_s")
        out.append({"modality": m, "variant": variant, "steps_run": steps_run, "fold": fold, "seeds": [r.get("seed", 0) for r in rs],
                    "final_val_mre_mm": finals, "mean_final_val_mre_mm": float(np.mean(finals)),
                    "runs_at_or_below_target": int(sum(f <= target for f in finals)),
                    "steps": rs[0]["steps"] if same else None, "mean_curve_mm": curve,
                    "idle_equivalent_s_of_run": None if idle_s is None else steps_run * idle_s,
                    "mean_curve_reach_and_stay": {"step": step,
                                                  "idle_equivalent_s": None if step is None or idle_s is None
                                                  else step * idle_s}})
    return out


def summarize(folder: Path, output: Path, results_dir: Path = RESULTS.parent, figure: Path | None = FIGURE,
              target: float = TARGET_MRE_MM) -> dict:
    """Collect the runs of `folder`, convert steps to idle-equivalent seconds and write `output`
    (and the figure).  Idle-equivalent seconds of N steps of a variant =
    N x (today's idle step time of the modality) x (variant's step-time ratio to today's step)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    idle = idle_step_seconds(results_dir)
    ratios = {}
    for m in sorted({r["modality"] for r in runs}):
        path = step_time_file(results_dir, m)
        ratios[m] = json.loads(path.read_text())["ratio_to_fp32"] if path.is_file() else {}
    for r in runs:
        m, kind = r["modality"], VARIANT_STEP.get(r["variant"], "channels_last")
        ratio = ratios.get(m, {}).get(kind)
        r["step_time_candidate"] = kind
        r["step_time_ratio"] = ratio
        r["idle_step_s"] = None if ratio is None else idle[m] * ratio
        r["idle_equivalent_s"] = None if ratio is None else [s * r["idle_step_s"] for s in r["steps"]]
        first = first_stay_below(r["steps"], r["val_mre_mm"], target)
        r["final_validation"] = final_validation_errors(folder / f"{m}_{r.get('label') or r['variant']}",
                                                        r.get("dataset"), m)
        # measured seconds: training + validation of each epoch as the run logged them (they hold
        # whatever else the machine did; comparable only between runs on a quiet machine)
        seconds = r.get("epoch_seconds") or []
        r["wall_clock_s"] = np.cumsum(seconds).tolist() if len(seconds) == len(r["steps"]) and seconds else None
        r["reach_and_stay"] = {"target_mre_mm": target, "step": first,
                               "idle_equivalent_s": None if first is None or ratio is None else first * r["idle_step_s"],
                               "wall_clock_s": None if first is None or r["wall_clock_s"] is None
                               else r["wall_clock_s"][r["steps"].index(first)],
                               "steps_run": r["steps"][-1] if r["steps"] else 0}
    out = {"study": "convergence", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "target_mre_mm": target,
           "idle_step_s_today": idle, "step_time_ratios": ratios,
           "formula": "idle-equivalent seconds = optimiser steps x idle step time of today's training "
                      "(thread_benchmark.json, 2 idle cores) x the variant's step-time ratio (back to back, one "
                      "process); validation, data loading and start-up are left out", "runs": runs,
           "seed_groups": seed_groups(runs, target)}
    output.write_text(json.dumps(out, indent=1))
    for r in runs:
        curve = ", ".join(f"{s}:{m:.2f}" for s, m in zip(r["steps"], r["val_mre_mm"]))
        rs = r["reach_and_stay"]
        print(f"{r['modality']} {r.get('label', r['variant']):16s} final {r['final_val_mre_mm']:.2f} mm; <= {target} mm from step "
              f"{rs['step']} ({rs['idle_equivalent_s']} s); {curve}")
    for g in out["seed_groups"]:
        print(f"{g['modality']} {g['variant']:16s} {g['steps_run']} steps, seeds {g['seeds']}: final "
              f"{', '.join(f'{f:.2f}' for f in g['final_val_mre_mm'])} (mean {g['mean_final_val_mre_mm']:.2f}) mm, "
              f"{g['runs_at_or_below_target']} at or below {target} mm")
    if figure is not None:
        plot(out, figure)
    return out


def average_vs_raw(run_folders: list[Path], output: Path) -> dict:
    """Final validation MRE of each weight-average run with its averaged weights (the checkpoint's
    "network", what predictions use) and with its raw training weights ("network_training"):
    the same training and the same validation cases, so the difference is the average's alone."""
    import torch

    from lmkreg.training.checkpoint import load_checkpoint

    rows = []
    for folder in run_folders:
        run = json.loads(folder.with_suffix(".json").read_text())
        state = load_checkpoint(folder / "checkpoint_final.pth", torch.device("cpu"))
        if "network_training" not in state:
            raise SystemExit(f"{folder}: no raw weights in checkpoint_final.pth (not a weight-average run)")
        # no average in this trainer: validate exactly the weights loaded into it
        t, _ = _study_trainer(run["dataset"], run["modality"], run["trainer"], run.get("fold", 0),
                              folder / "average_vs_raw", {"weights_ema_decay": 0.0}, device="cpu", num_epochs=1,
                              iterations_per_epoch=1, num_workers=0)
        (folder / "average_vs_raw").mkdir(exist_ok=True)
        t._setup()
        mre = {}
        for key in ("network", "network_training"):
            t.network.load_state_dict(state[key])
            mre[key] = float(np.nanmean(t.validate()[1]))
        rows.append({"run": folder.name, "modality": run["modality"], "seed": run.get("seed", 0), "fold": run.get("fold", 0),
                     "steps": state["steps_done"], "val_mre_average_mm": mre["network"], "val_mre_raw_mm": mre["network_training"]})
        print(f"{folder.name}: average {mre['network']:.2f} mm, raw {mre['network_training']:.2f} mm", flush=True)
    out = {"study": "weight average against raw weights", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": rows}
    output.write_text(json.dumps(out, indent=1))
    return out


def _finish_panel(ax, target_mm: float, half_s: float | None, half_label: str, title: str, xlabel: str,
                  **legend) -> None:
    """The parts both figures share: the target line, half of today's time, log axis, labels, legend."""
    import matplotlib.ticker

    ax.axhline(target_mm, color="k", ls="--", lw=1, label=f"target {target_mm:g} mm")
    if half_s is not None:
        ax.axvline(half_s, color="grey", ls=":", lw=1, label=half_label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation MRE (mm)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(**legend)


def _folds(runs: list[dict]) -> str:
    return ", ".join(str(f) for f in sorted({r.get("fold", 0) for r in runs}))


def plot_wall_clock(summary: dict, path: Path) -> None:
    """Validation MRE against the seconds each run measured (training + validation of its epochs):
    one panel per modality, one colour per variant and length (today's first), one line per seed;
    the vertical line is half of today's mean measured run."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted({r["modality"] for r in summary["runs"]})
    fig, axes = plt.subplots(1, len(modalities), figsize=(7.0 * len(modalities), 5.5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], modalities):
        runs = [r for r in summary["runs"] if r["modality"] == m and r.get("wall_clock_s")]
        groups: dict[tuple, list[dict]] = {}
        for r in sorted(runs, key=lambda r: (r["variant"] != "today", r["variant"], r["steps"][-1], r.get("seed", 0))):
            groups.setdefault((r["variant"], r["steps"][-1]), []).append(r)
        for i, ((variant, steps), rs) in enumerate(groups.items()):
            totals = [r["wall_clock_s"][-1] for r in rs]
            seeds = ", ".join(str(r.get("seed", 0)) for r in rs)
            span = f"{totals[0]:.0f} s" if len(rs) == 1 else f"{min(totals):.0f}-{max(totals):.0f} s"
            for j, r in enumerate(rs):
                ax.plot(r["wall_clock_s"], r["val_mre_mm"], marker="o", ms=2.5, lw=1.2, color=cmap(i % 10), alpha=0.85,
                        label=f"{PLOT_NAMES.get(variant, variant)}, {steps} steps (seed {seeds}; {span})" if j == 0 else None)
        today = [r["wall_clock_s"][-1] for r in runs if r["variant"] == "today"]
        _finish_panel(ax, summary["target_mre_mm"], float(np.mean(today)) / 2 if today else None,
                      "half of today's mean run", f"{m}: validation MRE, fold {_folds(runs)}, measured one after another",
                      "measured seconds on 2 cores (training + validation)", fontsize=7.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(summary: dict, path: Path) -> None:
    """Validation MRE against idle-equivalent seconds: one panel per modality, one line per variant."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted({r["modality"] for r in summary["runs"]})
    # one line per variant and length: the mean curve over its seeds (seed_groups)
    groups = [g for g in summary.get("seed_groups") or seed_groups(summary["runs"], summary["target_mre_mm"])
              if g["mean_curve_mm"] is not None]
    ratio = {(r["modality"], r["variant"]): r.get("step_time_ratio") for r in summary["runs"]}
    keys = sorted({(g["variant"], g["steps_run"]) for g in groups}, key=lambda k: (k[0] != "today", k[0] != "baseline", k))
    cmap = plt.get_cmap("tab20")
    colours = {k: cmap((2 * i) % 20 + (2 * i) // 20) for i, k in enumerate(keys)}  # one per variant and length
    fig, axes = plt.subplots(1, len(modalities), figsize=(7.0 * len(modalities), 8.5), squeeze=False)
    for ax, m in zip(axes[0], modalities):
        for g in groups:
            r = ratio.get((m, g["variant"]))
            if g["modality"] != m or r is None or g["idle_equivalent_s_of_run"] is None:
                continue
            idle_s = g["idle_equivalent_s_of_run"] / g["steps_run"]
            n = len(g["seeds"])
            name = PLOT_NAMES.get(g["variant"], g["variant"]) + (f", {g['steps_run']} steps" if g["steps_run"] > 700 else "")
            ax.plot([st * idle_s for st in g["steps"]], g["mean_curve_mm"], marker="o", ms=3,
                    color=colours[(g["variant"], g["steps_run"])], lw=2 if n > 1 else 1,
                    label=f"{name} ({r:.2f}x step; {'mean of ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(g['seeds'][0])})")
        today = [r for r in summary["runs"] if r["modality"] == m and r["variant"] == "today" and r["idle_equivalent_s"]]
        _finish_panel(ax, summary["target_mre_mm"], today[0]["idle_equivalent_s"][-1] / 2 if today else None,
                      "half of today's training time", f"{m}: validation MRE, fold {_folds([r for r in summary['runs'] if r['modality'] == m])}",
                      "idle-equivalent training seconds on 2 cores",
                      fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="900", help="dataset id or name (default 900, the demo's)")
    p.add_argument("-m", "--modality", default="US", help="modality (default US)")
    p.add_argument("-tr", "--trainer", default="HeatmapMatchingTrainer", help="trainer (default: the demo's)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="baseline", help="training variant")
    p.add_argument("--label", default=None, help="name of the run's files (default: the variant), e.g. bf16_1000")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    p.add_argument("--iterations", type=int, default=50, help="steps between validations (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0, the demo's)")
    p.add_argument("-f", "--fold", type=int, default=0, help="cross-validation fold whose validation cases score the run (default 0)")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers (default 1)")
    p.add_argument("-o", "--output", type=Path, default=Path("convergence_study"), help="folder for the runs")
    p.add_argument("--summarize", type=Path, default=None, metavar="FOLDER", help="collect the runs of FOLDER")
    p.add_argument("--wall-clock", action="store_true",
                   help="with --summarize: runs made one after another on a quiet machine, plotted against the "
                        "seconds they measured (writes convergence_study_wall_clock.json and its figure)")
    p.add_argument("--tag", default="", help="with --wall-clock: suffix of the results and figure names, so that another set "
                                            "of runs does not overwrite the first (e.g. half_budget)")
    p.add_argument("--average-vs-raw", nargs="+", type=Path, default=None, metavar="RUN",
                   help="validate the averaged and the raw weights of weight-average runs' final checkpoints "
                        "(run folders; writes benchmarks/results/weights_average_vs_raw.json)")
    p.add_argument("--step-time", action="store_true", help="time today's fp32 training step against the candidates, back to back")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per candidate for --step-time")
    p.add_argument("--candidates", nargs="+", default=CANDIDATES, choices=sorted(CANDIDATE_SETTINGS),
                   help="what --step-time compares with fp32 (default: all but compile)")
    args = p.parse_args(argv)
    if args.summarize and args.wall_clock:
        suffix = f"_{args.tag}" if args.tag else ""
        results = WALL_RESULTS.with_name(f"{WALL_RESULTS.stem}{suffix}.json")
        summarize(args.summarize, results, figure=None)
        plot_wall_clock(json.loads(results.read_text()), WALL_FIGURE.with_name(f"{WALL_FIGURE.stem}{suffix}.png"))
        return 0
    if args.summarize:
        summarize(args.summarize, RESULTS)
        return 0
    if args.average_vs_raw:
        average_vs_raw(args.average_vs_raw, RESULTS.parent / "weights_average_vs_raw.json")
        return 0
    if args.step_time:
        r = step_time(args.dataset, args.modality, args.repeats, args.candidates)
        print(json.dumps({k: r[k] for k in ("median_step_s", "ratio_to_fp32", "errors", "threads", "load_1min")}, indent=1))
        path = step_time_file(RESULTS.parent, args.modality, args.candidates)
        path.write_text(json.dumps(r, indent=1))
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    r = train_variant(args.dataset, args.modality, args.variant, args.steps, args.iterations, args.trainer,
                      args.output, args.seed, args.workers, args.label, args.fold)
    print(json.dumps({k: r[k] for k in ("variant", "steps", "val_mre_mm", "wall_s", "final_val_mre_mm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
