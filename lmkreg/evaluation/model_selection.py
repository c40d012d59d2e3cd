"""``lmkreg_find_best_configuration -d ID -m MR|US [-tr T1 T2 ...] [-f 0 1 2 3 4]``.

Model selection from the 5-fold cross-validation, as nnU-Net does, with the paper's statistics
(Table 1): for every trained ``TRAINER__MODALITY`` folder of the dataset, the validation
predictions of all folds (``fold_F/validation/CASE.json``) together cover every training
case once.  Each case's mean radial error (mean over its landmarks, world mm) is computed
against ``landmarksTr``; trainers are ranked by the mean of these per-case MREs and every
pair is compared with a two-sided Wilcoxon signed-rank test, paired per case.  A trainer
missing a fold, or a fold missing validation predictions, is reported and left out.

Single stage vs cascade: a trainer whose localizer and refine stages are trained
(``TRAINER__MOD_localizer`` / ``TRAINER__MOD_refine``) also competes as ``TRAINER+cascade``, scored
on cascade predictions of each fold's validation images made from the raw files
(lmkreg.evaluation.cascade_cv), so the localizer's errors count.

Writes ``$LMKREG_results/DatasetNNN_Name/best_configuration_MOD.json`` and
``cross_validation_MOD.md`` and prints the ``lmkreg_predict`` command of the best trainer.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lmkreg.dataset.layout import Dataset, open_dataset
from lmkreg.errors import ConfigurationError, LmkregError
from lmkreg.io.atomic import atomic_write_json, atomic_write_text
from lmkreg.paths import results_root
from lmkreg.paths import preprocessed_folder
from lmkreg.config.splits import SPLITS_FILE
from lmkreg.evaluation.metrics import radial_errors
from lmkreg.io.landmark_files import read_landmarks
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.evaluation.cascade_cv import CASCADE_SUFFIX, IncompleteTrainer, cascade_cross_validation
from scipy.stats import wilcoxon
from lmkreg.evaluation.report import json_safe

FOLDS = (0, 1, 2, 3, 4)
SIGNIFICANCE = 0.05


@dataclass
class TrainerCV:
    """Cross-validation predictions of one trainer and modality, scored against the ground truth."""

    trainer: str
    modality: str
    folder: Path
    folds: list[int]
    errors_mm: dict[str, dict[str, float]] = field(default_factory=dict)  # case -> landmark -> radial error
    case_fold: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def per_case_mre(self) -> dict[str, float]:
        """Mean radial error of each case (mean over its landmarks that have a true position)."""
        out = {}
        for case, errs in self.errors_mm.items():
            e = np.asarray([v for v in errs.values() if math.isfinite(v)], float)
            if e.size:
                out[case] = float(e.mean())
        return out

    def summary(self) -> dict:
        mre = np.asarray(list(self.per_case_mre.values()), float)
        names = list(next(iter(self.errors_mm.values()))) if self.errors_mm else []
        per_landmark = {}
        for n in names:
            v = np.asarray([errs[n] for errs in self.errors_mm.values() if math.isfinite(errs.get(n, math.nan))])
            per_landmark[n] = float(v.mean()) if v.size else math.nan
        return {"trainer": self.trainer, "num_cases": int(mre.size),
                "mre_mm": float(mre.mean()) if mre.size else math.nan,
                "sd_mm": float(mre.std(ddof=1)) if mre.size > 1 else 0.0 if mre.size else math.nan,
                "median_mm": float(np.median(mre)) if mre.size else math.nan,
                "per_landmark_mm": per_landmark, "folds": list(self.folds)}


def results_folder(dataset: Dataset) -> Path:

    return results_root() / dataset.name


def trainer_folders(folder: Path, modality: str) -> dict[str, Path]:
    """{trainer: folder} of every ``TRAINER__MODALITY`` folder in a dataset's results folder."""
    suffix = f"__{modality}"
    if not Path(folder).is_dir():
        return {}
    return {p.name[: -len(suffix)]: p for p in sorted(Path(folder).iterdir())
            if p.is_dir() and p.name.endswith(suffix) and len(p.name) > len(suffix)}


def load_splits(dataset: Dataset) -> Optional[list[dict]]:
    """The dataset's splits_final.json (never created here), or None if there is none."""

    path = preprocessed_folder(dataset) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(splits, list) or not all(isinstance(f, dict) and "val" in f for f in splits):
        raise ConfigurationError(f"{path}: must be a list of folds with 'train' and 'val' case lists")
    return splits


def collect_trainer_cv(dataset: Dataset, folder: Path, trainer: str, modality: str,
                       folds: Sequence[int] = FOLDS, splits: Optional[list[dict]] = None,
                       subfolder: str = "validation") -> TrainerCV:
    """Read and score the validation predictions of `folds` (``fold_F/<subfolder>``);
    IncompleteTrainer if one is missing."""

    names = list(dataset.spec.landmarks)
    cv = TrainerCV(trainer, modality, Path(folder), [int(f) for f in folds])
    for fold in folds:
        val = Path(folder) / f"fold_{fold}" / subfolder
        if not (val / "summary.json").is_file():
            what = "not trained" if not val.parent.is_dir() else "not finished (no validation/summary.json)"
            raise IncompleteTrainer(f"fold {fold} {what}")
        files = {p.name[: -len(".json")]: p for p in sorted(val.glob("*.json")) if p.name != "summary.json"}
        if splits is not None:
            if int(fold) >= len(splits):
                raise IncompleteTrainer(f"fold {fold} is not in splits_final.json ({len(splits)} folds)")
            expected = set(splits[int(fold)]["val"])
            lacking = sorted(expected - set(files))
            if lacking:
                raise IncompleteTrainer(f"fold {fold} lacks validation predictions of {len(lacking)} case(s) "
                                        f"(e.g. {lacking[0]})")
            foreign = sorted(set(files) - expected)
            if foreign:
                raise IncompleteTrainer(f"fold {fold} has predictions of {len(foreign)} case(s) outside its validation "
                                        f"split (e.g. {foreign[0]}): trained with other splits?")
        for case, path in files.items():
            if case in cv.case_fold:
                raise IncompleteTrainer(f"case {case} is validated in folds {cv.case_fold[case]} and {fold}")
            truth_path = dataset.landmarks_path(case, modality, "Tr")
            if not truth_path.is_file():
                cv.notes.append(f"{case}: no ground truth {truth_path.name}, skipped")
                continue
            try:
                pred = read_landmarks(path)
            except LmkregError as exc:
                raise IncompleteTrainer(f"unreadable prediction: {exc}") from None
            errors = radial_errors(pred, read_lmkreg_json(truth_path), names)
            cv.errors_mm[case] = dict(zip(names, map(float, errors)))
            cv.case_fold[case] = int(fold)
    if not cv.per_case_mre:
        raise IncompleteTrainer("no validation case with ground truth")
    return cv


def collect_cv_results(dataset: Dataset, modality: str, trainers: Optional[Sequence[str]] = None,
                       folds: Sequence[int] = FOLDS, folder: Optional[Path] = None
                       ) -> tuple[dict[str, TrainerCV], dict[str, str]]:
    """({trainer: TrainerCV} of complete trainers, {trainer: why it was left out})."""
    if modality not in dataset.spec.modalities:
        raise ConfigurationError(f"{dataset.name}: unknown modality {modality!r}; dataset has {dataset.spec.modalities}")
    folder = results_folder(dataset) if folder is None else Path(folder)
    found = trainer_folders(folder, modality)
    splits = load_splits(dataset)
    wanted = list(found) if trainers is None else list(dict.fromkeys(trainers))
    complete: dict[str, TrainerCV] = {}
    incomplete: dict[str, str] = {}
    for trainer in wanted:
        if trainer.endswith("+cascade"):
            continue  # below
        if trainer not in found:
            incomplete[trainer] = f"no results folder {folder / f'{trainer}__{modality}'}"
            continue
        try:
            complete[trainer] = collect_trainer_cv(dataset, found[trainer], trainer, modality, folds, splits)
        except IncompleteTrainer as exc:
            incomplete[trainer] = str(exc)
    # each trainer's cascade competes as "TRAINER+cascade": single stage vs cascade

    asked = [t.removesuffix(CASCADE_SUFFIX) for t in wanted if t.endswith(CASCADE_SUFFIX)]
    for name in (list(found) if trainers is None else asked):
        key = name + CASCADE_SUFFIX
        try:
            refine = cascade_cross_validation(dataset, folder, name, modality, folds, splits)
            if refine is not None:
                complete[key] = collect_trainer_cv(dataset, refine, key, modality, folds, splits,
                                                   subfolder="cascade_validation")
            elif name in asked:
                incomplete[key] = f"no trained cascade ({name}__{modality}_localizer and _refine) in {folder}"
        except IncompleteTrainer as exc:
            incomplete[key] = str(exc)
    return complete, incomplete


def wilcoxon_p(a: dict[str, float], b: dict[str, float]) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value of per-case values paired by case, and the number
    of pairs (scipy.stats.wilcoxon with its defaults); NaN if it is undefined (no pairs, all equal)."""

    cases = sorted(set(a) & set(b))
    if not cases:
        return math.nan, 0
    x, y = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
    if np.all(x == y):
        return math.nan, len(cases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = float(wilcoxon(x, y).pvalue)
        except ValueError:
            p = math.nan
    return p, len(cases)


def compare_trainers(results: dict[str, TrainerCV]) -> dict:
    """Ranking by mean per-case MRE (ties: by name) and pairwise Wilcoxon p-values.

    Returns {"ranking": [trainer summaries, best first], "best": name or None,
    "wilcoxon_p": {a: {b: p}}, "pairs": {a: {b: number of paired cases}}}.
    """
    summaries = {t: cv.summary() for t, cv in results.items()}
    order = sorted(summaries, key=lambda t: (summaries[t]["mre_mm"], t))
    per_case = {t: results[t].per_case_mre for t in order}
    pvals: dict[str, dict[str, float]] = {t: {} for t in order}
    pairs: dict[str, dict[str, int]] = {t: {} for t in order}
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            p, n = wilcoxon_p(per_case[a], per_case[b])
            pvals[a][b] = pvals[b][a] = p
            pairs[a][b] = pairs[b][a] = n
    ranking = []
    for rank, t in enumerate(order, 1):
        s = dict(summaries[t], rank=rank)
        if rank > 1:
            s["p_vs_best"] = pvals[t][order[0]]
        ranking.append(s)
    return {"ranking": ranking, "best": order[0] if order else None, "wilcoxon_p": pvals, "pairs": pairs}


def predict_command(dataset_id: int, modality: str, trainer: str, folds: Sequence[int]) -> str:
    if trainer.endswith("+cascade"):
        return predict_command(dataset_id, modality, trainer.removesuffix("+cascade"), folds) + " -c cascade"
    return (f"lmkreg_predict -i INPUT -o OUTPUT -d {dataset_id} -m {modality} -tr {trainer} -f "
            + " ".join(str(f) for f in folds))


def format_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}") + ("*" if p < SIGNIFICANCE else "")


def cross_validation_markdown(dataset: Dataset, modality: str, folds: Sequence[int], comparison: dict,
                              incomplete: dict[str, str], command: Optional[str]) -> str:
    names = list(dataset.spec.landmarks)
    lines = [f"# Cross-validation: {dataset.name}, {modality}", "",
             f"Validation predictions of folds {' '.join(map(str, folds))}, scored against landmarksTr.  "
             "MRE = mean over cases of each case's mean radial error (world mm), ± sd over cases.", "",
             "| rank | trainer | MRE (mm) | median | " + " | ".join(names) + " | cases | p vs best |",
             "|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for s in comparison["ranking"]:
        lm = " | ".join(f"{s['per_landmark_mm'].get(n, math.nan):.2f}" for n in names)
        lines.append(f"| {s['rank']} | {s['trainer']} | {s['mre_mm']:.2f} ± {s['sd_mm']:.2f} | {s['median_mm']:.2f} | "
                     f"{lm} | {s['num_cases']} | {format_p(s['p_vs_best']) if 'p_vs_best' in s else '–'} |")
    order = [s["trainer"] for s in comparison["ranking"]]
    if len(order) > 1:
        lines += ["", f"Wilcoxon signed-rank tests (two-sided, paired per case on the per-case MRE); "
                      f"* p < {SIGNIFICANCE:g} (paper Table 1):", "",
                  "| | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
        for a in order:
            lines.append(f"| {a} | " + " | ".join("–" if a == b else format_p(comparison["wilcoxon_p"][a][b])
                                                 for b in order) + " |")
    if comparison["best"]:
        lines += ["", f"Best: **{comparison['best']}**.  Predict with:", "", f"    {command}"]
    if incomplete:
        lines += ["", "Left out (incomplete):", ""] + [f"- {t}: {why}" for t, why in incomplete.items()]
    return "\n".join(lines) + "\n"


def find_best_configuration(dataset_id: str, modality: str, trainers: Optional[Sequence[str]] = None,
                            folds: Sequence[int] = FOLDS) -> dict:
    """Collect, compare, write best_configuration_MOD.json and cross_validation_MOD.md; returns the JSON
    document (with "best_trainer" None when no trainer is complete)."""
    dataset = open_dataset(dataset_id)
    folds = sorted({int(f) for f in folds})
    results, incomplete = collect_cv_results(dataset, modality, trainers, folds)
    comparison = compare_trainers(results)
    best = comparison["best"]
    command = predict_command(dataset.spec.dataset_id, modality, best, folds) if best else None
    out = results_folder(dataset)
    doc = {"dataset": dataset.name, "dataset_id": dataset.spec.dataset_id, "modality": modality, "folds": folds,
           "best_trainer": best, "model_folder": (str(results[best].folder.parent) if best and best.endswith("+cascade")
                                                  else str(out / f"{best}__{modality}") if best else None),
           "mre_mm": comparison["ranking"][0]["mre_mm"] if best else None,
           "selection": "lowest mean per-case MRE over the cross-validation predictions",
           "ranking": comparison["ranking"], "wilcoxon_p": comparison["wilcoxon_p"], "pairs": comparison["pairs"],
           "incomplete": incomplete, "notes": {t: cv.notes for t, cv in results.items() if cv.notes},
           "predict_command": command}
    if best:

        atomic_write_json(out / f"best_configuration_{modality}.json", json_safe(doc))
        atomic_write_text(out / f"cross_validation_{modality}.md",
                          cross_validation_markdown(dataset, modality, folds, comparison, incomplete, command))
        doc["files"] = [str(out / f"best_configuration_{modality}.json"), str(out / f"cross_validation_{modality}.md")]
    return doc
