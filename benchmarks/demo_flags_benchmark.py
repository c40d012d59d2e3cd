"""How often does the demo flag its clean test pairs?  (Issue 14: the demo's false pair flags.)

Re-runs the demo's last three stages (predict, register, evaluate) with the current code on the
models a finished ``demo_twice_benchmark.py`` run trained, without training again:

1. each run's model folders are copied (the originals are not touched), their calibration is
   re-pooled from the stored per-case calibration records (``fold_0/calibration_cases.json``,
   written at training time) and their training statistics are written again, as training with
   the current code would do;
2. the demo's test images are predicted as the demo predicts them now (fold 0, mirror TTA);
3. ``lmkreg_register`` and ``lmkreg_evaluate`` run as in the demo.

It reports, per run, the pairs register flagged, which of them have SRE > 5 mm (a true flag),
the landmarks flagged and the radii's coverage.

    python benchmarks/demo_flags_benchmark.py --root /tmp/lmkreg_dt2    # after demo_twice_benchmark.py --root /tmp/lmkreg_dt2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo_flags.json"
DATASET = "900"
TRAINER = "HeatmapMatchingTrainer"
ERROR_MM = 5.0


def rerun(root: Path, run: str, work: Path) -> dict:
    from lmkreg.dataset.layout import open_dataset
    from lmkreg.run.evaluate import main as evaluate_main
    from lmkreg.run.demo import predict_test_images
    from lmkreg.run.register import main as register_main
    from lmkreg.config.plans import Plans
    from lmkreg.paths import preprocessed_folder
    from lmkreg.trust.calibration import pool_calibration
    from lmkreg.run.calibrate import write_training_statistics

    results = work / run / "results"
    if results.exists():
        shutil.rmtree(results)
    shutil.copytree(root / run / "results", results)
    os.environ.update({"LMKREG_raw": str(root / "raw"), "LMKREG_preprocessed": str(root / "preprocessed"),
                       "LMKREG_results": str(results)})
    ds = open_dataset(DATASET)
    out = work / run / "demo"
    preds = {}
    for modality in ("MR", "US"):
        model = results / ds.name / f"{TRAINER}__{modality}"
        plans = Plans.load(model / "plans.json")
        names = list(plans.landmarks)
        pool_calibration(model, names)
        conf = plans.configuration(modality)  # training statistics as the current code writes them
        write_training_statistics(model, ds, modality, preprocessed_folder(ds) / conf.data_identifier, names,
                                  ds.cases("Tr", modality))
        preds[modality] = predict_test_images(model, root / run / "demo" / "test_images" / modality,
                                              out / "predictions" / modality, progress=False)
    register_main(["--mr-dir", str(preds["MR"]), "--us-dir", str(preds["US"]), "-o", str(out / "transforms")])
    evaluate_main(["-d", DATASET, "--mr-pred", str(preds["MR"]), "--us-pred", str(preds["US"]), "-o",
                   str(out / "evaluation"), "--split", "Ts", "--qc", "0", "--no-progress"])
    doc = json.loads((out / "evaluation" / "evaluation.json").read_text())
    cases = doc["cases"]
    pairs = []
    for c in cases:
        t = out / "transforms" / f"{c['case']}_MR_to_US.json"
        trust = json.loads(t.read_text()).get("trust", {}) if t.is_file() else {}
        pairs.append({"case": c["case"], "sre_mm": c.get("sre_predicted_mm"), "flagged": not trust.get("reliable", True),
                      "rms_residual_mm": trust.get("rms_residual_mm"), "limit_mm": trust.get("expected_rms_limit_mm"),
                      "flags": trust.get("flags", []), "notes": trust.get("notes", []),
                      "two_landmarks": trust.get("two_landmarks")})
    flagged = [p for p in pairs if p["flagged"]]
    true_flags = [p for p in flagged if p["sre_mm"] is not None and p["sre_mm"] > ERROR_MM]
    bad = [p for p in pairs if p["sre_mm"] is not None and p["sre_mm"] > ERROR_MM]
    cal = doc["summary"].get("calibration", {})
    summ = doc["summary"]
    return {"mre_mm": {m: ((summ.get("mre") or {}).get(m, {}).get("per_case") or {}).get("mean") for m in ("MR", "US")},
            "sre_mm_all_pairs": (summ.get("sre_predicted_mm") or {}).get("mean"),
            "sre_mm_unflagged_pairs": ((summ.get("unflagged_pairs") or {}).get("sre_predicted_mm") or {}).get("mean"),
            "pairs": len(pairs), "pairs_flagged": len(flagged), "true_flags": len(true_flags),
            "false_flags": len(flagged) - len(true_flags), "pairs_sre_above_5mm": len(bad),
            "missed_bad_pairs": len([p for p in bad if not p["flagged"]]),
            "two_landmark_pairs": [p["case"] for p in pairs if p["two_landmarks"]],
            "radius_coverage": {m: (cal.get(m, {}).get("all", {}) or {}).get("coverage") for m in ("MR", "US")},
            "landmarks_flagged": {m: (cal.get(m, {}).get("all", {}) or {}).get("num_flagged") for m in ("MR", "US")},
            "per_pair": pairs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="root folder of a finished demo_twice_benchmark.py run")
    p.add_argument("--work", type=Path, default=None, help="where the copies and outputs go (default ROOT/flags)")
    p.add_argument("--runs", nargs="+", default=["idle", "busy"], help="runs of the demo-twice root to re-check")
    p.add_argument("-o", "--output", type=Path, default=RESULTS, help="results JSON")
    args = p.parse_args(argv)
    work = args.work or args.root / "flags"
    t0 = time.perf_counter()
    out = {"command": "python benchmarks/demo_flags_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "demo_twice_root": str(args.root), "runs": {}}
    for run in args.runs:
        out["runs"][run] = rerun(args.root, run, work)
        r = out["runs"][run]
        print(f"{run}: {r['pairs_flagged']}/{r['pairs']} pairs flagged ({r['true_flags']} with SRE > {ERROR_MM:g} mm, "
              f"{r['false_flags']} false); bad pairs missed {r['missed_bad_pairs']}; radius coverage "
              f"MR {r['radius_coverage']['MR']} US {r['radius_coverage']['US']}")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    from lmkreg.io.atomic import atomic_write_json

    atomic_write_json(args.output, out)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
