"""Issue 25: lmkreg_evaluate never replaces a report it did not write, reads a Slicer-edited
CASE.mrk.json when it is newer than the CASE.json beside it (and says so), and records the
provenance of the predictions it evaluated."""
from __future__ import annotations

import json
import os

import numpy as np

from lmkreg.run.evaluate import main as evaluate_main
from lmkreg.io.landmark_files import read_landmarks, write_landmarks
from test_evaluation import NAMES, ds, phantom, write_predictions  # noqa: F401  (fixtures)


def _args(preds, out):
    return ["-d", "31", "--mr-pred", str(preds["MR"]), "--us-pred", str(preds["US"]), "-o", str(out), "--qc", "0",
            "--no-progress", "--workers", "1"]


def test_foreign_report_files_are_not_replaced(ds, tmp_path, capsys):
    """Why: lmkreg_evaluate -o overwrote a foreign evaluation.md / .csv."""
    preds = write_predictions(ds, tmp_path / "pred", ".json")
    out = tmp_path / "report"
    out.mkdir()
    (out / "evaluation.md").write_text("my own notes")
    assert evaluate_main(_args(preds, out)) == 2
    assert "evaluation.md" in capsys.readouterr().err and (out / "evaluation.md").read_text() == "my own notes"
    assert evaluate_main(_args(preds, out) + ["--overwrite"]) == 0
    assert evaluate_main(_args(preds, out)) == 0  # now lmkreg's own report: replaced
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["provenance"]["lmkreg_version"] and set(doc["provenance"]["MR"]) == {c["case"] for c in doc["cases"]}


def test_newer_slicer_edit_beside_the_json_is_evaluated_and_announced(ds, tmp_path, capsys):
    preds = write_predictions(ds, tmp_path / "pred", ".json")
    first = sorted(preds["MR"].glob("*_MR.json"))[0]
    case = first.name[: -len("_MR.json")]
    edited = read_landmarks(first)
    edited.points["apex"] = edited.points["apex"] + np.array([0.0, 0.0, 6.0])
    twin = first.with_name(f"{case}_MR.mrk.json")
    write_landmarks(edited, twin)
    t = first.stat().st_mtime
    os.utime(twin, (t + 60, t + 60))
    out = tmp_path / "report"
    assert evaluate_main(_args(preds, out)) == 0
    assert f"{case}: {twin.name} is newer than {first.name}" in capsys.readouterr().out
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["provenance"]["MR"][case]["file"] == str(twin)


def test_unmatched_cases_are_listed_and_are_problems_under_strict(ds, tmp_path, capsys):
    """Why: a case present on one side only was dropped without a word, also under --strict."""
    cases = ds.cases("Ts")
    lonely = cases[0]
    exact = {m: {n: (0.0, 0.0, 0.0) for n in NAMES} for m in ("MR", "US")}  # predictions = truth: no pair flagged
    preds = write_predictions(ds, tmp_path / "pred", ".json", offsets=exact)
    out = tmp_path / "report"
    assert evaluate_main(_args(preds, out) + ["--strict"]) == 0  # everything matched, nothing flagged
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["summary"]["pairs_flagged"] == 0 and doc["unmatched"]["count"] == 0
    capsys.readouterr()

    (preds["US"] / f"{lonely}_US.json").unlink()  # this case is now predicted in MR only
    stranger = preds["MR"] / "Stranger_MR.json"  # a prediction of a case the ground truth does not hold
    stranger.write_text((preds["MR"] / f"{cases[1]}_MR.json").read_text())
    assert evaluate_main(_args(preds, out)) == 0  # listed, not fatal without --strict
    err = capsys.readouterr().err
    assert (f"unmatched: MR prediction(s) in {preds['MR']} without MR ground truth in landmarksTs: Stranger"
            in err)
    assert f"unmatched: US ground truth without a prediction in {preds['US']}: {lonely}" in err
    assert (f"unmatched: predicted in MR only (no US prediction in {preds['US']}): "
            f"{', '.join(sorted(['Stranger', lonely]))}" in err)
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["unmatched"] == {"predictions_without_ground_truth": {"MR": ["Stranger"], "US": []},
                                "ground_truth_without_prediction": {"MR": [], "US": [lonely]},
                                "one_modality_only": {"MR": sorted(["Stranger", lonely]), "US": []},
                                "count": 2}
    assert {c["case"] for c in doc["cases"]} == set(cases) - {lonely}  # the matched ones are still evaluated
    assert doc["summary"]["pairs_flagged"] == 0
    assert evaluate_main(_args(preds, out) + ["--strict"]) == 3  # STRICT_EXIT, as predict and register
