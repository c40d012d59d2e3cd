"""Cascade benchmark (issue 13): single stage vs localizer + refine cascade, on one phantom preset.

For every trainer and modality: the single stage, the localizer and the refine stage are trained
on all training cases (fold 'all', the same epochs each), then the test set is predicted twice,
single stage (``-c MR``) and cascade (the default of ``lmkreg_predict``).  Reported per trainer:
MRE per modality, SRE of the landmark-based rigid MR->US fit against the phantom's true transform,
and seconds per pair from the files on disk to landmarks and transform (models loaded), next
to the floor of only reading the two volumes.  Nothing is tuned on the test set: every trainer
is in every table and the settings are fixed by the command line.

``--whole-volume`` also predicts one 512 x 512 x 300 MR volume with the first trainer's cascade
in a separate process (models loaded and warmed up first) and reports the prediction time
and that process's peak resident memory (targets: <= 10 s on 2 cores, < 3 GB).

``--speed-only`` measures only that, without any training: it plans the preset from a small
phantom set (the planner's real configurations, cascade forced), creates each trainer's MR
localizer and refine networks with random initial weights and saves them through the normal
checkpoint code (the time and memory of a prediction do not depend on the weights: the
networks' sizes come from the plans, and a refine step always blends the crops at the 8
lattice points around its anchor), then predicts one 512 x 512 x 300 MR volume in a separate
process per trainer and per mirror-TTA setting (models loaded and warmed up on another image
first, threads set as lmkreg_predict sets them).  Default trainers: LandmarkTrainer (the U-Net
every DSNT variant and heatmap matching use) and DirectRegressionTrainer (encoder + dense
head).  Writes benchmarks/results/cascade_speed.json (not with --no-write).

    python benchmarks/cascade_benchmark.py --speed-only --preset pelvic
    python benchmarks/cascade_benchmark.py --speed-only --preset pelvic_tiny --speed-cases 5 \
        --whole-shape 40 64 64 --trainers LandmarkTrainer --no-write      # smoke run

    python benchmarks/cascade_benchmark.py --preset mu_regpro --train 40 --test 40 --epochs 20
    python benchmarks/cascade_benchmark.py --preset pelvic --train 40 --test 40 --epochs 20 --whole-volume
    python benchmarks/cascade_benchmark.py --tiny      # smoke run: pelvic_tiny, minutes, numbers meaningless

Writes benchmarks/results/cascade_PRESET.json and documentation/benchmark_cascade_PRESET.md
(``--tiny``: both in the --root folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ["LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance", "DirectRegressionTrainer",
            "HeatmapMatchingTrainer"]
DATASET_IDS = {"mu_regpro": 970, "pelvic": 971, "paper": 972, "pelvic_tiny": 973, "tiny": 974}
WHOLE_SHAPE_ZYX = (300, 512, 512)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _mean_sd(values) -> list[float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return [float(v.mean()), float(v.std())] if v.size else [float("nan"), float("nan")]


def evaluate_mode(ds, trainer: str, configuration: str, names: list[str]) -> dict:
    """Predict every test pair with one trainer in one mode ('single' or 'cascade')."""
    from lmkreg.evaluation.metrics import surface_registration_error
    from lmkreg.geometry.mesh import mask_to_mesh, surface_points
    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.inference.cascade import build_predictor
    from lmkreg.io.images import read_image
    from lmkreg.io.transform_json import read_rigid_transform
    from lmkreg.io.landmarks import read_lmkreg_json
    from lmkreg.paths import results_root
    from lmkreg.registration.landmark_fit import register_landmarks

    res = results_root() / ds.name
    predictors = {m: build_predictor(res, trainer, m, m if configuration == "single" else "cascade", folds=["all"])
                  for m in ("MR", "US")}
    errors = {"MR": [], "US": []}
    sre, seconds, floor = [], [], []
    for i, case in enumerate(ds.cases("Ts")):
        t0 = time.perf_counter()
        preds = {m: predictors[m].predict(read_image(ds.image_path(case, m, "Ts"))) for m in ("MR", "US")}
        fit = register_landmarks(preds["MR"].landmarks, preds["US"].landmarks)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        for m in ("MR", "US"):
            read_image(ds.image_path(case, m, "Ts"))
        if i > 0:  # the first pair warms up
            seconds.append(dt)
            floor.append(time.perf_counter() - t1)
        for m in ("MR", "US"):
            truth = read_lmkreg_json(ds.landmarks_path(case, m, "Ts"))
            for n in names:
                if truth.points.get(n) is not None:
                    errors[m].append(float(np.linalg.norm(preds[m].landmarks.points[n] - truth.points[n])))
        true_t = read_rigid_transform(ds.transform_path(case, "Ts"))
        pts = surface_points(mask_to_mesh(read_image(ds.mask_path(case, "MR", "Ts"), is_mask=True)), 2000)
        sre.append(surface_registration_error(pts, true_t, fit.transform))
    return {"mre_mm": {m: _mean_sd(e) for m, e in errors.items()}, "sre_mm": _mean_sd(sre),
            "seconds_per_pair": float(np.median(seconds)) if seconds else None,
            "floor_read_seconds_per_pair": float(np.median(floor)) if floor else None}


SPEED_CHILD = r"""
import json, resource, sys, time
from lmkreg.threads import configure_threads
threads = configure_threads()  # as lmkreg_predict does
import torch
from lmkreg.inference.cascade import build_predictor
from lmkreg.io.images import read_image
res, trainer, path, warm, tta = sys.argv[1:6]
t0 = time.perf_counter()
predictor = build_predictor(res, trainer, "MR", None, folds=["all"], mirror_tta=tta == "on")
t1 = time.perf_counter()
predictor.predict(read_image(warm))  # warm-up on another image
predictor.predict(read_image(warm))
loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t2 = time.perf_counter(); image = read_image(path); t3 = time.perf_counter()
pred = predictor.predict(image); t4 = time.perf_counter()
print(json.dumps({"kind": type(predictor).__name__, "mirror_tta": tta == "on",
                  "torch_threads": torch.get_num_threads(), "load_seconds": t1 - t0,
                  "read_seconds": t3 - t2, "predict_seconds": t4 - t3, "read_and_predict_seconds": t4 - t2,
                  "refine_crops": len(getattr(pred, "crop_centres_lps", [])),
                  "peak_rss_gb_models_loaded_and_warm": loaded_kb / 1e6,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def write_whole_volume(source_image: Path, path: Path, shape_zyx=WHOLE_SHAPE_ZYX,
                       spacing_xyz=(0.5, 0.5, 0.6)) -> Path:
    """A volume of `shape_zyx` voxels around the centre of `source_image` (resampled, linear)."""
    import SimpleITK as sitk

    from lmkreg.io.images import read_image, write_image

    src = read_image(source_image)
    size_xyz = tuple(int(n) for n in shape_zyx[::-1])
    centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    ref = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    ref.SetSpacing(spacing_xyz)
    ref.SetOrigin((centre - (np.asarray(size_xyz) - 1) / 2 * np.asarray(spacing_xyz)).tolist())
    big = sitk.Resample(sitk.Cast(src, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    return write_image(big, path)


def random_cascade_models(ds, trainer: str, configurations) -> list[Path]:
    """Model folders TRAINER__CONF (fold 'all') holding randomly initialised networks, saved by
    lmkreg's checkpoint code with the plans and dataset description, like a trained model."""
    import shutil

    import torch

    from lmkreg.paths import results_root
    from lmkreg.planning.plan_and_preprocess import preprocessed_folder
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.training.checkpoint import save_checkpoint
    from lmkreg.training.registry import find_trainer

    pre = preprocessed_folder(ds)
    plans = Plans.load(pre / PLANS_FILE)
    folders = []
    for i, name in enumerate(configurations):
        folder = results_root() / ds.name / f"{trainer}__{name}"
        (folder / "fold_all").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pre / PLANS_FILE, folder / PLANS_FILE)
        shutil.copyfile(ds.folder / "dataset.json", folder / "dataset.json")
        conf = plans.configuration(name)
        torch.manual_seed(i)
        net = find_trainer(trainer).build_network(conf, len(plans.landmarks))
        save_checkpoint({"trainer": trainer, "modality": name, "fold": "all", "epoch": 0, "network": net.state_dict(),
                         "configuration": conf.to_json(), "landmarks": list(plans.landmarks),
                         "note": "random initial weights (speed benchmark)"},
                        folder / "fold_all" / "checkpoint_final.pth")
        folders.append(folder)
    return folders


def speed_only(args) -> dict:
    """See the module docstring (--speed-only)."""
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess, preprocessed_folder
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.paths import results_root

    root = args.root / f"speed_{args.preset}"
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "pre"), ("LMKREG_results", "res")):
        os.environ[var] = str(root / sub)
    dataset_id = DATASET_IDS[args.preset]
    if not any((root / "raw").glob(f"Dataset{dataset_id}_*")):
        log(f"generating {args.speed_cases} + 1 {args.preset} pairs")
        generate_dataset(dataset_id, args.speed_cases, 1, name=f"Speed_{args.preset}", preset=args.preset, seed=13,
                         root=root / "raw", workers=args.workers, progress=False)
    plan_and_preprocess(str(dataset_id), workers=args.workers, num_folds=min(5, args.speed_cases),
                        skip_preprocessing=True, cascade=True)
    ds = open_dataset(dataset_id)
    plans = Plans.load(preprocessed_folder(ds) / PLANS_FILE)
    stages = plans.cascade("MR")
    if stages is None:  # pragma: no cover - cascade=True always plans one
        raise SystemExit("the plans have no MR cascade")
    shape = tuple(args.whole_shape) if args.whole_shape else WHOLE_SHAPE_ZYX
    volume = root / f"whole_{'x'.join(str(n) for n in shape[::-1])}.nii.gz"
    if not volume.is_file():  # the same volume for every run (it depends on the seed only)
        write_whole_volume(ds.image_path(ds.cases("Ts")[0], "MR", "Ts"), volume, shape)
    warm = ds.image_path(ds.cases("Tr")[0], "MR")
    for trainer in args.trainers:
        random_cascade_models(ds, trainer, stages)
    env = os.environ.copy()
    if args.threads:
        env["LMKREG_NUM_THREADS"] = str(args.threads)
    runs = []
    for trainer in [] if args.prepare_only else args.trainers:
        for tta in ("on", "off"):
            log(f"predict {volume.name} with {trainer}'s random-weight cascade, mirror TTA {tta}")
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(results_root() / ds.name), trainer,
                                  str(volume), str(warm), tta], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                runs.append({"trainer": trainer, "mirror_tta": tta == "on", "error": out.stderr[-2000:]})
            else:
                runs.append({"trainer": trainer, **json.loads(out.stdout.strip().splitlines()[-1])})
            runs[-1]["load_1min_before"] = load
            log(json.dumps(runs[-1]))
    confs = {n: {"spacing_zyx": plans.configuration(n).spacing_zyx, "input_size_zyx": plans.configuration(n).input_size_zyx,
                 "features_per_stage": plans.configuration(n).network.features_per_stage} for n in stages}
    return {"preset": args.preset, "command": "python benchmarks/cascade_benchmark.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "weights": "random initial weights saved as checkpoints: the time and memory of a prediction do not "
                       "depend on the weights (network sizes come from the plans; every refine step blends 8 crops)",
            "planned_from_cases": args.speed_cases, "configurations": confs, "shape_zyx": list(shape),
            "spacing_xyz_mm": [0.5, 0.5, 0.6], "runs": runs,
            "targets": {"predict_seconds": 10.0, "peak_rss_gb": 3.0, "cores": 2}}


WHOLE_VOLUME_CHILD = r"""
import json, resource, sys, time
import numpy as np, SimpleITK as sitk
from lmkreg.inference.cascade import build_predictor
from lmkreg.io.images import read_image
res, trainer, path, warm = sys.argv[1:5]
predictor = build_predictor(res, trainer, "MR", None, folds=["all"])
predictor.predict(read_image(warm))  # warm-up on a test image
loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); image = read_image(path); t1 = time.perf_counter()
pred = predictor.predict(image); t2 = time.perf_counter()
print(json.dumps({"read_seconds": t1 - t0, "predict_seconds": t2 - t1, "kind": type(predictor).__name__,
                  "peak_rss_gb_models_loaded": loaded_kb / 1e6,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def whole_volume(ds, trainer: str, folder: Path) -> dict:
    """A 512 x 512 x 300 MR volume (a test MR resampled onto a 0.5 x 0.5 x 0.6 mm grid of that
    size around it), predicted in a fresh process."""
    from lmkreg.paths import results_root

    path = write_whole_volume(ds.image_path(ds.cases("Ts")[0], "MR", "Ts"), folder / "whole_512x512x300.nii.gz")
    out = subprocess.run([sys.executable, "-c", WHOLE_VOLUME_CHILD, str(results_root() / ds.name), trainer, str(path),
                          str(ds.image_path(ds.cases("Ts")[-1], "MR", "Ts"))],
                         capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(shape_zyx=list(WHOLE_SHAPE_ZYX), targets={"predict_seconds": 10.0, "peak_rss_gb": 3.0})
    return result


def report(r: dict) -> str:
    L = [f"# Cascade benchmark, preset {r['preset']}", "",
         f"Command: `{r['command']}` ({r['minutes']:.1f} min on {r['machine']}). Every trainer and stage trained on "
         f"{r['train']} cases for {r['epochs']} epochs of {r['iterations']} steps; {r['test']} test pairs.", "",
         "| trainer | mode | MRE MR (mm) | MRE US (mm) | SRE (mm) | s per pair | read floor (s) |",
         "|---|---|---|---|---|---|---|"]
    for trainer, modes in r["results"].items():
        for mode, d in modes.items():
            f = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"  # noqa: E731
            sp = d["seconds_per_pair"]
            fl = d["floor_read_seconds_per_pair"]
            L.append(f"| {trainer} | {mode} | {f(d['mre_mm']['MR'])} | {f(d['mre_mm']['US'])} | {f(d['sre_mm'])} | "
                     f"{'–' if sp is None else f'{sp:.3f}'} | {'–' if fl is None else f'{fl:.3f}'} |")
    if "whole_volume" in r:
        w = r["whole_volume"]
        L += ["", "Whole 512×512×300 MR volume (cascade, models loaded and warmed up):",
              "", f"```\n{json.dumps(w, indent=1)}\n```"]
    return "\n".join(L) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mu_regpro", choices=sorted(DATASET_IDS))
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--trainers", nargs="+", default=TRAINERS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--whole-volume", action="store_true", help="also time a 512x512x300 volume")
    p.add_argument("--root", type=Path, default=Path.home() / "lmkreg_cascade_benchmark")
    p.add_argument("--tiny", action="store_true", help="smoke run (pelvic_tiny, 6+3 cases, 1 epoch of 5 steps)")
    p.add_argument("--speed-only", action="store_true",
                   help="no training: time one whole MR volume with random-weight cascades (see above)")
    p.add_argument("--speed-cases", type=int, default=6, help="--speed-only: phantom cases to plan from")
    p.add_argument("--whole-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="--speed-only: volume size in voxels (default 300 512 512)")
    p.add_argument("--no-write", action="store_true", help="--speed-only: print the results, write no file")
    p.add_argument("--threads", type=int, default=None,
                   help="--speed-only: torch threads of the predicting process (default: lmkreg's policy, the free "
                        "cores)")
    p.add_argument("--prepare-only", action="store_true",
                   help="--speed-only: generate, plan, write the models and the volume, time nothing")
    args = p.parse_args()
    if args.speed_only:
        start = time.time()
        if args.preset == "mu_regpro" and "--preset" not in sys.argv:
            args.preset = "pelvic"
        if "--trainers" not in sys.argv:  # the DSNT variants and heatmap matching run the same U-Net
            args.trainers = ["LandmarkTrainer", "DirectRegressionTrainer"]
        r = speed_only(args)
        r["minutes"] = (time.time() - start) / 60
        print(json.dumps(r, indent=1))
        if not args.no_write and not args.prepare_only:
            out = REPO / "benchmarks" / "results" / "cascade_speed.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(r, indent=1) + "\n")
            log(f"wrote {out}")
        return
    if args.tiny:
        args.preset, args.train, args.test, args.epochs, args.iterations = "pelvic_tiny", 6, 3, 1, 5
        args.trainers = args.trainers[:1] + ["HeatmapMatchingTrainer"] if args.trainers == TRAINERS else args.trainers
        args.whole_volume = True
    start = time.time()
    root = args.root / args.preset
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "pre"), ("LMKREG_results", "res")):
        os.environ[var] = str(root / sub)
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.run.train import train

    dataset_id = DATASET_IDS[args.preset]
    if not any((root / "raw").glob(f"Dataset{dataset_id}_*")):
        log(f"generating {args.train} + {args.test} {args.preset} pairs")
        generate_dataset(dataset_id, args.train, args.test, name=f"Cascade_{args.preset}", preset=args.preset,
                         seed=13, root=root / "raw", workers=args.workers)
    plan_and_preprocess(str(dataset_id), workers=args.workers, num_folds=min(5, args.train), cascade=True)
    ds = open_dataset(dataset_id)
    names = list(ds.spec.landmarks)
    results: dict = {}
    for trainer in args.trainers:
        for m in ("MR", "US"):
            for conf in (None, "localizer", "refine"):
                log(f"train {trainer} {m} {conf or 'single'}")
                train(str(dataset_id), m, "all", trainer, num_epochs=args.epochs, iterations_per_epoch=args.iterations,
                      num_workers=args.workers, progress_bar=False, configuration=conf)
        results[trainer] = {mode: evaluate_mode(ds, trainer, mode, names) for mode in ("single", "cascade")}
        log(f"{trainer}: {json.dumps(results[trainer])}")
    r = {"preset": args.preset, "command": "python benchmarks/cascade_benchmark.py " + " ".join(sys.argv[1:]),
         "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
         "train": args.train, "test": args.test, "epochs": args.epochs, "iterations": args.iterations,
         "results": results}
    if args.whole_volume:
        r["whole_volume"] = whole_volume(ds, args.trainers[0], root)
        log(f"whole volume: {r['whole_volume']}")
    r["minutes"] = (time.time() - start) / 60
    # a smoke run's numbers mean nothing: they stay in its own folder
    out = root / f"cascade_{args.preset}.json" if args.tiny else REPO / "benchmarks" / "results" / f"cascade_{args.preset}.json"
    doc = root / f"benchmark_cascade_{args.preset}.md" if args.tiny else REPO / "documentation" / f"benchmark_cascade_{args.preset}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    doc.write_text(report(r))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
