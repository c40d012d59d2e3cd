"""``lmkreg_demo``: the whole path on built-in phantom data, in one command.

generate paired MR/TRUS phantoms -> plan and preprocess -> train one model per modality ->
predict the held-out test volumes -> register every MR/US pair -> evaluate (MRE, SRE, Dice,
histograms, QC pictures) -> print where the report is.

Default: a µ-RegPro-like dataset, about 11 minutes on 2 CPU cores.  ``--quick``: the tiny
preset and short training, about 2 minutes, to see every stage work (not to judge accuracy).

The demo checks itself: its last lines say whether both models reached the validation accuracy
the demo expects (``DemoSettings.expected_mre_mm``) and trained long enough (the trainer's
verdict, lmkreg.training.convergence), and if not, what to do.  The verdict is also written to
``OUTPUT/models_verdict.json``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from lmkreg.cli_utils import add_device_option, add_progress_option, dataset_number, friendly_errors, make_parser
from lmkreg.config.plans import Plans
from lmkreg.dataset.layout import Dataset, dataset_folder_name
from lmkreg.evaluation.predicted_masks import LANDMARKS_SURFACE_WEIGHT
from lmkreg.inference.predictor import LandmarkPredictor
from lmkreg.io.atomic import atomic_write_json
from lmkreg.parallel import hide_progress
from lmkreg.paths import raw_root
from lmkreg.phantoms.generator import generate_dataset
from lmkreg.planning.plan_and_preprocess import describe, plan_and_preprocess
from lmkreg.run.evaluate import main as evaluate_main
from lmkreg.run.predict import predict_folder
from lmkreg.run.register import main as register_main
from lmkreg.run.train import model_folder, train
from lmkreg.threads import configure_threads
from lmkreg.training.budget import DEFAULT_LIMIT_FACTOR
from lmkreg.training.registry import find_trainer


@dataclass(frozen=True)
class DemoSettings:
    """One scale of the demo: data size and wall-clock training budget per modality."""

    preset: str
    num_train: int
    num_test: int
    train_minutes: float
    iterations_per_epoch: int
    num_epochs: Optional[int] = None  # a fixed length (tests: deterministic); None = as many as the budget allows
    # validation MRE (mm, fold 0's validation cases) a model must reach to be fit for use: the
    # README's accuracy target for the default scale; a loose check of the path for --quick
    expected_mre_mm: float = 1.5


SETTINGS = {
    "default": DemoSettings("mu_regpro", 40, 10, 5.0, 50),
    "quick": DemoSettings("tiny", 16, 6, 1.0, 20, expected_mre_mm=3.0),
}
DEMO_DATASET_ID = {"default": 900, "quick": 901}  # one id per scale: both may live side by side
DEMO_NAME = "DemoPhantom"


def _stage(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.0f} s{(': ' + what) if what else ''}", flush=True)


def _ensure_dataset(settings: DemoSettings, dataset_id: int, seed: int, progress: bool = True) -> Path:
    """Generate the demo dataset unless an identical one is already there."""

    name = f"{DEMO_NAME}_{settings.preset}"
    folder = raw_root() / dataset_folder_name(dataset_id, name)
    if (folder / "dataset.json").is_file():
        ds = Dataset(folder)
        if len(ds.cases("Tr")) == settings.num_train and len(ds.cases("Ts")) == settings.num_test:
            print(f"      reusing {folder}")
            return folder
    return generate_dataset(dataset_id, settings.num_train, settings.num_test, name=name, preset=settings.preset,
                            seed=seed, root=raw_root(), overwrite=True, progress=progress)


# the most accurate trainer of the accuracy benchmark at CPU training lengths (documentation/benchmarks.md:
# MRE 1.23 / 1.37 mm, SRE 2.00 mm on its own phantom test set, not the demo's)
DEMO_TRAINER = "HeatmapMatchingTrainer"


def predict_test_images(model: Path, images: Path, out: Path, progress: bool = True) -> Path:
    """Predict a folder of test images the way the demo does (fold 0, mirror TTA, as
    lmkreg_predict does by default: the calibrated error radius needs the mirror gap); the
    landmark files (and masks of a segmentation model) go to `out`."""

    report = predict_folder(LandmarkPredictor(model, folds=["0"], mirror_tta=True), images, out, overwrite=True,
                            progress_bar=progress)
    if report.failed:
        raise RuntimeError(f"prediction failed for {sorted(report.failed)}")
    return out


def has_segmentation(trainer: str) -> bool:
    """Whether `trainer`'s models also predict the prostate mask (a ``*_Seg`` trainer)."""

    return bool(getattr(find_trainer(trainer), "has_segmentation", False))


def registration_used(summary: dict) -> tuple[str, dict]:
    """(name, SRE summary) of the registration the demo's transforms use: landmarks+surface
    when the models predicted masks (evaluate's "landmarks_surface" row, the same weight), else
    the landmark one."""
    surface = (summary.get("registration_variants") or {}).get("landmarks_surface")
    if surface and surface.get("sre_mm", {}).get("n"):
        return "landmarks+surface", surface["sre_mm"]
    return "landmarks", summary["sre_predicted_mm"]


def models_verdict(summaries: dict[str, dict], expected_mre_mm: float) -> dict:
    """Whether the trained models are fit for use: each reached `expected_mre_mm` on its
    validation cases and its trainer judged the training long enough."""
    per_modality = {}
    for modality, s in summaries.items():
        reasons = list(s.get("undertrained_reasons", []))
        if not s["mre_mm"] <= expected_mre_mm:
            reasons.insert(0, f"validation MRE {s['mre_mm']:.2f} mm on {s['num_cases']} cases is above the "
                              f"{expected_mre_mm:g} mm expected" + _largest_error_note(s))
        per_modality[modality] = {"fit_for_use": not reasons, "reasons": reasons, "val_mre_mm": s["mre_mm"],
                                  "val_cases": s["num_cases"], "steps": s.get("steps"),
                                  "min_steps": s.get("min_steps")}
    return {"fit_for_use": all(v["fit_for_use"] for v in per_modality.values()),
            "expected_val_mre_mm": expected_mre_mm, "modalities": per_modality}


def _largest_error_note(summary: dict) -> str:
    """" (largest error: case X apex 15.2 mm; median landmark error 1.1 mm)": whether one
    landmark decides the mean (older summaries without these figures: "")."""
    largest, median = summary.get("largest_errors_mm") or [], summary.get("median_landmark_error_mm")
    if not largest or median is None:
        return ""
    top = largest[0]
    return f" (largest error: case {top['case']} {top['landmark']} {top['error_mm']:.1f} mm; median landmark error " \
           f"{median:.1f} mm)"


def verdict_lines(verdict: dict, train_minutes: float) -> list[str]:
    """The demo's closing lines: fit for use or not, why, and what to do."""
    mods = verdict["modalities"]
    figures = ", ".join(f"{m} {v['val_mre_mm']:.2f} mm after {v['steps']} steps" for m, v in mods.items())
    if verdict["fit_for_use"]:
        return [f"Models fit for use: validation MRE {figures} (expected at most "
                f"{verdict['expected_val_mre_mm']:g} mm), and the training converged."]
    lines = [f"Models NOT fit for use (validation MRE {figures}; expected at most "
             f"{verdict['expected_val_mre_mm']:g} mm):"]
    for m, v in mods.items():
        if v["reasons"]:
            lines.append(f"  {m}: " + "; ".join(v["reasons"]))
    lines.append(f"  What to do: run again with more training time (--train-minutes {2 * train_minutes:g}), "
                 f"with fewer other programs using the CPU, or on a GPU (--device cuda).")
    return lines


def run_demo(quick: bool = False, output: Path = Path("lmkreg_demo"), dataset_id: Optional[int] = None,
             trainer: str = DEMO_TRAINER, train_minutes: Optional[float] = None, seed: int = 0,
             workers: int = 2, settings: Optional[DemoSettings] = None, device: Optional[str] = None,
             progress: bool = True) -> dict:
    """Run every stage; returns the evaluation summary (see lmkreg.evaluation).  `settings`
    replaces the default/quick scale (tests use a smaller one).  `progress` False (--no-progress)
    hides every bar, also those the stages turn on explicitly (phantoms, training, prediction),
    which the TQDM_DISABLE of hide_progress cannot reach."""

    settings = settings or SETTINGS["quick" if quick else "default"]
    dataset_id = DEMO_DATASET_ID["quick" if quick else "default"] if dataset_id is None else dataset_id
    minutes = settings.train_minutes if train_minutes is None else train_minutes
    output = Path(output)
    start = time.perf_counter()
    n = 6
    print(configure_threads(workers).describe())

    t = _stage(1, n, f"generating {settings.num_train} training + {settings.num_test} test phantom pairs "
                     f"(preset {settings.preset})")
    folder = _ensure_dataset(settings, dataset_id, seed, progress)
    ds = Dataset(folder)
    _done(t, str(folder))

    t = _stage(2, n, "fingerprint, plans and preprocessing")
    pre = plan_and_preprocess(str(dataset_id), workers=workers)
    plans = Plans.load(pre / "plans.json")
    print(describe(plans))
    _done(t, str(pre / "plans.json"))

    t = _stage(3, n, f"training {trainer} for MR and US, fold 0, about {minutes:g} min each "
                          f"(up to {DEFAULT_LIMIT_FACTOR * minutes:g} min when a model has not converged)")
    summaries = {}
    for modality in ("MR", "US"):
        summaries[modality] = train(str(dataset_id), modality, 0, trainer, device=device, num_workers=workers,
                                    seed=seed, iterations_per_epoch=settings.iterations_per_epoch,
                                    num_epochs=settings.num_epochs, time_budget_s=60 * minutes,
                                    time_limit_s=DEFAULT_LIMIT_FACTOR * 60 * minutes, progress_bar=progress)
        s = summaries[modality]
        print(f"      {modality}: validation MRE {s['mre_mm']:.2f} mm ({s['steps']} optimiser steps in "
              f"{s['epochs']} epochs)")
    verdict = models_verdict(summaries, settings.expected_mre_mm)
    atomic_write_json(output / "models_verdict.json", verdict)
    _done(t)

    t = _stage(4, n, f"predicting landmarks of the {settings.num_test} test volumes per modality")
    predictions = {}
    for modality in ("MR", "US"):
        images = output / "test_images" / modality
        images.mkdir(parents=True, exist_ok=True)
        for case in ds.cases("Ts", modality):
            src = ds.image_path(case, modality, "Ts")
            dst = images / src.name
            if not dst.exists():
                dst.symlink_to(src.resolve())
        predictions[modality] = predict_test_images(model_folder(ds.name, trainer, modality), images,
                                                    output / "predictions" / modality, progress)
    _done(t, str(output / "predictions"))

    surface = has_segmentation(trainer)
    t = _stage(5, n, "rigid MR->US registration of every test pair" +
               (", refined on the predicted gland surfaces" if surface else ""))
    transforms = output / "transforms"
    # a model with a segmentation head predicted the prostate masks: register refines on them, with
    # the landmarks as pairs at the weight of the accuracy benchmark's best row (landmarks+surface,
    # documentation/benchmark_accuracy_seg.md), the weight evaluate scores that row with

    rc = register_main(["--mr-dir", str(predictions["MR"]), "--us-dir", str(predictions["US"]), "-o",
                        str(transforms)] + (["--refine", "surface", "--landmark-weight", str(LANDMARKS_SURFACE_WEIGHT)]
                                            if surface else []) + ([] if progress else ["--no-progress"]))
    if rc != 0:
        print("      some pairs could not be registered (see above)")
    _done(t, str(transforms))

    t = _stage(6, n, "evaluation against the phantoms' ground truth")
    report_dir = output / "evaluation"
    rc = evaluate_main(["-d", str(dataset_id), "--mr-pred", str(predictions["MR"]), "--us-pred",
                        str(predictions["US"]), "-o", str(report_dir), "--split", "Ts", "--qc", "3"]
                       + ([] if progress else ["--no-progress"]))
    if rc != 0:
        raise RuntimeError("evaluation failed (see above)")
    summary = json.loads((report_dir / "evaluation.json").read_text())["summary"]
    _done(t)

    total = time.perf_counter() - start
    print(f"\nlmkreg demo finished in {total / 60:.1f} min.")
    used, sre = registration_used(summary)
    if sre.get("n"):
        print(f"  registration: {used}, SRE {sre['mean']:.2f} mm mean, {sre.get('max', sre.get('worst', float('nan'))):.2f} "
              f"mm worst over {sre['n']} pairs; {summary.get('pairs_flagged', 0)} pair(s) flagged by lmkreg_register"
              + (f", {summary['pairs_two_landmarks']} of them registered from two landmarks (one wrong or missing)"
                 if summary.get("pairs_two_landmarks") else ""))
    print(f"  report:       {report_dir / 'evaluation.md'}")
    print(f"  QC pictures:  {report_dir / 'qc'}")
    print(f"  transforms:   {transforms}")
    print(f"  models:       {model_folder(ds.name, trainer, 'MR').parent}")
    if quick:
        print("  (--quick trains for seconds: the numbers show the path works, not the accuracy)")
    print()
    print("\n".join(verdict_lines(verdict, minutes)), flush=True)
    return summary


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = make_parser("lmkreg_demo", __doc__)
    p.add_argument("--quick", action="store_true", help="tiny phantoms and short training (about 2 min)")
    p.add_argument("-o", "--output", type=Path, default=Path("lmkreg_demo"),
                   help="folder for predictions, transforms and the report (default ./lmkreg_demo)")
    p.add_argument("-d", "--dataset", type=dataset_number, default=None,
                   help=f"dataset id or name (default {DEMO_DATASET_ID['default']}, with --quick {DEMO_DATASET_ID['quick']})")
    p.add_argument("-tr", "--trainer", default=DEMO_TRAINER,
                   help=f"trainer for both modalities (default {DEMO_TRAINER}, the most accurate in the accuracy "
                        f"benchmark; LandmarkTrainer_Variance is the paper's DSNT method)")
    p.add_argument("--train-minutes", type=float, default=None, help=f"training budget per modality in minutes; a model not converged by then trains on, up to "
                        f"{DEFAULT_LIMIT_FACTOR:g} times as long")
    p.add_argument("--seed", type=int, default=0, help="seed of the phantoms and the training (default 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    add_device_option(p, "where to train (default: cuda if available, else cpu)")
    add_progress_option(p)
    args = p.parse_args(argv)
    if args.no_progress:
        hide_progress()
    run_demo(args.quick, args.output, args.dataset, args.trainer, args.train_minutes, args.seed, args.workers,
             device=args.device, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
