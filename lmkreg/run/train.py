"""``lmkreg_train -d DATASET -m MODALITY -f FOLD [-c CONFIGURATION] [-tr TRAINER] [--device cpu|cuda] [--c]``.

Trains one fold (0-4, or 'all') of one configuration of a modality from the plans (default:
the single-stage configuration named by the modality; ``-c localizer`` and ``-c refine``, or
their full names such as ``MR_refine``, train the cascade stages).  Results go to
``$LMKREG_results/DatasetNNN_Name/TRAINER__CONFIGURATION/fold_F/``.  Multi-GPU / multi-node:
launch the same command with ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from lmkreg.cli_utils import add_device_option, add_progress_option, check_unique, friendly_errors, make_parser
from lmkreg.config.plans import PLANS_FILE, Plans
from lmkreg.config.splits import SPLITS_FILE, load_or_create_splits
from lmkreg.dataset.layout import check_dataset_modality, open_dataset
from lmkreg.errors import ConfigurationError
from lmkreg.io.atomic import atomic_write_text
from lmkreg.paths import preprocessed_folder, results_root
from lmkreg.run.calibrate import store_trust_data  # calibration and training statistics (issue 14)
from lmkreg.training.budget import DEFAULT_LIMIT_FACTOR
from lmkreg.training.registry import find_trainer
from lmkreg.training.runtime import select_device
from lmkreg.trust.calibration import Calibration
from lmkreg.trust.error_estimate import fold_all_trust_message

DEFAULT_TRAINER = "LandmarkTrainer"


def model_folder(dataset_name: str, trainer: str, configuration: str) -> Path:
    """The results folder of `trainer` on `configuration` (MR, MR_localizer, MR_refine: a
    single stage is named by its modality)."""
    return results_root() / dataset_name / f"{trainer}__{configuration}"


def configuration_name(plans: Plans, modality: str, configuration: Optional[str]) -> str:
    """The plans' configuration of `modality` that `configuration` names: None -> the modality's
    single stage; 'localizer' / 'refine' -> MODALITY_localizer / MODALITY_refine; a full name
    must belong to `modality`."""
    if configuration is None:
        return modality
    name = configuration if configuration in plans.configurations else f"{modality}_{configuration}"
    conf = plans.configuration(name)
    if conf.modality != modality:
        raise ConfigurationError(f"configuration {name!r} is for modality {conf.modality!r}, not {modality!r}")
    return name


def train(dataset_id: str, modality: str, fold: Union[int, str], trainer: str = DEFAULT_TRAINER,
          device: Optional[str] = None, resume: bool = False, num_epochs: Optional[int] = None,
          iterations_per_epoch: Optional[int] = None, num_workers: int = 2, seed: Optional[int] = None,
          trainer_modules: Sequence[str] = (), progress_bar: bool = True,
          time_budget_s: Optional[float] = None, configuration: Optional[str] = None,
          time_limit_s: Optional[float] = None) -> dict:
    """Train one fold of one configuration (default: the modality's single stage); returns the
    validation summary (MRE per landmark in world mm)."""
    check_run_request(num_epochs, iterations_per_epoch, device)  # empty runs refused before any file is written
    dataset = open_dataset(dataset_id)
    check_dataset_modality(dataset_id, modality)  # -m mr / -m MRI: the dataset's modalities, not the plans' configurations
    pre = preprocessed_folder(dataset)
    plans = Plans.load(pre / PLANS_FILE)
    configuration = configuration_name(plans, modality, configuration)  # the trainer only sees a configuration
    if not (pre / SPLITS_FILE).is_file():
        raise ConfigurationError(f"{pre / SPLITS_FILE} not found: run lmkreg_plan_and_preprocess -d {dataset_id}")
    splits = load_or_create_splits(pre, dataset.cases("Tr"))
    cls = find_trainer(trainer, trainer_modules)
    out_root = model_folder(dataset.name, trainer, configuration)
    out = out_root / (f"fold_{fold}")
    cls._split(splits, fold)  # a fold the splits do not have: refused before the folder exists
    with no_trace_on_early_failure(out_root, out):
        out.mkdir(parents=True, exist_ok=True)
        # the model folder is self-contained for inference: plans and dataset description travel with it
        atomic_write_text(out_root / PLANS_FILE, (pre / PLANS_FILE).read_text())
        shutil.copyfile(dataset.folder / "dataset.json", out_root / "dataset.json")
        t = cls(plans, configuration, fold, pre, out, splits, device=device, num_epochs=num_epochs,
                iterations_per_epoch=iterations_per_epoch, num_workers=num_workers, seed=seed,
                progress_bar=progress_bar, time_budget_s=time_budget_s, time_limit_s=time_limit_s)
        summary = t.run(resume=resume)  # a refine stage's crop offsets: the trainer's stage hook
    store_trust_data(t, out_root, dataset, pre, configuration, trainer_modules, device)
    if str(fold) == "all":  # issue 26: what trust fold all's predictions will have
        cal = Calibration.load(out_root)
        print(fold_all_trust_message(None if cal is None else cal.folds), flush=True)
    return summary


def check_run_request(num_epochs: Optional[int], iterations_per_epoch: Optional[int], device: Optional[str]) -> None:
    """Refuse a run that would train nothing (``--epochs 0`` would replace checkpoint_final.pth by
    an untrained model) or on a device this machine does not have, before anything is written."""

    for flag, value in (("--epochs", num_epochs), ("--iterations", iterations_per_epoch)):
        if value is not None and value < 1:
            raise ConfigurationError(f"{flag} {value}: a training run needs at least 1 (nothing was written)")
    select_device(device)


@contextlib.contextmanager
def no_trace_on_early_failure(out_root: Path, out: Path):
    """Remove the model folder (or fold folder) this run created when the run fails before it
    wrote its first checkpoint: a failed ``-f 7`` or ``-c`` typo leaves no ``fold_7/`` behind."""
    root_existed, fold_existed = out_root.exists(), out.exists()
    try:
        yield
    except BaseException:
        if not any(out.glob("checkpoint_*.pth")):
            if not root_existed:
                shutil.rmtree(out_root, ignore_errors=True)
            elif not fold_existed:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _fold(text: str) -> Union[int, str]:
    if text == "all":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"fold must be a number or 'all', got {text!r}")
    return int(text)


def _time_limit_s(budget_min: Optional[float], limit_min: Optional[float], parser) -> Optional[float]:
    """Seconds a budgeted run may go on when its model is not converged (None without a budget)."""
    if budget_min is None:
        if limit_min is not None:
            parser.error("--time-limit needs --time-budget")
        return None
    if limit_min is None:
        return DEFAULT_LIMIT_FACTOR * 60 * budget_min
    if limit_min < budget_min:
        parser.error(f"--time-limit {limit_min:g} is below --time-budget {budget_min:g} (minutes)")
    return 60 * limit_min


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("lmkreg_train", __doc__)
    p.add_argument("-d", "--dataset", default=None, help="dataset id or name")
    p.add_argument("-m", "--modality", default=None, help="modality as named in dataset.json, e.g. MR or US")
    p.add_argument("-f", "--folds", nargs="+", type=_fold, default=None, metavar="FOLD",
                   help="fold(s) to train, each 0-4, or 'all' to train on every case (several: one after another)")
    # the older spelling 'lmkreg_train DATASET MODALITY FOLD' keeps working, unadvertised
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("-c", "--configuration", default=None,
                   help="configuration of the plans to train: localizer, refine or a full name such as MR_refine "
                        "(default: the single-stage configuration named by the modality)")
    p.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER, help=f"trainer class (default {DEFAULT_TRAINER})")
    p.add_argument("--trainer-module", action="append", default=[], help="extra module (file.py or dotted) with trainers")
    add_device_option(p, "where training runs (default: cuda if available)")
    p.add_argument("--c", dest="resume", action="store_true", help="continue from checkpoint_latest.pth")
    p.add_argument("--epochs", type=int, default=None, help="override the planned number of epochs")
    p.add_argument("--iterations", type=int, default=None, help="override iterations per epoch")
    p.add_argument("--workers", type=int, default=2, help="data augmentation worker processes (default 2)")
    p.add_argument("--seed", type=int, default=None, help="override the planned seed")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="fit the number of optimiser steps into this many minutes (re-fitted after every epoch from the steady speed)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help=f"with --time-budget: a model not yet fit for use when the budget ends trains on, a quarter "
                        f"of the budget at a time, up to this many minutes (default {DEFAULT_LIMIT_FACTOR:g} times "
                        f"the budget; give the budget itself to stop exactly at the budget)")
    add_progress_option(p)
    return p


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.legacy:
        if len(args.legacy) != 3 or args.dataset or args.modality or args.folds:
            p.error("give -d DATASET -m MODALITY -f FOLD")
        args.dataset, args.modality = args.legacy[0], args.legacy[1]
        try:
            args.folds = [_fold(args.legacy[2])]
        except argparse.ArgumentTypeError as exc:
            p.error(str(exc))
    missing = [o for o, v in (("-d/--dataset", args.dataset), ("-m/--modality", args.modality),
                              ("-f/--folds", args.folds)) if not v]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    check_unique(p, "-f/--folds", args.folds)
    for fold in args.folds:
        try:
            summary = train(args.dataset, args.modality, fold, args.trainer, args.device, args.resume, args.epochs,
                            args.iterations, args.workers, args.seed, args.trainer_module,
                            progress_bar=not args.no_progress,
                            time_budget_s=None if args.time_budget is None else 60 * args.time_budget,
                            time_limit_s=_time_limit_s(args.time_budget, args.time_limit, p),
                            configuration=args.configuration)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if summary:
            print(f"fold {fold}: validation MRE {summary['mre_mm']:.2f} mm over {summary['num_cases']} case(s)")
        if summary and summary.get("refine_crop_offsets"):  # which jitter the refine crops had, and why
            print(f"fold {fold}: refine crop jitter {summary['refine_crop_offsets']['source']}: "
                  f"{summary['refine_crop_offsets']['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
