"""Accuracy benchmark: the paper's experiment (Tables 1-4) on phantom data.

One µ-RegPro-like phantom dataset with a separate test set.  Every trainer is trained once per
modality on all training cases (fold 'all') for a fixed number of epochs and scored on the test
set; the 5-fold cross-validation path (train folds 0-4, lmkreg_find_best_configuration, fold
ensemble) is exercised for the variance-regularised model with fewer epochs.  Then:

* Table 1: MRE mean ± sd per trainer and modality, Wilcoxon signed-rank tests (per-case mean
  radial error) against the DSNT baseline and against the variance-regularised model;
* Table 2: SRE, Dice and residual rotation of registration from each trainer's predicted
  landmarks and from the true landmarks;
* Tables 3-4: SRE and residual-rotation histograms with the paper's bins.

The default scale (20 epochs of 50 steps per model) took 45 minutes on 2 idle CPU cores; a GPU
user runs the full protocol with, e.g., ``--train 200 --test 100 --epochs 500 --cv-epochs 500``.  Nothing is tuned on the test set:
every trainer is reported in every table, and the settings were fixed before the run.

    python benchmarks/accuracy_benchmark.py [--train 40] [--test 40] [--epochs 20] [--cv-epochs 4]

A trainer with a segmentation head (``--trainers HeatmapMatchingTrainer_Seg``) also gets the rows of
issue 17, computed by lmkreg_evaluate's API: segmentation Dice per modality and the registration
rows landmark-only / surface-refined / landmarks+surface.  ``--masks-as-predicted`` writes the
true masks as predicted ones for trainers without a head (exercises the rows; optimistic).

Writes benchmarks/results/accuracy.json and documentation/benchmark_accuracy.md; with
``--name NAME`` (a second experiment next to the main one) accuracy_NAME.json and
benchmark_accuracy_NAME.md instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
import torch
from scipy.stats import wilcoxon

from _common import log, planned_phantoms, use_root  # benchmarks/_common.py (run as a script: on sys.path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"
REPORT = REPO / "documentation" / "benchmark_accuracy.md"
TRAINERS = ["LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance", "DirectRegressionTrainer",
            "HeatmapMatchingTrainer"]
DATASET_ID = 960
SRE_BINS = (0, 5, 10, 15, 20, 25, 30, 45, math.inf)
ROT_BINS = (0, 5, 10, 20, 30, 40, 60, 70, math.inf)


def predict_test_set(ds, trainer: str, modality: str, out: Path, folds, masks_as_predicted: bool = False) -> Path:
    """lmkreg JSON predictions ``CASE_MODALITY.json`` for every test volume; a model with a
    segmentation head also writes its prostate mask beside each (lmkreg_predict's form), and
    `masks_as_predicted` writes the TRUE mask there instead when the model has none (exercises the
    mask rows without a segmentation model; optimistic, see --masks-as-predicted)."""
    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image
    from lmkreg.io.landmarks import write_lmkreg_json
    from lmkreg.registration.predicted_masks import attach_mask
    from lmkreg.run.train import model_folder

    pred_dir = out / "pred" / f"{trainer}__{modality}__{'-'.join(map(str, folds))}"
    predictor = LandmarkPredictor(model_folder(ds.name, trainer, modality), folds=[str(f) for f in folds])
    segments = bool(getattr(predictor, "has_segmentation", False))
    for case in ds.cases("Ts", modality):
        pred = predictor.predict(read_image(ds.image_path(case, modality, "Ts")))
        f = write_lmkreg_json(pred.with_extras(), pred_dir / f"{case}_{modality}.json")
        mask = getattr(pred, "mask", None) if segments else None
        if mask is None and masks_as_predicted and ds.mask_path(case, modality, "Ts").is_file():
            mask = read_image(ds.mask_path(case, modality, "Ts"), is_mask=True)
        if mask is not None:
            attach_mask(f, mask)
    return pred_dir


def mask_block(cases) -> dict:
    """The predicted-mask results of one trainer from lmkreg_evaluate's per-case results (the
    evaluation's own summary, nothing recomputed here): summary and per-case values."""
    from lmkreg.evaluation.predicted_masks import VARIANT_KEYS, mask_summary
    from lmkreg.evaluation.report import json_safe

    per_case = {r.case: {"segmentation": r.segmentation, **{k: float(getattr(r, k)) for k in VARIANT_KEYS},
                         "sre_predicted_mm": float(r.sre_predicted_mm),
                         "rotation_predicted_deg": float(r.rotation_predicted_deg),
                         "dice_predicted": float(r.dice_predicted),
                         "refinement": {v: {k: d[k] for k in ("accepted", "reason", "beyond_bound")}
                                        for v, d in r.refinement.items()}} for r in cases}
    return json_safe({"summary": mask_summary(cases), "per_case": per_case})


def mask_targets(block: dict) -> dict[str, tuple[bool, float]]:
    """Issue 17's targets for a trainer with masks: surface-refined every pair < 10 deg, SRE <=
    1.0 mm, Dice >= 0.94; segmentation Dice >= 0.90 per modality (means over the test pairs)."""
    s = block["summary"]
    out = {}
    v = s.get("registration_variants", {}).get("surface")
    if v:
        out["surface_max_rotation"] = (v["rotation_deg"]["worst"] < 10, v["rotation_deg"]["worst"])
        out["surface_sre"] = (v["sre_mm"]["mean"] <= 1.0, v["sre_mm"]["mean"])
        out["surface_dice"] = (v["dice"]["mean"] >= 0.94, v["dice"]["mean"])
    for m, seg in s.get("segmentation", {}).items():
        out[f"segmentation_dice_{m}"] = (seg["dice"]["mean"] >= 0.90, seg["dice"]["mean"])
    return out


def mask_tables(results: dict) -> list[str]:
    """Report lines: segmentation per modality and the three registration rows of every trainer
    whose predictions carried masks."""
    from lmkreg.evaluation.predicted_masks import VARIANTS

    blocks = {t: d["masks"] for t, d in results.get("registration", {}).items()
              if d.get("masks", {}).get("summary", {}).get("registration_variants")
              or d.get("masks", {}).get("summary", {}).get("segmentation")}
    if not blocks:
        return []

    def f(s, digits=2):
        return "n/a" if not s or not s.get("n") else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"

    def w(s, digits=2):
        return "n/a" if not s or not s.get("n") else f"{s['worst']:.{digits}f}"

    L = ["## Predicted prostate masks (issue 17)", "",
         "Computed by lmkreg_evaluate's API (lmkreg.evaluation.predicted_masks) on the same test pairs: the "
         "transforms of `lmkreg_register --refine surface` on the predicted masks, started from the predicted-"
         "landmark transform, with default settings (landmarks+surface: landmark weight "
         f"{results.get('settings', {}).get('landmark_weight', 0.1)}), against the same ICP reference as Table 2.",
         "", "| trainer | transform | SRE (mm) | SRE worst | Dice | Dice worst | rotation (deg) | rotation worst | "
         "refused (beyond bound; rescued) |", "|---|---|---|---|---|---|---|---|---|"]
    for t, b in blocks.items():
        for v, label in VARIANTS.items():
            r = b["summary"].get("registration_variants", {}).get(v)
            if not r:
                continue
            refused = "–" if "refused" not in r else f"{r['refused']} ({r['beyond_bound']}; {r.get('rescued', 0)})"
            L.append(f"| {t} | {label} | {f(r['sre_mm'])} | {w(r['sre_mm'])} | {f(r['dice'], 3)} | {w(r['dice'], 3)} | "
                     f"{f(r['rotation_deg'], 1)} | {w(r['rotation_deg'], 1)} | {refused} |")
    L += ["", "Segmentation (Dice with the true mask; symmetric surface distance, world mm):", "",
          "| trainer | modality | Dice | Dice median | Dice worst | mean distance (mm) | 95 % distance (mm) | "
          "95 % distance worst |", "|---|---|---|---|---|---|---|---|"]
    for t, b in blocks.items():
        for m, seg in b["summary"].get("segmentation", {}).items():
            d = seg["dice"]
            L.append(f"| {t} | {m} | {f(d, 3)} | {d.get('median', float('nan')):.3f} | {w(d, 3)} | "
                     f"{f(seg['mean_surface_distance_mm'])} | {f(seg['surface_distance_95_mm'])} | "
                     f"{w(seg['surface_distance_95_mm'])} |")
    L += ["", "Targets (issue 17): surface-refined every pair < 10°, SRE ≤ 1.0 mm, Dice ≥ 0.94; segmentation Dice "
          "≥ 0.90 per modality.", ""]
    for t, b in blocks.items():
        L.append(f"- {t}: " + ", ".join(f"{k} {'met' if ok else 'MISSED'} ({v:.2f})"
                                        for k, (ok, v) in mask_targets(b).items()))
    return L + [""]


def per_case_mre(ds, pred_dir: Path, modality: str, names) -> dict[str, float]:
    from lmkreg.io.landmarks import read_lmkreg_json

    out = {}
    for case in ds.cases("Ts", modality):
        p = read_lmkreg_json(pred_dir / f"{case}_{modality}.json").to_array(names)
        t = read_lmkreg_json(ds.landmarks_path(case, modality, "Ts")).to_array(names)
        out[case] = float(np.nanmean(np.linalg.norm(p - t, axis=1)))
    return out


def per_landmark_errors(ds, pred_dir: Path, modality: str, names) -> np.ndarray:
    from lmkreg.io.landmarks import read_lmkreg_json

    rows = []
    for case in ds.cases("Ts", modality):
        p = read_lmkreg_json(pred_dir / f"{case}_{modality}.json").to_array(names)
        t = read_lmkreg_json(ds.landmarks_path(case, modality, "Ts")).to_array(names)
        rows.append(np.linalg.norm(p - t, axis=1))
    return np.array(rows)


def fmt(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    return "n/a" if not v.size else f"{v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0:.2f}"


def hist(values, edges) -> list[int]:
    v = np.asarray([x for x in values if np.isfinite(x)])
    return [int(np.sum((v > lo) & (v <= hi))) if lo > 0 else int(np.sum(v <= hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def targets_met(results: dict, trainer: str) -> dict[str, tuple[bool, float]]:
    """The issue's targets for one trainer: name -> (met, measured value)."""
    mre = results["trainers"][trainer]
    per_case = results["registration"][trainer]["per_case"].values()
    sre = float(np.nanmean([c["sre_predicted_mm"] for c in per_case]))
    dice = float(np.nanmean([c["dice_predicted"] for c in per_case]))
    rot = float(np.nanmax([c["rotation_predicted_deg"] for c in per_case]))
    return {"mre_mr": (mre["MR"]["mre_mm"] <= 1.5, mre["MR"]["mre_mm"]),
            "mre_us": (mre["US"]["mre_mm"] <= 1.5, mre["US"]["mre_mm"]),
            "sre": (sre <= 2.5, sre), "dice": (dice >= 0.88, dice), "max_rotation": (rot < 10, rot)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=40, help="training cases (default 40)")
    p.add_argument("--test", type=int, default=40, help="test pairs (default 40)")
    p.add_argument("--preset", default="mu_regpro")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs (of the planned iterations) per trainer and modality; a fixed amount of training, "
                        "so the result does not depend on how busy the machine is (default 20)")
    p.add_argument("--cv-epochs", type=int, default=4, help="epochs per fold of the 5-fold run (0: skip)")
    p.add_argument("--trainers", nargs="+", default=TRAINERS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", type=Path, default=Path.home() / "lmkreg_benchmark",
                   help="LMKREG_raw/preprocessed/results go under this folder")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--masks-as-predicted", action="store_true",
                   help="write each test case's TRUE prostate masks as the predicted ones of trainers without a "
                        "segmentation head, to exercise the surface rows without a _Seg model (optimistic: the "
                        "refinement then sees the reference's own surfaces; use --name to keep the main report)")
    p.add_argument("--landmark-weight", type=float, default=None,
                   help="landmark weight of the landmarks+surface row (default: lmkreg_evaluate's)")
    p.add_argument("--name", default="",
                   help="suffix of the result and report files, so a second experiment keeps the main report")
    args = p.parse_args()
    if args.name and not args.name.replace("_", "").isalnum():
        p.error(f"--name {args.name!r}: use letters, digits and underscores only")
    suffix = f"_{args.name}" if args.name else ""
    results_file = RESULTS.with_name(f"accuracy{suffix}.json")
    report_file = REPORT.with_name(f"benchmark_accuracy{suffix}.md")
    use_root(args.root)

    from lmkreg.evaluation.evaluate import evaluate_case
    from lmkreg.run.train import model_folder, train

    started = time.perf_counter()
    command = "python benchmarks/accuracy_benchmark.py " + " ".join(sys.argv[1:])
    ds = planned_phantoms(args.root, DATASET_ID, "AccuracyBench", args.train, args.test, args.preset, args.seed,
                          args.workers)
    names = ds.spec.landmarks
    work = args.root / "benchmark_outputs"

    # ---- every trainer on all training cases -> test set ------------------------------------
    results: dict = {"trainers": {}}
    preds: dict = {}
    for trainer in args.trainers:
        for modality in ("MR", "US"):
            done = model_folder(ds.name, trainer, modality) / "fold_all" / "checkpoint_final.pth"
            t0 = time.perf_counter()
            if not done.is_file():
                log(f"training {trainer} {modality} ({args.epochs} epochs)")
                s = train(str(DATASET_ID), modality, "all", trainer, num_workers=args.workers, seed=args.seed,
                          num_epochs=args.epochs, progress_bar=False)
                epochs = s["epochs"]
                train_seconds = time.perf_counter() - t0
            else:  # trained by an earlier run of this benchmark: keep what that run measured of the training
                earlier = (json.loads(results_file.read_text()).get("trainers", {}).get(trainer, {}).get(modality, {})
                           if results_file.is_file() else {})
                epochs, train_seconds = earlier.get("epochs"), earlier.get("train_seconds")
            preds[(trainer, modality)] = predict_test_set(ds, trainer, modality, work, ["all"],
                                                          args.masks_as_predicted)
            mre = per_case_mre(ds, preds[(trainer, modality)], modality, names)
            errs = per_landmark_errors(ds, preds[(trainer, modality)], modality, names)
            results["trainers"].setdefault(trainer, {})[modality] = {
                "per_case_mre_mm": mre, "mre_mm": float(np.mean(list(mre.values()))),
                "sd_mm": float(np.std(list(mre.values()), ddof=1)),
                "per_landmark_mm": {n: float(np.nanmean(errs[:, i])) for i, n in enumerate(names)},
                "epochs": epochs, "train_seconds": train_seconds}
            log(f"{trainer} {modality}: test MRE {results['trainers'][trainer][modality]['mre_mm']:.2f} mm")

    # ---- Table 1 Wilcoxon tests ---------------------------------------------------------------
    for modality in ("MR", "US"):
        for ref in ("LandmarkTrainer", "LandmarkTrainer_Variance"):
            if ref not in results["trainers"]:
                continue
            a = results["trainers"][ref][modality]["per_case_mre_mm"]
            for trainer in results["trainers"]:
                if trainer == ref:
                    continue
                b = results["trainers"][trainer][modality]["per_case_mre_mm"]
                cases = sorted(set(a) & set(b))
                pval = float(wilcoxon([a[c] for c in cases], [b[c] for c in cases]).pvalue)
                results["trainers"][trainer][modality][f"wilcoxon_p_vs_{ref}"] = pval

    # ---- 5-fold path for the default trainer ---------------------------------------------------
    chosen = "LandmarkTrainer_Variance" if "LandmarkTrainer_Variance" in args.trainers else args.trainers[0]
    cv = {}
    if args.cv_epochs > 0:
        from lmkreg.run.find_best_configuration import main as find_best_main

        for modality in ("MR", "US"):
            for fold in range(5):
                if not (model_folder(ds.name, chosen, modality) / f"fold_{fold}" / "checkpoint_final.pth").is_file():
                    log(f"cross-validation {chosen} {modality} fold {fold} ({args.cv_epochs} epochs)")
                    train(str(DATASET_ID), modality, fold, chosen, num_workers=args.workers, seed=args.seed,
                          num_epochs=args.cv_epochs, progress_bar=False)
            rc = find_best_main(["-d", str(DATASET_ID), "-m", modality, "-tr", chosen])
            best = json.loads((Path(os.environ["LMKREG_results"]) / ds.name /
                               f"best_configuration_{modality}.json").read_text())
            ensemble = predict_test_set(ds, chosen, modality, work, [0, 1, 2, 3, 4])
            mre = per_case_mre(ds, ensemble, modality, names)
            cv[modality] = {"find_best_configuration_exit": rc, "best_configuration": best,
                            "test_mre_5fold_ensemble_mm": float(np.mean(list(mre.values())))}
            log(f"5-fold {chosen} {modality}: ensemble test MRE {cv[modality]['test_mre_5fold_ensemble_mm']:.2f} mm")
    results["cross_validation"] = cv

    # ---- Tables 2-4: registration from every trainer's predictions (nothing selected on test) ---
    from lmkreg.evaluation.evaluate import evaluate_cases

    keys = ("sre_predicted_mm", "sre_manual_mm", "dice_predicted", "dice_manual", "rotation_predicted_deg",
            "rotation_manual_deg", "icp_vs_true_transform_mm", "dice_reference")
    results["registration"] = {}
    for trainer in results["trainers"]:
        log(f"registration metrics from {trainer} landmarks")
        cases, failed = evaluate_cases(ds, ds.cases("Ts"), "Ts", {"MR": preds[(trainer, "MR")],
                                                                  "US": preds[(trainer, "US")]},
                                       names, workers=args.workers, progress=False,
                                       landmark_weight=args.landmark_weight)
        if failed:
            log(f"  evaluation failed for {sorted(failed)}")
        results["registration"][trainer] = {
            "per_case": {r.case: {k: float(getattr(r, k)) for k in keys} for r in cases},
            "failed": failed}
        if any(r.segmentation or r.refinement for r in cases):  # predicted masks: issue 17's rows
            results["registration"][trainer]["masks"] = mask_block(cases)
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    from lmkreg.evaluation.predicted_masks import LANDMARKS_SURFACE_WEIGHT

    results["settings"] = vars(args) | {"root": str(args.root), "landmark_weight": args.landmark_weight
                                        if args.landmark_weight is not None else LANDMARKS_SURFACE_WEIGHT}
    results["targets"] = {t: targets_met(results, t) for t in results["trainers"]}
    results["command"] = command
    results["wall_minutes"] = (time.perf_counter() - started) / 60
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2, default=str))

    # ---- report ---------------------------------------------------------------------------------
    L = [f"# Accuracy benchmark (phantoms)", "",
         f"Command: `{command}`  ", f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
         f"torch {results['machine']['torch']}, CUDA {results['machine']['cuda']}  ",
         f"Wall time: {results['wall_minutes']:.0f} min. Dataset: {args.train} training + {args.test} test pairs, "
         f"preset {args.preset}, seed {args.seed}; each trainer trained {args.epochs} epochs of the planned "
         f"iterations per modality on all training cases (fold 'all'), scored once on the test set.", "",
         "## Table 1: landmark detection, MRE (mm) on the test set", "",
         "| trainer | MR | US | p vs DSNT (MR / US) | p vs variance (MR / US) | epochs (MR / US) |",
         "|---|---|---|---|---|---|"]
    for trainer, d in results["trainers"].items():
        def pv(key):
            return " / ".join(f"{d[m][key]:.3g}" if key in d[m] else "–" for m in ("MR", "US"))
        L.append(f"| {trainer} | {fmt(d['MR']['per_case_mre_mm'].values())} | {fmt(d['US']['per_case_mre_mm'].values())}"
                 f" | {pv('wilcoxon_p_vs_LandmarkTrainer')} | {pv('wilcoxon_p_vs_LandmarkTrainer_Variance')} | "
                 f"{d['MR']['epochs']} / {d['US']['epochs']} |")
    L += ["", "Per landmark (mm):", "", "| trainer | modality | " + " | ".join(names) + " |",
          "|---|---|" + "---|" * len(names)]
    for trainer, d in results["trainers"].items():
        for m in ("MR", "US"):
            L.append(f"| {trainer} | {m} | " + " | ".join(f"{d[m]['per_landmark_mm'][n]:.2f}" for n in names) + " |")
    if cv:
        L += ["", f"## 5-fold cross-validation path ({chosen}, {args.cv_epochs} epochs per fold)", ""]
        for m, c in cv.items():
            L.append(f"- {m}: 5-fold ensemble test MRE {c['test_mre_5fold_ensemble_mm']:.2f} mm; "
                     f"lmkreg_find_best_configuration exit {c['find_best_configuration_exit']}")
    reg = {t: {k: [c[k] for c in d["per_case"].values()] for k in keys} for t, d in results["registration"].items()}
    any_reg = next(iter(reg.values()))
    L += ["", "## Table 2: registration of the test pairs", "",
          "Rigid MR→US by least squares on the three landmark pairs; SRE and residual rotation against the "
          "ICP reference between the MR and US prostate meshes, Dice of the mapped MR mask with the US mask.", "",
          "| landmarks from | SRE (mm) | Dice | residual rotation (deg) | max rotation (deg) |", "|---|---|---|---|---|"]
    for t, r in reg.items():
        L.append(f"| {t} | {fmt(r['sre_predicted_mm'])} | {fmt(r['dice_predicted'])} | "
                 f"{fmt(r['rotation_predicted_deg'])} | {np.nanmax(r['rotation_predicted_deg']):.1f} |")
    L.append(f"| true landmarks | {fmt(any_reg['sre_manual_mm'])} | {fmt(any_reg['dice_manual'])} | "
             f"{fmt(any_reg['rotation_manual_deg'])} | {np.nanmax(any_reg['rotation_manual_deg']):.1f} |")
    L += ["", f"ICP reference vs the phantoms' true rigid map (SRE): {fmt(any_reg['icp_vs_true_transform_mm'])} mm; "
          f"Dice of the ICP reference itself: {fmt(any_reg['dice_reference'])} (the ceiling for rigid Dice, "
          "since the US gland is compressed by the probe).", ""]
    for title, kp, km, edges in (("Table 3: SRE histogram (test cases per bin, mm)", "sre_predicted_mm",
                                  "sre_manual_mm", SRE_BINS),
                                 ("Table 4: residual rotation histogram (test cases per bin, degrees)",
                                  "rotation_predicted_deg", "rotation_manual_deg", ROT_BINS)):
        labels = [f"≤{hi:g}" if lo == 0 else (f">{lo:g}" if math.isinf(hi) else f"{lo:g}–{hi:g}")
                  for lo, hi in zip(edges[:-1], edges[1:])]
        L += [f"## {title}", "", "| landmarks from | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        L += [f"| {t} | " + " | ".join(map(str, hist(r[kp], edges))) + " |" for t, r in reg.items()]
        L += ["| true landmarks | " + " | ".join(map(str, hist(any_reg[km], edges))) + " |", ""]
    L += mask_tables(results)
    L += ["## Targets (issue 6) per trainer", "",
          "| trainer | MRE MR ≤ 1.5 | MRE US ≤ 1.5 | SRE ≤ 2.5 | Dice ≥ 0.88 | every case < 10° |", "|---|---|---|---|---|---|"]
    for t, tg in results["targets"].items():
        L.append(f"| {t} | " + " | ".join(f"{'yes' if ok else 'no'} ({v:.2f})" for ok, v in tg.values()) + " |")
    L += ["", "Paper (263 real test pairs, GPU-trained): MRE 5.77 mm MR / 5.55 mm US, SRE 6.62 mm, Dice 0.77.", ""]
    report_file.write_text("\n".join(L) + "\n")
    log(f"wrote {results_file} and {report_file} in {results['wall_minutes']:.0f} min")


if __name__ == "__main__":
    main()
