"""Training-efficiency study: validation MRE against optimiser steps (and seconds) for today's
training and candidate changes, same data, same seed.

Why steps: on a shared CPU seconds depend on what else runs; validation MRE after N steps does
not.  Seconds come from the same run and are stored too, with the thread plan, so that a run on a
quiet machine gives the wall-clock curve.  Step-time candidates that change no numbers
(bfloat16, channels-last, torch.compile) are timed against fp32 back to back with ``--step-time``.

    # one variant, one modality, fixed length (the demo's dataset 900 must be planned and preprocessed)
    python benchmarks/convergence_study.py -d 900 -m US --variant baseline --steps 500 -o /tmp/study
    python benchmarks/convergence_study.py -d 900 -m US --variant lr2e-3_warmup --steps 500 -o /tmp/study
    python benchmarks/convergence_study.py --summarize /tmp/study           # -> benchmarks/results/convergence_study.json
    python benchmarks/convergence_study.py --step-time -d 900 -m US         # fp32 vs bf16 / channels-last / compile
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "convergence_study.json"

# plan "training" keys each variant changes (the trainer reads them with fallbacks)
VARIANTS = {
    "baseline": {},  # today's planned training: Adam lr 1e-3, polynomial decay, no warm-up
    "lr2e-3_warmup": {"learning_rate": 2e-3, "lr_warmup_steps": 50},
    "lr3e-3_warmup": {"learning_rate": 3e-3, "lr_warmup_steps": 50},
    "warmup": {"lr_warmup_steps": 50},
}


def train_variant(dataset: str, modality: str, variant: str, steps: int, iterations: int, trainer_name: str,
                  out: Path, seed: int, workers: int) -> dict:
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.paths import preprocessed_folder
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.config.splits import load_or_create_splits
    from lmkreg.training.registry import find_trainer

    ds = open_dataset(dataset)
    pre = preprocessed_folder(ds)
    plans = Plans.load(pre / PLANS_FILE)
    plans.configuration(modality).training.update(VARIANTS[variant])
    splits = load_or_create_splits(pre, ds.cases("Tr"))
    folder = out / f"{modality}_{variant}"
    cls = find_trainer(trainer_name)
    t = cls(plans, modality, 0, pre, folder, splits, num_epochs=-(-steps // iterations), iterations_per_epoch=iterations,
            num_workers=workers, seed=seed, progress_bar=False)
    t0 = time.perf_counter()
    summary = t.run()
    h = t.log.history
    result = {"variant": variant, "changes": VARIANTS[variant], "modality": modality, "trainer": trainer_name,
              "dataset": ds.name, "seed": seed, "steps": h["steps"], "val_mre_mm": h["val_mre"],
              "epoch_seconds": h["epoch_seconds"], "wall_s": time.perf_counter() - t0,
              "final_val_mre_mm": summary["mre_mm"], "verdict": summary["training_verdict"],
              "load_1min_at_end": os.getloadavg()[0]}
    (out / f"{modality}_{variant}.json").write_text(json.dumps(result, indent=1))
    return result


CANDIDATES = ["fp32", "bf16", "channels_last", "compile"]


def step_time(dataset: str, modality: str, repeats: int, kinds: list[str] = CANDIDATES) -> dict:
    """Seconds per training step of the planned network: fp32 against each candidate, timed in
    alternation so that a change in machine load hits both alike."""
    import torch

    from lmkreg.dataset.layout import open_dataset
    from lmkreg.paths import preprocessed_folder
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.threads import configure_threads
    from lmkreg.training.network import UNet3D

    plan = configure_threads(0)
    conf = Plans.load(preprocessed_folder(open_dataset(dataset)) / PLANS_FILE).configuration(modality)
    x = torch.randn(conf.batch_size, 1, *conf.input_size_zyx)
    target = torch.rand(conf.batch_size, 3, *conf.input_size_zyx)

    def make(kind):
        torch.manual_seed(0)
        net = UNet3D(1, 3, conf.network, head_bias=True)
        inp = x
        if kind == "channels_last":
            net = net.to(memory_format=torch.channels_last_3d)
            inp = x.to(memory_format=torch.channels_last_3d)
        if kind == "compile":
            net = torch.compile(net)
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
                out = net(inp)
            loss = ((out.float() - target) ** 2).mean()
            loss.backward()
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
            "threads": plan.describe(), "median_step_s": med, "ratio_to_fp32": {k: v / med["fp32"] for k, v in med.items()},
            "samples_s": times, "errors": errors, "load_1min": os.getloadavg()[0]}


def summarize(folder: Path, output: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    out = {"study": "convergence", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs}
    output.write_text(json.dumps(out, indent=1))
    for r in runs:
        curve = ", ".join(f"{s}:{m:.2f}" for s, m in zip(r["steps"], r["val_mre_mm"]))
        print(f"{r['modality']} {r['variant']:16s} final {r['final_val_mre_mm']:.2f} mm; {curve}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="900", help="dataset id or name (default 900, the demo's)")
    p.add_argument("-m", "--modality", default="US", help="modality (default US)")
    p.add_argument("-tr", "--trainer", default="HeatmapMatchingTrainer", help="trainer (default: the demo's)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="baseline", help="training variant")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    p.add_argument("--iterations", type=int, default=50, help="steps between validations (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0, the demo's)")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers (default 1)")
    p.add_argument("-o", "--output", type=Path, default=Path("convergence_study"), help="folder for the runs")
    p.add_argument("--summarize", type=Path, default=None, metavar="FOLDER", help="collect the runs of FOLDER")
    p.add_argument("--step-time", action="store_true", help="time fp32 against bf16, channels-last and compile")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per candidate for --step-time")
    p.add_argument("--candidates", nargs="+", default=CANDIDATES, choices=CANDIDATES,
                   help="what --step-time compares with fp32 (default: all)")
    args = p.parse_args(argv)
    if args.summarize:
        summarize(args.summarize, RESULTS)
        return 0
    if args.step_time:
        r = step_time(args.dataset, args.modality, args.repeats, args.candidates)
        print(json.dumps({k: r[k] for k in ("median_step_s", "ratio_to_fp32", "errors", "threads", "load_1min")}, indent=1))
        path = RESULTS.with_name(f"step_time_candidates_{args.modality}_{'_'.join(args.candidates)}.json")
        path.write_text(json.dumps(r, indent=1))
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    r = train_variant(args.dataset, args.modality, args.variant, args.steps, args.iterations, args.trainer,
                      args.output, args.seed, args.workers)
    print(json.dumps({k: r[k] for k in ("variant", "steps", "val_mre_mm", "wall_s", "final_val_mre_mm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
