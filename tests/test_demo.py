"""The demo (README's first command) runs every stage and its report holds real numbers."""
import json
import math

import numpy as np

from lmkreg.run.demo import DemoSettings, run_demo


def test_demo_runs_every_stage_and_reports_measured_metrics(tmp_path, capsys):
    # a fixed number of epochs, not a time budget: the run is the same on a busy or an idle machine (the
    # demo always passes a budget; 60 min can never cut 2 epochs of 3 steps; threads: conftest.pinned_threads)
    settings = DemoSettings("tiny", num_train=6, num_test=2, train_minutes=60.0, iterations_per_epoch=3, num_epochs=2)
    out = tmp_path / "demo"
    summary = run_demo(output=out, dataset_id=990, settings=settings, workers=1)
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    for stage in range(1, 7):
        assert f"[{stage}/6]" in printed
    report = out / "evaluation"
    assert (report / "evaluation.md").is_file() and (report / "histograms.png").is_file()
    assert len(list((report / "qc").glob("*.png"))) >= 2
    # every test pair gets a transform (a proper rotation) or a named registration error: a model
    # trained for seconds may put its three landmarks on one line or one voxel, which register must refuse
    tfms = sorted((out / "transforms").glob("*.json"))
    refused = [line for line in printed.splitlines()
               if line.startswith("error:") and ("collinear" in line or "coincide" in line)]
    assert len(tfms) + len(refused) == 2 and tfms
    for f in tfms:
        doc = json.loads(f.read_text())
        matrix = np.asarray(doc["matrix"], float)
        r = matrix[:3, :3]
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-6) and math.isclose(np.linalg.det(r), 1.0, abs_tol=1e-6)
    # the demo predicts as lmkreg_predict does, with mirror TTA: every landmark has its mirror gap (the
    # calibrated radius needs it) and the model's median validation error for the pair check
    for modality in ("MR", "US"):
        for f in sorted((out / "predictions" / modality).glob("*[!k].json")):
            trust = json.loads(f.read_text())["extras"]["trust"]
            for lm in trust["landmarks"].values():
                assert lm["mirror_gap_mm"] is not None and lm["validation_median_error_mm"] > 0
    # the summary holds what evaluation.json holds, computed from these predictions
    on_disk = json.loads((report / "evaluation.json").read_text())["summary"]
    assert summary == on_disk
    assert "report:" in printed and str(report / "evaluation.md") in printed
    # 2 epochs of 3 steps: the demo's last lines say the models are not fit for use, why, and what to do
    verdict = json.loads((out / "models_verdict.json").read_text())
    assert verdict["fit_for_use"] is False
    for modality in ("MR", "US"):
        assert verdict["modalities"][modality]["steps"] == 6
        assert any("fewer than the plan's minimum" in r for r in verdict["modalities"][modality]["reasons"])
    closing = captured.out.rstrip().splitlines()[-4:]
    assert closing[0].startswith("Models NOT fit for use") and "--train-minutes" in closing[-1]


def test_demo_registers_on_surfaces_only_with_a_segmentation_head():
    from lmkreg.run.demo import has_segmentation, registration_used

    assert has_segmentation("HeatmapMatchingTrainer_Seg") and not has_segmentation("HeatmapMatchingTrainer")
    landmark_row = {"n": 10, "mean": 5.3, "sd": 10.0, "median": 1.6, "max": 35.0}
    surface_row = {"n": 10, "mean": 0.9, "sd": 0.4, "median": 0.8, "worst": 1.9}
    assert registration_used({"sre_predicted_mm": landmark_row}) == ("landmarks", landmark_row)
    assert registration_used({"sre_predicted_mm": landmark_row, "registration_variants": {}}) == ("landmarks", landmark_row)
    with_masks = {"sre_predicted_mm": landmark_row, "registration_variants": {
        "surface": {"sre_mm": landmark_row}, "landmarks_surface": {"sre_mm": surface_row}}}
    assert registration_used(with_masks) == ("landmarks+surface", surface_row)


def test_demo_twice_benchmark_reads_the_training_stage_time():
    """benchmarks/demo_twice_benchmark.py takes the training seconds from the demo's own output:
    the "done in" of the training stage, not of the stages around it."""
    from benchscripts import load_benchmark

    module = load_benchmark("demo_twice_benchmark")
    output = ("[2/6] fingerprint, plans and preprocessing\n      done in 12 s: /x/plans.json\n\n"
              "[3/6] training HeatmapMatchingTrainer for MR and US, fold 0, about 5 min each\n"
              "MR: epoch 3 ... done in 4 epochs\n      done in 756 s\n\n[4/6] predicting\n      done in 4 s: /x\n")
    assert module.training_seconds(output) == 756.0
    assert module.training_seconds(output.replace("      done in 756 s\n", "")) is None  # the next stage's is not taken
    assert module.training_seconds("[1/6] generating\n      done in 3 s\n") is None
