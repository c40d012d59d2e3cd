"""Segmentation weight sweep of the ``*_Seg`` trainers (the table in documentation/training.md).

Each trainer is trained on fold 0 of 20 ``tiny`` phantoms (16 training / 4 validation cases),
200 optimiser steps, seed 7: once single-task and once per segmentation weight, with
validation MRE and validation prostate Dice reported.  The weight is written into the sweep's
own plans.json (this script generates and plans its own dataset under --root), one value at a
time, and the original plans are restored at the end.

    python benchmarks/segmentation_weight_sweep.py --root /tmp/seg_sweep -m MR \\
        --trainer HeatmapMatchingTrainer --weights 1 2 5 15 50
    python benchmarks/segmentation_weight_sweep.py --root /tmp/seg_sweep -m US \\
        --trainer LandmarkTrainer --weights 25

Results: ROOT/sweep_TRAINER_MODALITY.json (early-training numbers on 4 validation cases: they
choose a default, they do not measure converged accuracy).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)

DATASET_ID = 61
NUM_CASES = 20
DATA_SEED = 5
TRAIN_SEED = 7


def prepare(root: Path) -> Path:
    """Generate and plan the sweep's dataset once; returns its plans.json."""
    from lmkreg.paths import preprocessed_root, raw_root
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    plans = list(preprocessed_root().glob(f"Dataset{DATASET_ID:03d}_*/plans.json"))
    if not plans:
        generate_dataset(DATASET_ID, NUM_CASES, 0, preset="tiny", seed=DATA_SEED, workers=1, root=raw_root(),
                         progress=False)
        plan_and_preprocess(str(DATASET_ID), workers=1, num_folds=5)
        plans = list(preprocessed_root().glob(f"Dataset{DATASET_ID:03d}_*/plans.json"))
    return plans[0]


def run(trainer: str, modality: str, epochs: int, iterations: int) -> dict:
    from lmkreg.run.train import train

    t0 = time.perf_counter()
    s = train(str(DATASET_ID), modality, 0, trainer=trainer, device="cpu", num_epochs=epochs,
              iterations_per_epoch=iterations, num_workers=1, progress_bar=False, seed=TRAIN_SEED)
    return {"trainer": trainer, "mre_mm": s["mre_mm"], "mre_per_landmark_mm": s.get("mre_per_landmark_mm"),
            "dice_mean": s.get("segmentation_dice_mean"), "dice_per_case": s.get("segmentation_dice_per_case"),
            "steps": s["steps"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="working folder (data, models, results)")
    p.add_argument("-m", "--modality", default="MR", choices=["MR", "US"], help="modality (default MR)")
    p.add_argument("-tr", "--trainer", default="HeatmapMatchingTrainer",
                   help="single-task trainer; its _Seg variant is swept (default HeatmapMatchingTrainer)")
    p.add_argument("--weights", type=float, nargs="+", required=True, help="segmentation weights to train")
    p.add_argument("--epochs", type=int, default=8, help="epochs (default 8)")
    p.add_argument("--iterations", type=int, default=25, help="steps per epoch (default 25: 200 steps)")
    args = p.parse_args(argv)
    os.environ.update({"LMKREG_raw": str(args.root / "raw"), "LMKREG_preprocessed": str(args.root / "pre"),
                       "LMKREG_results": str(args.root / "res")})
    plans_path = prepare(args.root)
    original = plans_path.read_text()
    rows = [{"weight": None, **run(args.trainer, args.modality, args.epochs, args.iterations)}]
    print(json.dumps(rows[-1]), flush=True)
    try:
        for w in args.weights:
            doc = json.loads(original)
            for conf in doc["configurations"].values():
                conf["training"]["segmentation_weight"] = w
            plans_path.write_text(json.dumps(doc, indent=1))
            rows.append({"weight": w, **run(f"{args.trainer}_Seg", args.modality, args.epochs, args.iterations)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        plans_path.write_text(original)
    out = args.root / f"sweep_{args.trainer}_{args.modality}.json"
    out.write_text(json.dumps({"command": "python benchmarks/segmentation_weight_sweep.py " +
                               " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
