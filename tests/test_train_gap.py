"""The training verdict reports the train/validation gap (issue 27): the summary's training-set
MRE equals what the inference pipeline (LandmarkPredictor on the raw training images, one pass on
the planned crop like the validation MRE) measures with the final weights, independently of the
trainer's own code."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmkreg.dataset.layout import open_dataset
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.paths import preprocessed_folder
from lmkreg.config.splits import load_or_create_splits
from lmkreg.phantoms.generator import generate_dataset
from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
from lmkreg.run.train import model_folder, train


def test_summary_reports_training_mre_and_gap(tmp_path, monkeypatch):
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "pre"), ("LMKREG_results", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    generate_dataset(1, 6, 0, preset="tiny", seed=5, workers=1, root=tmp_path / "raw", progress=False)
    plan_and_preprocess("1", workers=1)
    summary = train("1", "MR", 0, "HeatmapMatchingTrainer", num_epochs=1, iterations_per_epoch=3, num_workers=0,
                    progress_bar=False)
    ds = open_dataset(1)
    train_cases = load_or_create_splits(preprocessed_folder(ds), ds.cases("Tr"))[0]["train"]
    assert summary["training_mre_cases"] == len(train_cases)
    from lmkreg.inference.predictor import LandmarkPredictor

    # one pass on the planned crop, like the validation MRE beside it (no re-centring second pass)
    predictor = LandmarkPredictor(model_folder(ds.name, "HeatmapMatchingTrainer", "MR"), folds=["0"], recentre=False)
    errors = []
    for case in sorted(train_cases):
        pred = predictor.predict(read_image(ds.image_path(case, "MR"))).landmarks
        true = read_lmkreg_json(ds.landmarks_path(case, "MR"))
        errors.append(np.linalg.norm(pred.to_array(true.names) - true.to_array(), axis=1))
    expected = float(np.nanmean(np.nanmean(np.array(errors), axis=0)))
    assert summary["training_mre_mm"] == pytest.approx(expected, abs=0.05)
    assert summary["train_validation_gap_mm"] == pytest.approx(summary["mre_mm"] - summary["training_mre_mm"])
    log = (model_folder(ds.name, "HeatmapMatchingTrainer", "MR") / "fold_0" / "training_log.txt").read_text()
    assert "train/validation gap" in log
