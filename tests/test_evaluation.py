"""lmkreg_evaluate (MRE, SRE, Dice, histograms, report, QC) on tiny phantoms with predictions made
by moving the true landmarks by known offsets, and lmkreg_find_best_configuration on fabricated
cross-validation results."""
from __future__ import annotations

import copy
import csv
import json
import shutil
import os
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from scipy.stats import wilcoxon

from lmkreg.config.splits import load_or_create_splits
from lmkreg.dataset.layout import Dataset, DatasetSpec
from lmkreg.run.evaluate import main as evaluate_main
from lmkreg.evaluation.evaluate import case_rows, evaluate_case, summarize
from lmkreg.evaluation.model_selection import collect_cv_results, compare_trainers, find_best_configuration
from lmkreg.run.find_best_configuration import main as best_main
from lmkreg.evaluation.report import ROTATION_BINS_DEG, SRE_BINS_MM, histogram
from lmkreg.io.landmark_files import write_landmarks
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.paths import preprocessed_folder
from lmkreg.phantoms.generator import generate_dataset, load_summary
from lmkreg.phantoms.presets import get_preset

NAMES = ("apex", "bladder_neck", "posterior_median")
# known prediction errors (world LPS mm); their lengths are 5, 2, 3 (MR) and 10, 1, 7 (US)
OFFSETS = {"MR": {"apex": (3.0, 4.0, 0.0), "bladder_neck": (0.0, 0.0, 2.0), "posterior_median": (1.0, 2.0, 2.0)},
           "US": {"apex": (0.0, 6.0, 8.0), "bladder_neck": (-1.0, 0.0, 0.0), "posterior_median": (2.0, 3.0, 6.0)}}
NORMS = {m: {n: float(np.linalg.norm(v)) for n, v in o.items()} for m, o in OFFSETS.items()}
CSV_COLUMNS = (["case"] + [c for m in ("MR", "US") for c in [f"{m}_{n}_mm" for n in NAMES] + [f"{m}_mre_mm"]]
               + ["sre_predicted_mm", "sre_manual_mm", "rotation_predicted_deg", "rotation_manual_deg",
                  "dice_predicted", "dice_manual", "dice_reference", "reference_fit_mm", "icp_vs_true_transform_mm",
                  "notes"])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# lmkreg_evaluate
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """2 training + 3 test tiny phantoms.  With seed 3 the test set holds a partial TRUS view
    (EvalPhantom_003) whose apex is outside the fan, so it has only 2 true US landmarks."""
    root = tmp_path_factory.mktemp("evaluation_raw")
    return generate_dataset(31, 2, 3, name="EvalPhantom", preset="tiny", seed=3, workers=1, root=root, progress=False)


@pytest.fixture
def ds(phantom, monkeypatch) -> Dataset:
    monkeypatch.setenv("LMKREG_raw", str(phantom.parent))
    return Dataset(phantom)


def _missing_us_case(folder: Path) -> tuple[str, list[str]]:
    """The test case whose US lacks true landmarks, and which."""
    cases = [c for c in load_summary(folder)["cases"] if c["split"] == "Ts" and c["missing_us_landmarks"]]
    assert cases, "the fixture should hold a partial view with a missing US landmark"
    return cases[0]["case"], cases[0]["missing_us_landmarks"]


def write_predictions(ds: Dataset, out: Path, suffix: str, offsets=OFFSETS, skip=()) -> dict[str, Path]:
    """Predictions = true landmarks + offsets, written as CASE_MOD{suffix} into out/MR and out/US.
    A landmark without a true position gets a prediction anyway (a network always answers)."""
    folders = {m: out / m for m in ("MR", "US")}
    for case in ds.cases("Ts"):
        for m in ("MR", "US"):
            if (case, m) in skip:
                continue
            truth = read_lmkreg_json(ds.landmarks_path(case, m, "Ts"))
            present = np.array([p for p in truth.points.values() if p is not None])
            points = {n: (present.mean(0) if truth[n] is None else truth[n]) + np.asarray(offsets[m][n]) for n in NAMES}
            write_landmarks(LandmarkSet(points), folders[m] / f"{case}_{m}{suffix}")
    return folders


@pytest.fixture(scope="module")
def perfect(phantom) -> dict:
    """evaluate_case of every test case with predictions = ground truth."""
    ds = Dataset(phantom)
    truth = {"MR": phantom / "landmarksTs", "US": phantom / "landmarksTs"}
    return {c: evaluate_case(ds, c, "Ts", truth, NAMES) for c in ds.cases("Ts")}


def test_mre_equals_the_known_offsets(ds, tmp_path):
    preds = write_predictions(ds, tmp_path, ".json")
    missing_case, missing_names = _missing_us_case(ds.folder)
    for case in ds.cases("Ts"):
        r = evaluate_case(ds, case, "Ts", preds, NAMES)
        for m in ("MR", "US"):
            for n in NAMES:
                if m == "US" and case == missing_case and n in missing_names:
                    assert math.isnan(r.errors_mm[m][n])  # no true position: no error
                else:
                    assert r.errors_mm[m][n] == pytest.approx(NORMS[m][n], abs=1e-9)
        expected_mr = np.mean(list(NORMS["MR"].values()))
        assert r.mre_mm("MR") == pytest.approx(expected_mr, abs=1e-9)
        # three predicted landmarks per modality: a predicted registration always exists
        assert math.isfinite(r.sre_predicted_mm) and 0 <= r.dice_predicted <= 1
        if case == missing_case:
            assert math.isnan(r.sre_manual_mm) and any("no manual registration" in note for note in r.notes)
        else:
            assert math.isfinite(r.sre_manual_mm)


def test_predictions_equal_to_the_truth_give_the_manual_sre_and_dice(perfect, phantom):
    missing_case, _ = _missing_us_case(phantom)
    for case, r in perfect.items():
        assert all(e == 0.0 or math.isnan(e) for m in ("MR", "US") for e in r.errors_mm[m].values())
        if case == missing_case:  # 2 true US landmarks: neither registration exists; the reference does
            assert math.isnan(r.sre_predicted_mm) and math.isnan(r.sre_manual_mm)
            assert math.isfinite(r.dice_reference) and r.reference_transform is not None
            continue
        assert r.sre_predicted_mm == pytest.approx(r.sre_manual_mm, abs=1e-9)
        assert r.dice_predicted == pytest.approx(r.dice_manual, abs=1e-12)
        assert r.rotation_predicted_deg == pytest.approx(r.rotation_manual_deg, abs=1e-9)
        assert np.allclose(r.predicted_transform, r.manual_transform)


def test_icp_reference_is_close_to_the_phantoms_true_transform(perfect, phantom):
    """The ICP reference (paper's ground truth) against the rigid map the phantom was made with.

    Two effects keep them apart.  (1) Both prostate surfaces are marching-cubes meshes of
    masks on 1.8 mm grids ("tiny" preset): each is only accurate to about half a voxel, so
    together up to one voxel.  (2) The TRUS probe pushes the gland by `compression_mm` (1.5-4
    mm, locally at the posterior wall); no rigid map can undo that, and ICP shifts/tilts the
    whole gland by up to that amount to share the misfit.  Hence SRE(ICP, true) <= voxel +
    compression.  In a partial view the fan cuts the gland, so the US surface is incomplete and
    the fit less constrained: one more voxel of slack.  Measured on this fixture: about
    1.0 and 1.6 mm for the full views, 3.6 mm for the partial one; the bounds are 3.97, 5.52
    and 5.55 mm.
    """
    preset = get_preset("tiny")
    voxel = max(preset.mr_spacing_xyz + preset.us_spacing_xyz)
    info = {c["case"]: c for c in load_summary(phantom)["cases"]}
    for case, r in perfect.items():
        bound = voxel * (2 if info[case]["partial_view"] else 1) + info[case]["compression_mm"]
        assert 0 < r.icp_vs_true_transform_mm <= bound, (case, r.icp_vs_true_transform_mm, bound)
        assert r.dice_reference > 0.85
        if not info[case]["partial_view"]:  # the whole ICP-mapped MR surface lies on the US surface
            assert r.reference_fit_mm < voxel


def test_histogram_counts_by_hand():
    values = [0.0, 4.9, 5.0, 5.1, 10.0, 12.0, 29.9, 44.0, 46.0, float("nan")]
    # bins (lo, hi]: <=5 | 5-10 | 10-15 | 15-20 | 20-25 | 25-30 | 30-45 | >45 ; NaN not counted
    assert histogram(values, SRE_BINS_MM) == [3, 2, 1, 0, 0, 1, 1, 1]
    angles = [1.0, 5.0, 7.0, 19.9, 20.0, 20.1, 45.0, 61.0, 69.9, 80.0]
    # <=5 | 5-10 | 10-20 | 20-30 | 30-40 | 40-60 | 60-70 | >70
    assert histogram(angles, ROTATION_BINS_DEG) == [2, 1, 2, 1, 0, 1, 2, 1]


def test_histogram_reproduces_the_papers_table_3():
    paper = [93, 137, 28, 1, 3, 0, 1]  # neural network row of Table 3 (thresholds 5 ... 45 mm)
    edges = SRE_BINS_MM
    values = [(lo + hi) / 2 for (lo, hi), k in zip(zip(edges[:-2], edges[1:-1]), paper) for _ in range(k)]
    assert histogram(values, edges) == paper + [0]


def test_summary_of_per_case_mre(perfect):
    results = copy.deepcopy(list(perfect.values()))  # the fixture is shared: change a copy
    results[0].errors_mm["MR"] = {"apex": 1.0, "bladder_neck": 2.0, "posterior_median": 6.0}  # MRE 3
    s = summarize(results, NAMES)
    per_case = [r.mre_mm("MR") for r in results]
    assert s["mre"]["MR"]["per_case"]["mean"] == pytest.approx(np.mean(per_case))
    assert s["mre"]["MR"]["per_case"]["sd"] == pytest.approx(np.std(per_case, ddof=1))
    assert s["mre"]["MR"]["sdr_2mm"] == pytest.approx(8 / 9)  # 6 zeros, 1 and 2 of the 9 errors are <= 2 mm
    assert [row["MR_mre_mm"] for row in case_rows(results, NAMES)] == pytest.approx(per_case)


def test_summary_reports_the_pairs_not_flagged_beside_all_pairs(perfect):
    results = copy.deepcopy(list(perfect.values()))
    sres = [1.0, 35.0, 2.0][:len(results)]
    flags = [False, True, None][:len(results)]
    for r, sre, flag in zip(results, sres, flags):
        r.sre_predicted_mm, r.pair_flagged = sre, flag
    s = summarize(results, NAMES)
    kept = [x for x, f in zip(sres, flags) if f is False]  # None = not assessed: neither flagged nor kept
    assert s["pairs_flagged"] == sum(f is True for f in flags)
    assert s["unflagged_pairs"]["sre_predicted_mm"]["n"] == len(kept)
    assert s["unflagged_pairs"]["sre_predicted_mm"]["mean"] == pytest.approx(np.mean(kept))
    assert s["sre_predicted_mm"]["mean"] == pytest.approx(np.mean(sres))  # the flagged pair stays in "all"


def test_cli_writes_the_report_and_lists_a_case_without_prediction(ds, tmp_path, capsys):
    preds = write_predictions(ds, tmp_path / "pred", ".mrk.json", skip={("EvalPhantom_004", "US")})
    out = tmp_path / "report"
    rc = evaluate_main(["-d", "31", "--mr-pred", str(preds["MR"]), "--us-pred", str(preds["US"]), "-o", str(out),
                        "--qc", "2", "--workers", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "EvalPhantom_004" in captured.err and str(out / "evaluation.md") in captured.out
    assert "SRE (mm)" in captured.out
    for name in ("evaluation.md", "evaluation.csv", "evaluation.json", "histograms.png"):
        assert (out / name).is_file(), name

    md = (out / "evaluation.md").read_text(encoding="utf-8")
    for section in ("## Landmark detection (MRE, mm)", "(paper Table 2)", "(paper Table 3)", "(paper Table 4)",
                    "## Not evaluated"):
        assert section in md
    assert "- EvalPhantom_004: no US prediction" in md

    with open(out / "evaluation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        assert list(rows[0]) == CSV_COLUMNS
    assert [r["case"] for r in rows] == ["EvalPhantom_002", "EvalPhantom_003"]
    for r in rows:
        assert float(r["MR_apex_mm"]) == pytest.approx(5.0) and float(r["US_posterior_median_mm"]) == pytest.approx(7.0)
        assert float(r["sre_predicted_mm"]) > 0

    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["summary"]["num_cases"] == 2 and list(doc["missing_predictions"]) == ["EvalPhantom_004"]
    assert doc["summary"]["mre"]["MR"]["per_case"]["mean"] == pytest.approx(10 / 3)
    assert len(doc["cases"]) == 2 and np.asarray(doc["cases"][0]["predicted_transform"]).shape == (4, 4)

    pngs = [out / "histograms.png"] + [out / "qc" / f"{c}_{kind}.png" for c in ("EvalPhantom_002", "EvalPhantom_003")
                                       for kind in ("landmarks_MR", "landmarks_US", "fusion")]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
        assert matplotlib.image.imread(png).ndim == 3
        assert f"({png.relative_to(out)})" in md or png.name == "histograms.png"  # linked from the report


def test_cli_exit_status_when_nothing_can_be_evaluated(ds, tmp_path, capsys):
    for m in ("MR", "US"):
        (tmp_path / m).mkdir()
    args = ["-d", "31", "--mr-pred", str(tmp_path / "MR"), "--us-pred", str(tmp_path / "US"), "-o", str(tmp_path / "o")]
    assert evaluate_main(args + ["--no-progress"]) == 1
    assert "no case could be evaluated" in capsys.readouterr().err
    assert not (tmp_path / "o" / "evaluation.md").exists()
    args[3] = str(tmp_path / "nowhere")
    assert evaluate_main(args) == 2  # a prediction folder that does not exist is a usage error
    assert "prediction folder not found" in capsys.readouterr().err


def test_two_predictions_of_one_case_are_refused_naming_both(ds, tmp_path, capsys):
    """CASE_MR.json and CASE.mrk.json in one folder are two predictions: never pick one silently."""
    preds = write_predictions(ds, tmp_path / "pred", ".json")
    first = sorted(preds["MR"].glob("*_MR.json"))[0]
    twin = first.with_name(first.name.replace("_MR.json", ".mrk.json"))
    shutil.copy(first, twin)
    out = tmp_path / "report"
    rc = evaluate_main(["-d", "31", "--mr-pred", str(preds["MR"]), "--us-pred", str(preds["US"]), "-o", str(out),
                        "--qc", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and first.name in err and twin.name in err, err
    assert not (out / "evaluation.md").exists()


# ---------------------------------------------------------------------------------------------
# lmkreg_find_best_configuration
# ---------------------------------------------------------------------------------------------

ERROR_RANGES = {"LandmarkTrainer_Variance": (0.5, 1.5), "LandmarkTrainer": (2.0, 4.0),
                "DirectRegressionTrainer": (5.0, 9.0)}
CV_CASES = [f"cv_{i:03d}" for i in range(20)]


def _fabricate_trainer(results: Path, splits, truth: dict, trainer: str, modality: str, lo: float, hi: float,
                       rng: np.random.Generator, folds=range(5)) -> dict[str, float]:
    """Validation JSONs of `folds` = truth + random offsets of length in [lo, hi]; returns the
    per-case MRE they were made to have (landmarks without a true position left out)."""
    expected = {}
    for fold in folds:
        val = results / f"{trainer}__{modality}" / f"fold_{fold}" / "validation"
        for case in splits[fold]["val"]:
            lengths, points = [], {}
            for n in NAMES:
                d = rng.normal(size=3)
                length = rng.uniform(lo, hi)
                t = truth[case][n]
                points[n] = (np.zeros(3) if t is None else t) + length * d / np.linalg.norm(d)
                if t is not None:
                    lengths.append(length)
            write_lmkreg_json(LandmarkSet(points), val / f"{case}.json")
            expected[case] = float(np.mean(lengths))
        (val / "summary.json").write_text(json.dumps({"trainer": trainer, "modality": modality, "fold": str(fold)}))
    return expected


@pytest.fixture
def cv(lmkreg_folders):
    """Dataset020_CV: 20 cases of MR ground truth (one without an apex), splits_final.json, and
    validation predictions of three complete trainers plus one whose fold 4 is missing."""
    folder = Path(os.environ["LMKREG_raw"]) / "Dataset020_CV"
    ds = Dataset.create(folder, DatasetSpec(name="Dataset020_CV"))
    rng = np.random.default_rng(7)
    truth = {}
    for i, case in enumerate(CV_CASES):
        pts = {n: rng.uniform(-40, 40, 3) for n in NAMES}
        if i == 3:
            pts["apex"] = None
        truth[case] = pts
        write_lmkreg_json(LandmarkSet(pts), ds.landmarks_path(case, "MR", "Tr"))
    splits = load_or_create_splits(preprocessed_folder(ds), CV_CASES)
    results = Path(os.environ["LMKREG_results"]) / ds.name
    expected = {t: _fabricate_trainer(results, splits, truth, t, "MR", lo, hi, rng)
                for t, (lo, hi) in ERROR_RANGES.items()}
    _fabricate_trainer(results, splits, truth, "HeatmapMatchingTrainer", "MR", 0.1, 0.2, rng, folds=range(4))
    (results / "LandmarkTrainer__MR" / "fold_all").mkdir()  # not a cross-validation fold: ignored
    _fabricate_trainer(results, splits, truth, "LandmarkTrainer", "US", 0.0, 0.1, rng, folds=range(1))
    return ds, results, splits, truth, expected


def test_ranking_best_configuration_and_predict_command(cv, capsys):
    ds, results, _, _, _ = cv
    assert best_main(["-d", "20", "-m", "MR"]) == 0
    captured = capsys.readouterr()
    assert "skipped HeatmapMatchingTrainer: fold 4 not trained" in captured.err
    command = "lmkreg_predict -i INPUT -o OUTPUT -d 20 -m MR -tr LandmarkTrainer_Variance -f 0 1 2 3 4"
    assert command in captured.out
    best = json.loads((results / "best_configuration_MR.json").read_text())
    assert best["best_trainer"] == "LandmarkTrainer_Variance" and best["predict_command"] == command
    assert [r["trainer"] for r in best["ranking"]] == ["LandmarkTrainer_Variance", "LandmarkTrainer",
                                                       "DirectRegressionTrainer"]
    assert list(best["incomplete"]) == ["HeatmapMatchingTrainer"]
    assert all(r["num_cases"] == 20 for r in best["ranking"])
    md = (results / "cross_validation_MR.md").read_text(encoding="utf-8")
    assert "Wilcoxon" in md and "HeatmapMatchingTrainer: fold 4 not trained" in md and command in md


def test_per_case_mre_and_wilcoxon_p_values_match_scipy(cv):
    ds, _, _, _, expected = cv
    complete, incomplete = collect_cv_results(ds, "MR")
    assert sorted(complete) == sorted(ERROR_RANGES) and "HeatmapMatchingTrainer" in incomplete
    for t, exp in expected.items():
        got = complete[t].per_case_mre
        assert sorted(got) == sorted(CV_CASES)
        assert [got[c] for c in CV_CASES] == pytest.approx([exp[c] for c in CV_CASES], abs=1e-9)
    comparison = compare_trainers(complete)
    for a in expected:
        for b in expected:
            if a == b:
                continue
            direct = wilcoxon([expected[a][c] for c in CV_CASES], [expected[b][c] for c in CV_CASES]).pvalue
            assert comparison["wilcoxon_p"][a][b] == pytest.approx(direct, rel=1e-12)
            assert comparison["pairs"][a][b] == 20
    best = comparison["ranking"][0]
    assert best["mre_mm"] == pytest.approx(np.mean(list(expected["LandmarkTrainer_Variance"].values())))
    assert comparison["ranking"][1]["p_vs_best"] < 0.05  # 0.5-1.5 mm vs 2-4 mm on 20 cases


def test_folds_option_and_trainer_selection(cv):
    ds, *_ = cv
    doc = find_best_configuration("20", "MR", folds=[0])
    assert doc["best_trainer"] == "HeatmapMatchingTrainer" and doc["folds"] == [0]  # complete for fold 0
    assert doc["predict_command"].endswith("-tr HeatmapMatchingTrainer -f 0")
    assert doc["ranking"][0]["num_cases"] == 4  # 20 cases in 5 folds
    doc = find_best_configuration("20", "MR", trainers=["LandmarkTrainer", "NoSuchTrainer"])
    assert doc["best_trainer"] == "LandmarkTrainer" and "no results folder" in doc["incomplete"]["NoSuchTrainer"]
    assert doc["wilcoxon_p"] == {"LandmarkTrainer": {}}


def test_a_fold_missing_validation_cases_makes_the_trainer_incomplete(cv, capsys):
    ds, results, splits, *_ = cv
    for t in ERROR_RANGES:
        (results / f"{t}__MR" / "fold_2" / "validation" / f"{splits[2]['val'][0]}.json").unlink()
    complete, incomplete = collect_cv_results(ds, "MR")
    assert not complete
    assert all("fold 2 lacks validation predictions of 1 case(s)" in incomplete[t] for t in ERROR_RANGES)
    assert best_main(["-d", "20", "-m", "MR"]) == 1
    assert "no trainer" in capsys.readouterr().err
    assert not (results / "best_configuration_MR.json").exists()
