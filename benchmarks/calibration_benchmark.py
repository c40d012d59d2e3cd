"""Calibration benchmark (issue 14): do the 90 % error radii cover 90 % of the landmarks, and do
the "unreliable" flags pick out the bad results?

One µ-RegPro-like phantom dataset (40 training + 40 test pairs by default).  Per modality,
HeatmapMatchingTrainer is trained on the five cross-validation folds (a fixed number of epochs,
so the result does not depend on how busy the machine is); each fold's end of training stores
its validation cases as calibration cases, pooled into calibration.json (40 per landmark).  Then
on the test set:

* coverage of the 90 % radii per modality and landmark, for the 5-fold ensemble (what users
  run) and for fold 0 alone (the setting the radii are calibrated for);
* share of clean test cases flagged unreliable (target: at most 5 %), with the reasons;
* ROC AUC of the landmark flag against "error > 5 mm" and of the pair flag against "SRE > 5 mm"
  (lmkreg.evaluation), and ROC curves of the radius as a continuous score (figure);
* the adversarial cases of the issue, flagged share: each test image shifted 30 mm out of the
  planned crop (edge-replicating padding), the other modality's image, and pairs with the US
  landmark file of another test case.

    python benchmarks/calibration_benchmark.py --root /tmp/lmkreg_calib

Writes benchmarks/results/calibration.json, documentation/benchmark_calibration.md and
documentation/figures/calibration_roc.png.  Nothing is tuned on the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import log, planned_phantoms, use_root  # benchmarks/_common.py (run as a script: on sys.path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "calibration.json"
REPORT = REPO / "documentation" / "benchmark_calibration.md"
FIGURE = REPO / "documentation" / "figures" / "calibration_roc.png"
DATASET_ID = 961
TRAINER = "HeatmapMatchingTrainer"
THRESHOLD_MM = 5.0


def shifted(image, mm: float = 30.0):
    """The image extended by 2*mm on its superior side (edge values repeated): the planned crop,
    centred on the image centre, moves `mm` away from the prostate."""
    import SimpleITK as sitk

    d = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[2])))
    pad = [0, 0, 0]
    pad[axis] = int(round(2 * mm / image.GetSpacing()[axis]))
    return sitk.ZeroFluxNeumannPad(image, pad if d[2, axis] > 0 else [0, 0, 0], [0, 0, 0] if d[2, axis] > 0 else pad)


def roc_curve(scores, positive):
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    thresholds = np.unique(s)[::-1]
    tpr = [0.0] + [float(np.mean(s[y] >= t)) if y.any() else 0.0 for t in thresholds]
    fpr = [0.0] + [float(np.mean(s[~y] >= t)) if (~y).any() else 0.0 for t in thresholds]
    return fpr, tpr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=40, help="training cases (default 40)")
    p.add_argument("--test", type=int, default=40, help="test pairs (default 40)")
    p.add_argument("--preset", default="mu_regpro", help="phantom preset (default mu_regpro)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fold and modality (default 20)")
    p.add_argument("--iterations", type=int, default=None, help="override iterations per epoch (smoke runs)")
    p.add_argument("--workers", type=int, default=2, help="data worker processes (default 2)")
    p.add_argument("--root", type=Path, default=Path.home() / "lmkreg_calibration_benchmark",
                   help="LMKREG_raw/preprocessed/results go under this folder")
    p.add_argument("--seed", type=int, default=2024, help="phantom and training seed (default 2024)")
    p.add_argument("--no-write", action="store_true", help="do not write the results and report files (smoke runs)")
    args = p.parse_args()
    use_root(args.root)

    from lmkreg.evaluation.evaluate import calibration_summary, evaluate_case
    from lmkreg.evaluation.metrics import roc_auc
    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image
    from lmkreg.io.landmarks import read_lmkreg_json, write_lmkreg_json
    from lmkreg.registration.landmark_fit import register_landmarks
    from lmkreg.run.train import model_folder, train
    from lmkreg.trust.pair import assess_pair

    started = time.perf_counter()
    command = "python benchmarks/calibration_benchmark.py " + " ".join(sys.argv[1:])
    ds = planned_phantoms(args.root, DATASET_ID, "CalibrationBench", args.train, args.test, args.preset, args.seed,
                          args.workers)
    names = ds.spec.landmarks
    work = args.root / "outputs"
    results: dict = {"command": command, "settings": vars(args) | {"root": str(args.root)}, "modalities": {}}
    timings = {}
    for modality in ("MR", "US"):
        t0 = time.perf_counter()
        for fold in range(5):
            if not (model_folder(ds.name, TRAINER, modality) / f"fold_{fold}" / "calibration_cases.json").is_file():
                log(f"training {TRAINER} {modality} fold {fold} ({args.epochs} epochs)")
                train(str(DATASET_ID), modality, fold, TRAINER, num_workers=args.workers, seed=args.seed,
                      num_epochs=args.epochs, iterations_per_epoch=args.iterations, progress_bar=False)
        timings[f"train_{modality}_s"] = time.perf_counter() - t0

    preds = {}
    adversarial: dict = {"shifted": {}, "other_modality": {}}
    radius_scores: dict = {}
    for modality in ("MR", "US"):
        folder_m = model_folder(ds.name, TRAINER, modality)
        cal = json.loads((folder_m / "calibration.json").read_text())
        results["modalities"][modality] = {"calibration": cal["landmarks"]}
        for label, folds in (("ensemble", None), ("fold0", ["0"])):
            predictor = LandmarkPredictor(folder_m, folds, mirror_tta=True)
            out = work / f"pred_{label}" / modality
            flagged_cases, reasons = [], {}
            for case in ds.cases("Ts", modality):
                pred = predictor.predict(read_image(ds.image_path(case, modality, "Ts")))
                write_lmkreg_json(pred.with_extras(), out / f"{case}_{modality}.json")
                if pred.flags:
                    flagged_cases.append(case)
                    reasons[case] = [f.text for f in pred.flags]
                if label == "ensemble":
                    truth = read_lmkreg_json(ds.landmarks_path(case, modality, "Ts"))
                    for n in names:
                        if pred.radius_mm.get(n) is not None and truth.points.get(n) is not None:
                            err = float(np.linalg.norm(pred.landmarks.points[n] - truth.points[n]))
                            radius_scores.setdefault(modality, []).append((pred.radius_mm[n], err))
            preds[(label, modality)] = out
            n_cases = len(ds.cases("Ts", modality))
            results["modalities"][modality][label] = {"flagged_cases": len(flagged_cases), "cases": n_cases,
                                                      "flagged_share": len(flagged_cases) / max(n_cases, 1),
                                                      "flags": reasons}
            log(f"{modality} {label}: {len(flagged_cases)} of {n_cases} clean test cases flagged")
        predictor = LandmarkPredictor(folder_m, None, mirror_tta=True)
        other = "US" if modality == "MR" else "MR"
        for kind, image_of in (("shifted", lambda c: shifted(read_image(ds.image_path(c, modality, "Ts")))),
                               ("other_modality", lambda c: read_image(ds.image_path(c, other, "Ts")))):
            cases = ds.cases("Ts", modality)
            flagged = sum(bool(predictor.predict(image_of(c)).flags) for c in cases)
            adversarial[kind][modality] = {"flagged": flagged, "cases": len(cases)}
            log(f"{modality} {kind}: {flagged} of {len(cases)} flagged")

    # ---- evaluation (coverage, AUC; SRE needs the ICP reference) ------------------------------
    for label in ("ensemble", "fold0"):
        cases = [c for c in ds.cases("Ts", "MR") if c in ds.cases("Ts", "US")]
        rs = [evaluate_case(ds, c, "Ts", {m: preds[(label, m)] for m in ("MR", "US")}, names) for c in cases]
        results[label] = calibration_summary(rs, names, THRESHOLD_MM)
        results[label]["flagged_pairs"] = int(sum(bool(r.pair_flagged) for r in rs))
        results[label]["pairs"] = len(rs)
        log(f"{label}: coverage MR {results[label]['MR']['all']['coverage']}, US {results[label]['US']['all']['coverage']}")
    # pairs with another patient's US file (next test case, cyclic)
    cases = [c for c in ds.cases("Ts", "MR") if c in ds.cases("Ts", "US")]
    mixed = 0
    for i, c in enumerate(cases):
        mr = read_lmkreg_json(preds[("ensemble", "MR")] / f"{c}_MR.json")
        us = read_lmkreg_json(preds[("ensemble", "US")] / f"{cases[(i + 1) % len(cases)]}_US.json")
        try:
            fit = register_landmarks(mr, us, names)
        except Exception:
            continue
        mixed += not assess_pair(mr, us, fit.names, fit.rms_mm)["reliable"]
    adversarial["other_patient_pair"] = {"flagged": mixed, "pairs": len(cases)}
    results["adversarial"] = adversarial
    for m, pairs in radius_scores.items():
        r, e = np.array(pairs).T
        results["modalities"][m]["auc_radius_vs_error"] = roc_auc(r, e > THRESHOLD_MM)
    results["seconds"] = time.perf_counter() - started
    results["timings"] = timings
    log(f"done in {results['seconds'] / 60:.1f} min")
    if args.no_write:
        print(json.dumps({k: results[k] for k in ("ensemble", "adversarial")}, indent=1, default=str)[:4000])
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for m, pairs in radius_scores.items():
        r, e = np.array(pairs).T
        fpr, tpr = roc_curve(r, e > THRESHOLD_MM)
        auc = results["modalities"][m]["auc_radius_vs_error"]
        ax.plot(fpr, tpr, label=f"{m} radius (AUC {auc:.2f})" if auc is not None else f"{m} radius (AUC n/a)")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate (error > {THRESHOLD_MM:g} mm)")
    ax.legend(loc="lower right")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    REPORT.write_text(report(results, names))
    log(f"wrote {RESULTS}, {REPORT}, {FIGURE}")


def report(res: dict, names) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f} %"

    def num(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = ["# Calibration benchmark", "", f"Command: `{res['command']}`; {res['seconds'] / 60:.1f} min.", "",
             "## Coverage of the 90 % error radii (test set)", "",
             "| predictor | modality | landmark | n | coverage | median radius (mm) | AUC flag vs error > 5 mm |",
             "|---|---|---|---|---|---|---|"]
    for label in ("ensemble", "fold0"):
        for m in ("MR", "US"):
            for n in list(names) + ["all"]:
                b = res[label][m][n]
                lines.append(f"| {label} | {m} | {n} | {b['n']} | {pct(b['coverage'])} | "
                             f"{num(b.get('median_radius_mm'))} | {num(b['auc_flag_vs_error'])} |")
    lines += ["", "## Flagged clean test cases", ""]
    for m in ("MR", "US"):
        for label in ("ensemble", "fold0"):
            b = res["modalities"][m][label]
            lines.append(f"- {m} {label}: {b['flagged_cases']} of {b['cases']} ({pct(b['flagged_share'])})")
    for label in ("ensemble", "fold0"):
        pr = res[label]["pair"]
        lines.append(f"- pairs ({label}): {pr['num_flagged']} of {pr['n']} flagged, {pr['num_sre_above']} with SRE > 5 mm, "
                     f"AUC {num(pr['auc_flag_vs_sre'])}")
    adv = res["adversarial"]
    lines += ["", "## Cases that must be flagged", "",
              f"- shifted 30 mm: MR {adv['shifted']['MR']['flagged']}/{adv['shifted']['MR']['cases']}, "
              f"US {adv['shifted']['US']['flagged']}/{adv['shifted']['US']['cases']}",
              f"- other modality's image: MR model {adv['other_modality']['MR']['flagged']}/"
              f"{adv['other_modality']['MR']['cases']}, US model {adv['other_modality']['US']['flagged']}/"
              f"{adv['other_modality']['US']['cases']}",
              f"- pair with another patient's US file: {adv['other_patient_pair']['flagged']}/"
              f"{adv['other_patient_pair']['pairs']}", "",
              "ROC of the radius as a continuous score: ![ROC](figures/calibration_roc.png)", ""]
    for m in ("MR", "US"):
        lines.append(f"- {m}: AUC of the radius against error > 5 mm: {num(res['modalities'][m].get('auc_radius_vs_error'))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
