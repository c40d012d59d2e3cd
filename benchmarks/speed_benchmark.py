"""Speed benchmark: prediction, training data pipeline and preprocessing, on phantom data.

* Prediction: seconds per MR+US pair from files on disk to landmarks and the rigid transform
  (models loaded once), next to the floor: only reading and resampling the same volumes onto
  the planned grids.  Targets: at most 2x the floor, at most 3 s per pair.
* Training: seconds per step with the real pipeline (background workers, augmentation) next to
  the same step on a batch already in memory.  Target: the pipeline adds at most 10 %.
* Preprocessing: cases per second of lmkreg_plan_and_preprocess's preprocessing stage.

Results go to benchmarks/results/speed.json (and are summarised in documentation/benchmarks.md).
Nothing here is a unit test: the numbers depend on the machine.

    python benchmarks/speed_benchmark.py [--cases 10] [--steps 40] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"


def _setup(root: Path, n_cases: int) -> None:
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "pre"), ("LMKREG_results", "res")):
        os.environ[var] = str(root / sub)


def prediction_benchmark(ds, n_pairs: int) -> dict:
    import SimpleITK as sitk

    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image
    from lmkreg.preprocessing.preprocessor import resample, target_geometry
    from lmkreg.geometry import ImageGeometry
    from lmkreg.registration.landmark_fit import register_landmarks
    from lmkreg.training.run import model_folder

    predictors = {m: LandmarkPredictor(model_folder(ds.name, "LandmarkTrainer", m), folds=["0"]) for m in ("MR", "US")}
    cases = ds.cases("Ts")[:n_pairs]
    full, floor = [], []
    for case in cases:  # warm-up on the first pair is excluded below
        t0 = time.perf_counter()
        preds = {m: predictors[m].predict(read_image(ds.image_path(case, m, "Ts"))) for m in ("MR", "US")}
        register_landmarks(preds["MR"].landmarks, preds["US"].landmarks)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for m in ("MR", "US"):
            image = sitk.ReadImage(str(ds.image_path(case, m, "Ts")), sitk.sitkFloat32)
            resample(image, target_geometry(ImageGeometry.from_image(image), predictors[m].conf))
        floor.append(time.perf_counter() - t0)
    full, floor = full[1:], floor[1:]
    per_pair, per_floor = statistics.median(full), statistics.median(floor)
    return {"pairs_timed": len(full), "seconds_per_pair": per_pair, "floor_seconds_per_pair": per_floor,
            "ratio_to_floor": per_pair / per_floor, "target_ratio": 2.0, "target_seconds": 3.0,
            "meets_targets": bool(per_pair / per_floor <= 2.0 and per_pair <= 3.0)}


def training_benchmark(ds, steps: int, workers: int) -> dict:
    from lmkreg.planning.plan_and_preprocess import preprocessed_folder
    from lmkreg.planning.plans import Plans
    from lmkreg.planning.splits import load_or_create_splits
    from lmkreg.training.data import iterate_batches, make_train_loader
    from lmkreg.training.trainers import LandmarkTrainer

    pre = preprocessed_folder(ds)
    plans = Plans.load(pre / "plans.json")
    out = {}
    for modality in ("MR", "US"):
        splits = load_or_create_splits(pre, ds.cases("Tr"))
        with tempfile.TemporaryDirectory() as tmp:
            t = LandmarkTrainer(plans, modality, 0, pre, Path(tmp), splits, num_workers=workers, progress_bar=False)
            t._setup()
            loader = make_train_loader(t.train_data, t.conf.batch_size, t.augmentation, workers, seed=1,
                                       iterations_per_epoch=steps)
            batches = iterate_batches(loader)
            first = next(batches)
            t.train_step(first)  # warm-up (worker start, first allocations)
            t0 = time.perf_counter()
            n = 0
            for batch in batches:
                t.train_step(batch)
                n += 1
            pipeline = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            for _ in range(n):
                t.train_step(first)
            memory = (time.perf_counter() - t0) / n
        out[modality] = {"steps": n, "batch_size": t.conf.batch_size, "input_size_zyx": t.conf.input_size_zyx,
                         "seconds_per_step_pipeline": pipeline, "seconds_per_step_in_memory": memory,
                         "pipeline_overhead": pipeline / memory - 1, "target_overhead": 0.10,
                         "meets_target": bool(pipeline / memory - 1 <= 0.10),
                         "planned_estimate_seconds": t.conf.estimated_step_seconds}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10, help="training cases to generate (default 10)")
    p.add_argument("--test", type=int, default=6, help="test pairs to time prediction on (default 6)")
    p.add_argument("--steps", type=int, default=40, help="training steps timed per modality (default 40)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="keep the data in this folder instead of a temp dir")
    args = p.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="lmkreg_speed_"))
    _setup(root, args.cases)
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess, preprocess
    from lmkreg.planning.plans import Plans
    from lmkreg.training.run import train

    started = time.perf_counter()
    try:
        if not (root / "raw").exists():
            generate_dataset(951, args.cases, args.test, name="Speed", preset="mu_regpro", seed=3,
                             root=root / "raw", progress=True)
        t0 = time.perf_counter()
        pre = plan_and_preprocess("951", workers=args.workers)
        ds = open_dataset(951)
        # preprocessing alone, timed on a fresh output folder
        plans = Plans.load(pre / "plans.json")
        for conf in plans.configurations.values():
            shutil.rmtree(pre / conf.data_identifier, ignore_errors=True)
        t0 = time.perf_counter()
        preprocess(ds, plans, workers=args.workers)
        prep_s = time.perf_counter() - t0
        n_images = sum(len(ds.cases("Tr", m)) for m in plans.configurations)
        for m in ("MR", "US"):  # briefly trained models: the time does not depend on the weights, but the
            # landmarks must be distinct for the rigid fit
            train("951", m, 0, num_epochs=1, iterations_per_epoch=40, num_workers=0, progress_bar=False)
        result = {
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.is_available()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "preprocessing": {"images": n_images, "seconds": prep_s, "images_per_second": n_images / prep_s,
                              "workers": args.workers},
            "prediction": prediction_benchmark(ds, args.test),
            "training": training_benchmark(ds, args.steps, args.workers),
        }
        result["wall_seconds"] = time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
