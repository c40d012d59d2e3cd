"""Speed benchmark: prediction, training data pipeline and preprocessing, on phantom data.

* Prediction: seconds per MR+US pair from files on disk to landmarks and the rigid transform
  (models loaded once), next to the floor: only reading and resampling the same volumes onto
  the planned grids.  Targets: at most 2x the floor, at most 3 s per pair.
* Training: seconds per step with the real pipeline (background workers, augmentation) next to
  the same step on a batch already in memory.  Target: the pipeline adds at most 10 %.
* Preprocessing: cases per second of lmkreg_plan_and_preprocess's preprocessing stage.

Results go to benchmarks/results/speed.json (and are summarised in documentation/benchmarks.md).
Nothing here is a unit test: the numbers depend on the machine.

    python benchmarks/speed_benchmark.py [--presets mu_regpro paper] [--cases 8] [--test 6] [--steps 80]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
import SimpleITK as sitk
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"
REPORT = Path(__file__).resolve().parents[1] / "documentation" / "benchmark_speed.md"


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
    from lmkreg.run.train import model_folder

    predictors = {m: LandmarkPredictor(model_folder(ds.name, "LandmarkTrainer", m), folds=["0"]) for m in ("MR", "US")}
    cases = ds.cases("Ts")[:n_pairs]
    full, floor, stages = [], [], []
    for case in cases:  # warm-up on the first pair is excluded below
        t0 = time.perf_counter()
        preds = {m: predictors[m].predict(read_image(ds.image_path(case, m, "Ts"))) for m in ("MR", "US")}
        register_landmarks(preds["MR"].landmarks, preds["US"].landmarks)
        full.append(time.perf_counter() - t0)
        # the floor reads with whichever is faster, SimpleITK alone or our checked reader
        pair_floor = 0.0
        for m in ("MR", "US"):
            path, reads = ds.image_path(case, m, "Ts"), []
            for reader in (lambda p: sitk.ReadImage(str(p), sitk.sitkFloat32), read_image):
                t0 = time.perf_counter()
                image = reader(path)
                reads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            resample(image, target_geometry(ImageGeometry.from_image(image), predictors[m].conf))
            pair_floor += min(reads) + time.perf_counter() - t0
        floor.append(pair_floor)
        # where the time goes (the same pair again, stage by stage, both modalities summed)
        stage = dict.fromkeys(("read", "preprocess", "network"), 0.0)
        for m in ("MR", "US"):
            t0 = time.perf_counter()
            image = read_image(ds.image_path(case, m, "Ts"))
            t1 = time.perf_counter()
            array, grid = predictors[m].preprocess(image)
            t2 = time.perf_counter()
            predictors[m].predict_array(array, grid)
            t3 = time.perf_counter()
            stage["read"] += t1 - t0
            stage["preprocess"] += t2 - t1
            stage["network"] += t3 - t2
        stages.append(stage)
    full, floor, stages = full[1:], floor[1:], stages[1:]
    per_pair, per_floor = statistics.median(full), statistics.median(floor)
    return {"pairs_timed": len(full), "seconds_per_pair": per_pair, "floor_seconds_per_pair": per_floor,
            "stage_seconds_per_pair": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
            "optimized_cpu_modules": all(all(p.optimized) for p in predictors.values()),
            "ratio_to_floor": per_pair / per_floor, "target_ratio": 2.0, "target_seconds": 3.0,
            "meets_targets": bool(per_pair / per_floor <= 2.0 and per_pair <= 3.0)}


def training_benchmark(ds, steps: int, workers: int) -> dict:
    from lmkreg.paths import preprocessed_folder
    from lmkreg.config.plans import Plans
    from lmkreg.config.splits import load_or_create_splits
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
            # pipeline and in-memory steps alternate in blocks, so a drift of the machine's speed
            # (other tenants, clock) falls on both sides of the ratio
            rounds, block = ROUNDS, max(1, steps // ROUNDS)
            loader = make_train_loader(t.train_data, t.conf.batch_size, t.augmentation, workers, seed=1,
                                       iterations_per_epoch=rounds * block + 1)
            batches = iterate_batches(loader)
            first = next(batches)
            t.train_step(first)  # warm-up (worker start, first allocations)
            pipe_s = mem_s = 0.0
            ratios = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _, batch in zip(range(block), batches):
                    t.train_step(batch)
                t1 = time.perf_counter()
                for _ in range(block):
                    t.train_step(first)
                t2 = time.perf_counter()
                pipe_s, mem_s = pipe_s + t1 - t0, mem_s + t2 - t1
                ratios.append((t1 - t0) / (t2 - t1))
            for _ in batches:  # let the loader finish cleanly
                pass
            n = rounds * block
            pipeline, memory = pipe_s / n, mem_s / n
        out[modality] = {"steps": n, "rounds": rounds, "overhead_per_round": [r - 1 for r in ratios],
                         "batch_size": t.conf.batch_size, "input_size_zyx": t.conf.input_size_zyx,
                         "seconds_per_step_pipeline": pipeline, "seconds_per_step_in_memory": memory,
                         "pipeline_overhead": pipeline / memory - 1, "target_overhead": 0.10,
                         "meets_target": bool(pipeline / memory - 1 <= 0.10),
                         "planned_estimate_seconds": t.conf.estimated_step_seconds}
    return out


ROUNDS = 4  # alternating blocks of pipeline / in-memory training steps


PRESET_IDS = {"mu_regpro": 951, "paper": 952, "tiny": 953, "pelvic": 954}
# the cascade's speed (per pair, vs the read floor) and a whole 512x512x300 volume are measured by
# benchmarks/cascade_benchmark.py


def benchmark_preset(preset: str, root: Path, args) -> dict:
    """All three measurements on one phantom geometry preset (its own dataset id)."""
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess, preprocess
    from lmkreg.config.plans import Plans
    from lmkreg.run.train import train

    dataset_id = PRESET_IDS[preset]
    if not any((root / "raw").glob(f"Dataset{dataset_id}_*")):
        generate_dataset(dataset_id, args.cases, args.test, name=f"Speed_{preset}", preset=preset, seed=3,
                         root=root / "raw", progress=True)
    pre = plan_and_preprocess(str(dataset_id), workers=args.workers)
    ds = open_dataset(dataset_id)
    plans = Plans.load(pre / "plans.json")
    for conf in plans.configurations.values():  # preprocessing alone, timed on a fresh output folder
        shutil.rmtree(pre / conf.data_identifier, ignore_errors=True)
    t0 = time.perf_counter()
    preprocess(ds, plans, workers=args.workers)
    prep_s = time.perf_counter() - t0
    n_images = sum(len(ds.cases("Tr", c.modality)) for c in plans.configurations.values())
    for m in ("MR", "US"):  # briefly trained models: the time does not depend on the weights, but the
        # landmarks must be distinct for the rigid fit
        train(str(dataset_id), m, 0, num_epochs=1, iterations_per_epoch=40, num_workers=0, progress_bar=False)
    reader = sitk.ImageFileReader()
    shapes = {}
    for m in ("MR", "US"):
        reader.SetFileName(str(ds.image_path(ds.cases("Ts")[0], m, "Ts")))
        reader.ReadImageInformation()
        shapes[m] = list(reversed(reader.GetSize()))
    return {"image_shapes_zyx": shapes,
            "preprocessing": {"images": n_images, "seconds": prep_s, "images_per_second": n_images / prep_s,
                              "workers": args.workers},
            "prediction": prediction_benchmark(ds, args.test),
            "training": training_benchmark(ds, args.steps, args.workers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["mu_regpro", "paper"], choices=sorted(PRESET_IDS),
                   help="phantom geometry presets to measure (default mu_regpro paper)")
    p.add_argument("--cases", type=int, default=8, help="training cases to generate per preset (default 8)")
    p.add_argument("--test", type=int, default=6, help="test pairs to time prediction on (default 6)")
    p.add_argument("--steps", type=int, default=80,
                   help="training steps timed per modality on each side, in 4 alternating blocks (default 80)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="keep the data in this folder instead of a temp dir")
    args = p.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="lmkreg_speed_"))
    _setup(root, args.cases)
    started = time.perf_counter()
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.is_available()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/speed_benchmark.py " + " ".join(sys.argv[1:]), "presets": {}}
    try:
        for preset in args.presets:
            result["presets"][preset] = benchmark_preset(preset, root, args)
            print(json.dumps({preset: result["presets"][preset]}, indent=2), flush=True)
        result["wall_seconds"] = time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    REPORT.write_text(report(result))
    print(f"wrote {RESULTS} and {REPORT}")


def report(r: dict) -> str:
    """Markdown summary of speed.json."""
    m = r["machine"]
    yes = {True: "yes", False: "**no**"}
    L = ["# Speed benchmark (phantoms)", "",
         f"Command: `{r['command']}`  ",
         f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
         f"CUDA {m['cuda']}; measured {r['date']}, wall time {r['wall_seconds'] / 60:.1f} min.", "",
         "## Prediction (models loaded once; MR + US pair from files on disk to landmarks and transform)", "",
         "| preset | image shapes (z, y, x) MR / US | s per pair | floor: read + resample (s) | ratio | "
         "target ≤ 2× and ≤ 3 s |", "|---|---|---|---|---|---|"]
    for preset, d in r["presets"].items():
        pr, sh = d["prediction"], d["image_shapes_zyx"]
        L.append(f"| {preset} | {'×'.join(map(str, sh['MR']))} / {'×'.join(map(str, sh['US']))} | "
                 f"{pr['seconds_per_pair']:.3f} | {pr['floor_seconds_per_pair']:.3f} | {pr['ratio_to_floor']:.2f} | "
                 f"{yes[pr['meets_targets']]} |")
    L += ["", "The floor reads each volume with whichever is faster, `sitk.ReadImage` alone or lmkreg's checked "
          "reader, then resamples it onto the planned grid. Time per pair, stage by stage (both modalities, "
          "median):", "", "| preset | read (s) | preprocess (s) | networks (s) |", "|---|---|---|---|"]
    for preset, d in r["presets"].items():
        st = d["prediction"].get("stage_seconds_per_pair")
        if st:
            L.append(f"| {preset} | {st['read']:.3f} | {st['preprocess']:.3f} | {st['network']:.3f} |")
    L += ["", "## Training step: real data pipeline vs the same step on a batch in memory", "",
          "Steps with the real pipeline (background workers loading and augmenting) alternate with steps on one "
          "batch held in memory, in blocks, so a change in the machine's speed falls on both sides.", "",
          "| preset | modality | input (z, y, x) × batch | steps per side | s/step pipeline | s/step in memory | "
          "overhead | per block | target ≤ 10 % |", "|---|---|---|---|---|---|---|---|---|"]
    for preset, d in r["presets"].items():
        for mod, t in d["training"].items():
            blocks = t.get("overhead_per_round") or [t["pipeline_overhead"]]
            L.append(f"| {preset} | {mod} | {'×'.join(map(str, t['input_size_zyx']))} × {t['batch_size']} | "
                     f"{t['steps']} | {t['seconds_per_step_pipeline']:.3f} | {t['seconds_per_step_in_memory']:.3f} | "
                     f"{100 * t['pipeline_overhead']:.1f} % | {100 * min(blocks):.0f} to {100 * max(blocks):.0f} % | "
                     f"{yes[t['meets_target']]} |")
    L += ["", "## Preprocessing", "", "| preset | images | workers | images per second |", "|---|---|---|---|"]
    for preset, d in r["presets"].items():
        pp = d["preprocessing"]
        L.append(f"| {preset} | {pp['images']} | {pp['workers']} | {pp['images_per_second']:.2f} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
