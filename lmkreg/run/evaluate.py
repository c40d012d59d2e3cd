"""``lmkreg_evaluate``: landmark and registration accuracy of predictions against ground truth.

    lmkreg_evaluate -d 5 --mr-pred pred_MR/ --us-pred pred_US/ -o report/ [--split Ts|Tr]
                    [--cases C1 C2 ...] [--qc 5] [--workers 2]

Every case of the split with true landmarks in both modalities is evaluated: MRE per landmark
(paper Table 1), SRE / Dice / residual rotation of the registration from the predicted
landmarks and from the true ones against the ICP reference (Table 2), and their histograms
(Tables 3 and 4).  When the prediction files name predicted prostate masks (a segmentation model),
also Dice and surface distances per modality and the registration rows landmark-only /
surface-refined / landmarks+surface (the refinement of lmkreg_register on the predicted masks).
Prediction files are found by case name (``CASE_MR.json`` as lmkreg_predict
writes them, or ``CASE.json``; ``.mrk.json`` and ``.fcsv`` too).  Writes ``evaluation.md``,
``evaluation.csv`` (one row per case), ``evaluation.json`` and ``histograms.png``, and for the
``--qc`` worst cases by SRE ``qc/CASE_landmarks_MR.png``, ``qc/CASE_landmarks_US.png`` and
``qc/CASE_fusion.png``.  A case without a prediction is listed in the report, not fatal; the
exit status is 1 if no case could be evaluated.  Unmatched cases are listed on the terminal and in
evaluation.json ("unmatched"): prediction files (CASE_MR.*, CASE_US.*) without ground truth, cases
with ground truth but no prediction, per modality, and cases predicted in one modality only.  With
--strict they are problems: exit status 3, as a pair flagged unreliable is.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from lmkreg import __version__
from lmkreg.cli_utils import add_progress_option, add_strict_option, friendly_errors, make_parser
from lmkreg.dataset.layout import Dataset, check_case_id, open_dataset
from lmkreg.errors import ConfigurationError, OutputError
from lmkreg.evaluation.evaluate import MODALITIES, CaseResult, evaluate_cases, find_prediction, summarize
from lmkreg.evaluation.predicted_masks import LANDMARKS_SURFACE_WEIGHT, VARIANTS
from lmkreg.evaluation.qc import fusion_figure, landmark_figure
from lmkreg.evaluation.report import REPORT_FILES, worst_cases, write_report
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.images import read_image
from lmkreg.io.landmark_files import LANDMARK_SUFFIXES, read_landmarks
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.io.provenance import read_provenance
from lmkreg.parallel import default_workers, parallel_map
from lmkreg.trust.summary import STRICT_HELP, exit_status

QC_FOLDER = "qc"


@dataclass
class EvaluationRun:
    """What an evaluation produced: per-case results, their summary, the cases left out and why."""

    dataset: str
    split: str
    results: list[CaseResult]
    summary: dict
    missing: dict[str, str] = field(default_factory=dict)  # case -> why it was not evaluated
    failed: dict[str, str] = field(default_factory=dict)  # case -> error while evaluating it
    qc: dict[str, list[str]] = field(default_factory=dict)  # case -> QC pictures (relative to the report)
    unmatched: dict = field(default_factory=dict)  # unmatched_cases(): predictions and ground truth without a partner
    paths: dict[str, Path] = field(default_factory=dict)


def ground_truth_cases(dataset: Dataset, split: str) -> list[str]:
    """Cases with a landmark file of at least one modality in landmarks{split}/, sorted."""
    folder = dataset.folder / f"landmarks{split}"
    found = set()
    if folder.is_dir():
        for f in folder.iterdir():
            for m in MODALITIES:
                if f.name.endswith(f"_{m}.json"):
                    found.add(f.name[: -len(f"_{m}.json")])
    return sorted(found)


def select_cases(dataset: Dataset, split: str, predictions: dict[str, Path],
                 cases: Optional[Sequence[str]] = None) -> tuple[list[str], dict[str, str]]:
    """(cases to evaluate, {case: why not}) — a case needs true landmarks and a prediction in
    both modalities."""
    wanted = sorted(set(ground_truth_cases(dataset, split))) if cases is None else [check_case_id(c) for c in cases]
    todo, skipped = [], {}
    for case in wanted:
        no_truth = [m for m in MODALITIES if not dataset.landmarks_path(case, m, split).is_file()]
        if no_truth:
            skipped[case] = f"no ground truth ({' and '.join(no_truth)} landmarks{split})"
            continue
        notes: list[str] = []
        no_pred = [m for m in MODALITIES if find_prediction(predictions[m], case, m, notes) is None]
        for note in notes:
            print(note)
        if no_pred:
            skipped[case] = "no " + " and ".join(f"{m} prediction in {predictions[m]}" for m in no_pred)
            continue
        todo.append(case)
    return todo, skipped


def prediction_cases(folder: Path, modality: str) -> set[str]:
    """Cases with a prediction file named for `modality` in `folder` (CASE_MR.json, .mrk.json, .fcsv).
    A bare CASE.json names no modality and cannot be told from any other JSON file, so it is found
    only for a case with ground truth (find_prediction)."""
    found = set()
    if Path(folder).is_dir():
        for f in Path(folder).iterdir():
            if f.name.startswith("."):
                continue
            for suffix in LANDMARK_SUFFIXES:
                if f.name.endswith(f"_{modality}{suffix}") and len(f.name) > len(f"_{modality}{suffix}"):
                    found.add(f.name[: -len(f"_{modality}{suffix}")])
                    break
    return found


def unmatched_cases(dataset: Dataset, split: str, predictions: dict[str, Path],
                    cases: Optional[Sequence[str]] = None) -> dict:
    """What has no partner (issue 25: a case present on one side only is never dropped without a word):
    {"predictions_without_ground_truth": {MOD: [case]}, "ground_truth_without_prediction": {MOD: [case]},
    "one_modality_only": {MOD: [case predicted in MOD and not in the other]}}, each sorted; with
    `cases`, only those cases are looked at.  "count" is the number of distinct cases listed."""
    truth_any = ground_truth_cases(dataset, split)
    truth = {m: {c for c in truth_any if dataset.landmarks_path(c, m, split).is_file()} for m in MODALITIES}
    pred = {m: prediction_cases(predictions[m], m)
            | {c for c in truth_any if find_prediction(predictions[m], c, m) is not None} for m in MODALITIES}
    if cases is not None:
        wanted = set(cases)
        truth = {m: v & wanted for m, v in truth.items()}
        pred = {m: v & wanted for m, v in pred.items()}
    other = dict(zip(MODALITIES, MODALITIES[::-1]))
    out = {"predictions_without_ground_truth": {m: sorted(pred[m] - truth[m]) for m in MODALITIES},
           "ground_truth_without_prediction": {m: sorted(truth[m] - pred[m]) for m in MODALITIES},
           "one_modality_only": {m: sorted(pred[m] - pred[other[m]]) for m in MODALITIES}}
    out["count"] = len({c for block in list(out.values()) for v in block.values() for c in v})
    return out


def unmatched_lines(unmatched: dict, split: str, predictions: dict[str, Path]) -> list[str]:
    """The terminal's lines for unmatched_cases() (none when everything has a partner)."""
    lines = []
    for m in MODALITIES:
        if unmatched["predictions_without_ground_truth"][m]:
            lines.append(f"unmatched: {m} prediction(s) in {predictions[m]} without {m} ground truth in "
                         f"landmarks{split}: {', '.join(unmatched['predictions_without_ground_truth'][m])}")
    for m in MODALITIES:
        if unmatched["ground_truth_without_prediction"][m]:
            lines.append(f"unmatched: {m} ground truth without a prediction in {predictions[m]}: "
                         f"{', '.join(unmatched['ground_truth_without_prediction'][m])}")
    for m, o in zip(MODALITIES, MODALITIES[::-1]):
        if unmatched["one_modality_only"][m]:
            lines.append(f"unmatched: predicted in {m} only (no {o} prediction in {predictions[o]}): "
                         f"{', '.join(unmatched['one_modality_only'][m])}")
    return lines


def _qc_case(result: CaseResult, dataset_folder: str, split: str, predictions: dict[str, str], out_dir: str,
             names: Sequence[str]) -> list[str]:
    """QC pictures of one case (in a worker): landmarks on MR and US slices, MR fused on US."""

    ds = Dataset(dataset_folder)
    qc_dir = Path(out_dir) / QC_FOLDER
    case = result.case
    written = []
    images = {}
    for m in MODALITIES:
        path = ds.image_path(case, m, split)
        if not path.is_file():
            continue
        images[m] = read_image(path)
        truth = read_lmkreg_json(ds.landmarks_path(case, m, split))
        pred_file = find_prediction(Path(predictions[m]), case, m)
        pred = read_landmarks(pred_file) if pred_file is not None else None
        errs = ", ".join(f"{n} {e:.1f}" for n, e in result.errors_mm.get(m, {}).items() if e == e)
        landmark_figure(images[m], truth, pred, names, f"{case} {m} (error mm: {errs})",
                        qc_dir / f"{case}_landmarks_{m}.png")
        written.append(f"{QC_FOLDER}/{case}_landmarks_{m}.png")
    if result.predicted_transform is not None and len(images) == 2:
        masks = {}
        for m in MODALITIES:
            p = ds.mask_path(case, m, split)
            masks[m] = read_image(p, is_mask=True) if p.is_file() else None
        sre = f"SRE {result.sre_predicted_mm:.1f} mm, " if result.sre_predicted_mm == result.sre_predicted_mm else ""
        fusion_figure(images["MR"], images["US"], RigidTransform.from_matrix(result.predicted_transform),
                      f"{case}: MR on US through the predicted registration ({sre}"
                      f"Dice {result.dice_predicted:.2f}); green US prostate, magenta MR prostate",
                      qc_dir / f"{case}_fusion.png", us_mask=masks["US"], mr_mask=masks["MR"])
        written.append(f"{QC_FOLDER}/{case}_fusion.png")
        refined = result.refinement.get("surface")
        if refined and refined.get("accepted"):  # predicted masks: the same view after --refine surface
            fusion_figure(images["MR"], images["US"], RigidTransform.from_matrix(refined["transform"]),
                          f"{case}: MR on US after the surface refinement on the predicted masks (SRE "
                          f"{result.sre_surface_mm:.1f} mm, Dice {result.dice_surface:.2f}); true outlines",
                          qc_dir / f"{case}_fusion_surface.png", us_mask=masks["US"], mr_mask=masks["MR"])
            written.append(f"{QC_FOLDER}/{case}_fusion_surface.png")
    return written


def write_qc(run: EvaluationRun, dataset: Dataset, predictions: dict[str, Path], out_dir: Path, n: int,
             names: Sequence[str], workers: int = 1, progress: bool = True) -> dict[str, list[str]]:
    """QC pictures of the n worst cases by SRE; returns {case: [relative picture paths]}."""

    worst = worst_cases(run.results, n)
    fn = functools.partial(_qc_case, dataset_folder=str(dataset.folder), split=run.split,
                           predictions={m: str(p) for m, p in predictions.items()}, out_dir=str(out_dir),
                           names=list(names))
    pictures = parallel_map(fn, worst, workers=workers, desc="QC pictures", disable_progress=not progress)
    return {r.case: p for r, p in zip(worst, pictures)}


def evaluate_predictions(dataset_id: str, mr_pred: Path, us_pred: Path, out_dir: Optional[Path], split: str = "Ts",
                         cases: Optional[Sequence[str]] = None, qc: int = 5, workers: Optional[int] = None,
                         progress: bool = True, landmark_weight: Optional[float] = None,
                         overwrite: bool = False) -> EvaluationRun:
    """Evaluate every selected case and (with out_dir) write the report and QC pictures."""

    if out_dir is not None:
        check_report_folder(Path(out_dir))  # before the work, not after it
        check_report_replaceable(Path(out_dir), overwrite)  # never replace a report lmkreg did not write
    dataset = open_dataset(dataset_id)
    names = list(dataset.spec.landmarks)
    predictions = {"MR": Path(mr_pred), "US": Path(us_pred)}
    for m, folder in predictions.items():
        if not folder.is_dir():
            raise ConfigurationError(f"{folder}: {m} prediction folder not found")
    todo, missing = select_cases(dataset, split, predictions, cases)
    unmatched = unmatched_cases(dataset, split, predictions, None if cases is None else [check_case_id(c) for c in cases])
    workers = default_workers() if workers is None else max(1, int(workers))
    results, failed = (evaluate_cases(dataset, todo, split, predictions, names, workers, progress, landmark_weight)
                       if todo else ([], {}))
    run = EvaluationRun(dataset.name, split, results, summarize(results, names), missing, failed, unmatched=unmatched)
    if out_dir is not None and results:
        out_dir = Path(out_dir)
        if qc > 0:
            run.qc = write_qc(run, dataset, predictions, out_dir, qc, names, workers, progress)
        run.paths = write_report(results, run.summary, names, out_dir,
                                 title=f"lmkreg evaluation: {dataset.name}, split {split}", missing=missing,
                                 failed=failed, qc=run.qc,
                                 extra={"dataset": dataset.name, "split": split,
                                        "predictions": {m: str(p) for m, p in predictions.items()},
                                        "landmarks": names, "unmatched": unmatched,
                                        "provenance": prediction_provenance(predictions, todo)})
    return run


def prediction_provenance(predictions: dict[str, Path], cases: Sequence[str]) -> dict:
    """The provenance of every prediction file evaluated (lmkreg.io.provenance), by modality and case."""

    out: dict = {"lmkreg_version": __version__}
    for m, folder in predictions.items():
        files = {c: find_prediction(folder, c, m) for c in cases}
        out[m] = {c: {"file": str(f), "record": (lambda r: None if r is None else r.to_json())(read_provenance(f))}
                  for c, f in files.items() if f is not None}
    return out


def check_report_replaceable(folder: Path, overwrite: bool) -> None:
    """Refuse, naming the file, to replace a report file of the folder that lmkreg did not write: the
    report is lmkreg's when its evaluation.json is (an object with lmkreg's title, summary and cases)."""


    if overwrite:
        return
    marker = folder / REPORT_FILES["json"]
    try:
        doc = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    except (OSError, ValueError):
        doc = None
    ours = isinstance(doc, dict) and str(doc.get("title", "")).startswith("lmkreg evaluation") \
        and "summary" in doc and "cases" in doc
    if ours:
        return
    for name in REPORT_FILES.values():
        if (folder / name).exists():
            raise OutputError(folder / name, "exists and was not written by lmkreg (no lmkreg evaluation.json beside "
                                             "it); move it, choose another report folder, or use --overwrite")


def check_report_folder(folder: Path) -> None:
    """The report folder must be a folder lmkreg can write: fail naming it before any case is evaluated."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "exists and is not a folder; -o/--output names the folder for the report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, f"report folder cannot be created ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise OutputError(folder, "report folder is not writable")


def summary_table(summary: dict) -> str:
    """A few lines for the terminal."""
    def f(s: dict, digits: int = 2) -> str:
        return "n/a" if not s or s.get("n", 0) == 0 else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"

    rows = [("", "predicted", "manual"),
            ("MRE MR (mm)", f(summary["mre"]["MR"]["per_case"]), ""),
            ("MRE US (mm)", f(summary["mre"]["US"]["per_case"]), ""),
            ("SRE (mm)", f(summary["sre_predicted_mm"]), f(summary["sre_manual_mm"])),
            (f"SRE, {summary.get('pairs_flagged', 0)} flagged pair(s) left out",
             f(summary.get("unflagged_pairs", {}).get("sre_predicted_mm", {})), ""),
            ("Dice", f(summary["dice_predicted"]), f(summary["dice_manual"])),
            ("rotation (deg)", f(summary["rotation_predicted_deg"], 1), f(summary["rotation_manual_deg"], 1))]
    seg = summary.get("segmentation") or {}
    for m, b in seg.items():
        rows.append((f"segmentation {m}: Dice / 95 % distance (mm)", f(b["dice"], 3),
                     f(b["surface_distance_95_mm"])))
    var = summary.get("registration_variants") or {}
    if var:

        rows.append((f"{summary.get('registration_variants_cases', 0)} pair(s) with masks", "SRE (mm) | Dice",
                     "rotation (deg) | refused"))
        for v, label in VARIANTS.items():
            b = var[v]
            rows.append((f"  {label}", f"{f(b['sre_mm'])} | {f(b['dice'], 3)}",
                         f"{f(b['rotation_deg'], 1)} | {b.get('refused', '–')}"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}".rstrip() for a, b, c in rows)


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = make_parser("lmkreg_evaluate", __doc__)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (ground truth)")
    p.add_argument("--mr-pred", type=Path, required=True, help="folder of predicted MR landmark files")
    p.add_argument("--us-pred", type=Path, required=True, help="folder of predicted US landmark files")
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    p.add_argument("--split", default="Ts", choices=["Ts", "Tr"], help="ground truth split (default Ts)")
    p.add_argument("--cases", nargs="+", default=None, help="only these cases (default: all with ground truth)")
    p.add_argument("--qc", type=int, default=5, metavar="N", help="QC pictures of the N worst cases by SRE "
                                                                  "(default 5, 0: none)")
    p.add_argument("--landmark-weight", type=float, default=LANDMARKS_SURFACE_WEIGHT, metavar="W",
                   help=f"with predicted masks: the weight of the landmarks in the landmarks+surface registration "
                        f"row, as lmkreg_register --refine surface --landmark-weight (default "
                        f"{LANDMARKS_SURFACE_WEIGHT:g})")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: available cores, max 8)")
    add_progress_option(p)
    add_strict_option(p, STRICT_HELP)  # unmatched cases count as flagged (docstring)
    p.add_argument("--overwrite", action="store_true",
                   help="replace report files (evaluation.md, .csv, .json, histograms.png) lmkreg did not write")
    args = p.parse_args(argv)
    if args.qc < 0:
        p.error("--qc must be >= 0")
    if not (args.landmark_weight > 0 and args.landmark_weight < float("inf")):
        p.error("--landmark-weight must be a finite number above 0 (0 is the surface-refined row)")
    run = evaluate_predictions(args.dataset, args.mr_pred, args.us_pred, args.output, args.split, args.cases,
                               args.qc, args.workers, not args.no_progress, args.landmark_weight, args.overwrite)
    for case, why in sorted(run.missing.items()):
        print(f"not evaluated: {case}: {why}", file=sys.stderr)
    for case, why in sorted(run.failed.items()):
        print(f"failed: {case}: {why}", file=sys.stderr)
    for line in unmatched_lines(run.unmatched, run.split, {"MR": args.mr_pred, "US": args.us_pred}):
        print(line, file=sys.stderr)
    if not run.results:
        print(f"error: no case could be evaluated ({len(run.missing)} without ground truth or prediction, "
              f"{len(run.failed)} failed)", file=sys.stderr)
        return 1
    print(f"{run.dataset} {run.split}: {len(run.results)} case(s) evaluated"
          + (f", {len(run.missing)} not evaluated" if run.missing else "")
          + (f", {len(run.failed)} failed" if run.failed else ""))
    print(summary_table(run.summary))
    print(f"report: {run.paths['markdown']}")
    if run.qc:
        print(f"QC pictures of the {len(run.qc)} worst case(s): {Path(args.output) / QC_FOLDER}")
    flagged = run.summary.get("pairs_flagged", 0)
    print(f"{flagged} of {len(run.results)} pair(s) flagged unreliable, {run.unmatched['count']} unmatched case(s)")
    # predict/register's rule (lmkreg.trust.summary): problems change the exit status only under --strict
    return exit_status(0, flagged + run.unmatched["count"], args.strict)


if __name__ == "__main__":
    sys.exit(main())
