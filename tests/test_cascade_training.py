"""Training a cascade (issues 13 and 14): the refine stage's crops are offset by the localizer's
measured out-of-fold error (planned jitter when there is none), and every stage's model folder
gets its own calibration and training statistics."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.training.data import jittered_crop
from lmkreg.training.stage_offsets import REPORT_FILE, SUMMARY_KEY, refine_crop_offsets

NAMES = list(DEFAULT_LANDMARK_NAMES)
TRAINER = "LandmarkTrainer"


# ---- hand-made files: an oblique, anisotropic stored refine box -------------------------------

SPACING_XYZ = np.array([1.5, 0.8, 2.5])
DIRECTION = rotation_direction([20.0, -15.0, 30.0])
SHAPE_ZYX = np.array([14, 40, 26])
FOV_OFFSET = np.array([1.0, -2.0, 0.5])
JITTER = 6.0
MARGIN_ZYX = [int(np.ceil(JITTER / s)) for s in SPACING_XYZ[::-1]]  # [3, 8, 4]


def _hand_voxels(delta_lps: np.ndarray) -> np.ndarray:
    """World step (LPS mm) -> array steps (z, y, x) of the box: array axis z runs along the
    direction's third column with spacing s_z, and so on (no matrix inverse)."""
    return np.array([DIRECTION[:, a] @ delta_lps / SPACING_XYZ[a] for a in (2, 1, 0)])


def _fake_files(root: Path, errors: dict[str, np.ndarray], localizer_folds=("0", "1")):
    """Six cases: refine boxes (meta JSON only), a localizer whose folds predicted the cases
    they held out with the given centroid errors, and two-fold splits."""
    rng = np.random.default_rng(5)
    cases = [f"c{i}" for i in range(6)]
    splits = [{"train": cases[3:], "val": cases[:3]}, {"train": cases[:3], "val": cases[3:]}]
    data = root / "pre" / "MR_refine"
    data.mkdir(parents=True)
    truths, centres = {}, {}
    for case in cases:
        truth = rng.uniform(-50, 50, 3) + rng.uniform(-20, 20, (3, 3))
        anchor = truth.mean(0)
        centre = anchor + FOV_OFFSET + rng.uniform(-0.4, 0.4, 3)  # the stored centre: snapped, not exact
        origin = centre - DIRECTION @ (SPACING_XYZ * (SHAPE_ZYX[::-1] - 1) / 2)
        geom = ImageGeometry.create(SHAPE_ZYX, SPACING_XYZ, origin, DIRECTION)
        meta = {"case": case, "index_to_world": geom.index_to_world_affine().tolist(), "geometry": geom.to_json(),
                "anchor_lps": anchor.tolist(), "landmarks_world_lps": truth.tolist(), "crop_margin_zyx": MARGIN_ZYX}
        (data / f"{case}.json").write_text(json.dumps(meta))
        truths[case], centres[case] = truth, centre
    loc = root / "res" / f"{TRAINER}__MR_localizer"
    for k in localizer_folds:
        vdir = loc / f"fold_{k}" / "validation"
        held_out = cases if k == "all" else splits[int(k)]["val"]
        for case in held_out:
            pred = truths[case] + rng.normal(0, 0.5, (3, 3))  # each landmark off, the centroid by errors[case]
            pred -= pred.mean(0) - (truths[case].mean(0) + errors.get(case, np.zeros(3)))
            write_lmkreg_json(LandmarkSet.from_array(NAMES, pred), vdir / f"{case}.json")
        (vdir / "summary.json").write_text("{}")
    conf = SimpleNamespace(stage="refine", previous_stage="MR_localizer", crop_jitter_mm=JITTER,
                           crop_margin_zyx=MARGIN_ZYX, spacing_zyx=list(SPACING_XYZ[::-1]),
                           fov_offset_lps=FOV_OFFSET.tolist())
    return conf, splits, data, root / "res" / f"{TRAINER}__MR_refine", cases, truths, centres


def test_offsets_are_the_localizer_out_of_fold_errors_and_clamped_to_the_margin(tmp_path):
    errors = {"c0": np.array([2.0, -3.0, 1.0]), "c1": np.array([-1.5, 0.5, 4.0]), "c2": np.array([0.3, 0.2, -0.4]),
              "c3": np.array([15.0, -2.0, 9.0]),  # beyond the 6 mm jitter: clamped, and a warning
              "c4": np.array([-2.5, 2.5, 0.0]), "c5": np.array([1.0, 1.0, 1.0])}
    conf, splits, data, refine, cases, truths, centres = _fake_files(tmp_path, errors)
    off = refine_crop_offsets(conf, "MR_refine", NAMES, splits, refine, data, cases)
    assert off.source == "measured" and off.localizer == f"{TRAINER}__MR_localizer"
    doc = off.to_json(per_case=True)
    margin = np.asarray(MARGIN_ZYX, float)
    expect_clamped = {}
    for case in cases:
        fold = "0" if case in splits[0]["val"] else "1"
        pred = read_lmkreg_json(tmp_path / "res" / f"{TRAINER}__MR_localizer" / f"fold_{fold}" / "validation"
                                / f"{case}.json").to_array(NAMES)
        got = doc["cases"][case]
        assert got["localizer_fold"] == fold
        np.testing.assert_allclose(got["error_lps_mm"], pred.mean(0) - truths[case].mean(0), atol=1e-9)
        want = _hand_voxels(pred.mean(0) + FOV_OFFSET - centres[case])
        np.testing.assert_allclose(got["offset_voxels_zyx"], want, atol=1e-9)
        beyond = np.maximum(np.abs(want) - margin, 0) * SPACING_XYZ[::-1]
        if beyond.max() > 0:
            expect_clamped[case] = beyond
    assert set(expect_clamped) == {"c3"}  # the others fit in the margin
    assert [c["case"] for c in doc["clamped"]] == ["c3"]
    np.testing.assert_allclose(doc["clamped"][0]["beyond_margin_mm_zyx"], expect_clamped["c3"], atol=1e-3)
    stats = doc["localizer_error"]
    e = np.array([errors[c] for c in cases])
    for i, ax in enumerate("LPS"):
        assert stats["per_axis_lps"][ax]["median_abs_mm"] == pytest.approx(np.median(np.abs(e[:, i])), abs=1e-9)
        assert stats["per_axis_lps"][ax]["max_abs_mm"] == pytest.approx(np.abs(e[:, i]).max(), abs=1e-9)
    warning = off.warning()
    assert "15.0 mm along L" in warning and "c3" in warning and "crop may then not hold the landmarks" in warning
    assert "Re-plan" in warning and "1 training crop(s) were clamped" in warning
    assert any("clamped" in line for line in off.describe())

    # the crops: centred where the localizer put them, on average (unbiased rounding), within the margin
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *(SHAPE_ZYX))).astype(np.float32)
    for case in ("c0", "c3"):
        affine = np.asarray(json.loads((data / f"{case}.json").read_text())["index_to_world"])
        sample = {"case": case, "image": image, "landmarks": np.full((3, 3), np.nan), "index_to_world": affine,
                  "crop_margin": np.asarray(MARGIN_ZYX)}
        want = np.clip(doc["cases"][case]["offset_voxels_zyx"], -margin, margin)
        starts = []
        for _ in range(600):
            s = off.crop(sample, rng)
            start = np.round(np.linalg.solve(affine[:3, :3], s["index_to_world"][:3, 3] - affine[:3, 3])).astype(int)
            np.testing.assert_array_equal(s["image"], image[(slice(None),) + tuple(
                slice(a, a + n) for a, n in zip(start, SHAPE_ZYX - 2 * margin.astype(int)))])
            starts.append(start - margin)
        starts = np.array(starts)
        assert np.all(np.abs(starts) <= margin) and np.all(np.abs(starts - want) <= 2)
        free = np.abs(want) <= margin - 2  # axes where the +-1 voxel jitter is never clipped: unbiased
        assert free.any() or case == "c3"  # c3 lies at the margin on every axis
        np.testing.assert_allclose(starts.mean(0)[free], want[free], atol=0.12)


def test_planned_jitter_when_the_localizer_has_no_cross_validation(tmp_path):
    conf, splits, data, refine, cases, _, _ = _fake_files(tmp_path, {}, localizer_folds=("all",))
    off = refine_crop_offsets(conf, "MR_refine", NAMES, splits, refine, data, cases)
    assert off.source == "planned" and "fold 'all'" in off.reason and off.warning() is None
    assert off.to_json()["localizer_error"] is None
    assert "planned" in off.describe()[0]
    sample = {"case": "c0", "image": np.zeros((1, *SHAPE_ZYX), np.float32), "landmarks": np.full((3, 3), np.nan),
              "index_to_world": np.eye(4), "crop_margin": np.asarray(MARGIN_ZYX)}
    a, b = off.crop(sample, np.random.default_rng(4)), jittered_crop(sample, np.random.default_rng(4))
    np.testing.assert_array_equal(a["index_to_world"], b["index_to_world"])  # today's uniform jitter
    # no localizer at all, or too few out-of-fold cases
    missing = refine_crop_offsets(conf, "MR_refine", NAMES, splits, refine.parent / f"Other__MR_refine", data, cases)
    assert missing.source == "planned" and "not trained yet" in missing.reason
    conf, splits, data, refine, cases, _, _ = _fake_files(tmp_path / "one_fold", {}, localizer_folds=("0",))
    few = refine_crop_offsets(conf, "MR_refine", NAMES, splits, refine, data, cases[3:])  # fold 1's cases
    assert few.source == "planned" and "only 0 of the 3" in few.reason
    # half measured: the others draw one of the measured errors
    half = refine_crop_offsets(conf, "MR_refine", NAMES, splits, refine, data, cases)
    assert half.source == "measured" and len(half.measured()) == 3
    pool = {tuple(np.round(half.cases["c3"].offset_voxels(c.error_world), 9)) for c in half.measured()}
    margin = np.asarray(MARGIN_ZYX)
    for seed in range(20):
        s = half.crop({**sample, "case": "c3"}, np.random.default_rng(seed))  # c3: not measured
        start = s["index_to_world"][:3, 3] - margin
        assert min(np.abs(start - np.clip(p, -margin, margin)).max() for p in pool) <= 2
    not_refine = SimpleNamespace(stage="localizer")
    assert refine_crop_offsets(not_refine, "MR_localizer", NAMES, splits, refine, data, cases) is None


# ---- a tiny trained cascade ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """Six MR pelvic_tiny cases, two folds, a planned cascade.  Refine fold 1 is trained before
    any localizer (planned jitter), then localizer folds 0 and 1, then refine fold 0 (measured)."""
    from toydata import folders_under, pelvic_mr_dataset

    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget
    from lmkreg.run.train import train

    root = tmp_path_factory.mktemp("cascade_training")
    with folders_under(root):
        ds = pelvic_mr_dataset(43, "CascadeTrain", 6, first_seed=200)
        pre = plan_and_preprocess("43", Budget("cpu", None, 0.06), workers=1, num_folds=2, cascade=True)
        kw = dict(trainer=TRAINER, device="cpu", num_epochs=1, iterations_per_epoch=2, num_workers=0,
                  progress_bar=False)
        summaries = {"refine_1": train("43", "MR", 1, configuration="refine", **kw)}
        for fold in (0, 1):
            train("43", "MR", fold, configuration="localizer", **kw)
        summaries["refine_0"] = train("43", "MR", 0, configuration="refine", **kw)
    return ds, pre, root / "res" / ds.name, summaries


def test_refine_trains_on_the_localizer_out_of_fold_error(cascade):
    ds, pre, results, summaries = cascade
    plans = json.loads((pre / "plans.json").read_text())
    conf = plans["configurations"]["MR_refine"]
    splits = json.loads((pre / "splits_final.json").read_text())
    refine, loc = results / f"{TRAINER}__MR_refine", results / f"{TRAINER}__MR_localizer"
    # fold 1 was trained before the localizer existed: the planned jitter, and it says so
    first = json.loads((refine / "fold_1" / "validation" / "summary.json").read_text())[SUMMARY_KEY]
    assert first["source"] == "planned" and "not trained yet" in first["reason"]
    assert summaries["refine_1"][SUMMARY_KEY]["source"] == "planned"
    # fold 0: each training case offset by the error of the localizer fold that held it out
    report = json.loads((refine / "fold_0" / REPORT_FILE).read_text())
    assert report["source"] == "measured"
    assert set(report["cases"]) == set(splits[0]["train"])
    for case in splits[0]["train"]:
        pred = read_lmkreg_json(loc / "fold_1" / "validation" / f"{case}.json").to_array(NAMES)
        truth = read_lmkreg_json(ds.landmarks_path(case, "MR")).to_array(NAMES)
        got = report["cases"][case]
        assert got["localizer_fold"] == "1"
        np.testing.assert_allclose(got["error_lps_mm"], pred.mean(0) - truth.mean(0), atol=1e-6)
        meta = json.loads((pre / conf["data_identifier"] / f"{case}.json").read_text())
        geom = ImageGeometry.from_json(meta["geometry"])
        centre = (np.asarray(geom.shape_zyx) - 1) / 2
        want = geom.world_to_index(pred.mean(0) + np.asarray(conf["fov_offset_lps"])) - centre
        np.testing.assert_allclose(got["offset_voxels_zyx"], want, atol=1e-6)
    summary = json.loads((refine / "fold_0" / "validation" / "summary.json").read_text())[SUMMARY_KEY]
    errors = np.array([report["cases"][c]["error_lps_mm"] for c in splits[0]["train"]])
    assert summary["localizer_error"]["distance_mm"]["max"] == pytest.approx(np.linalg.norm(errors, axis=1).max())
    if np.abs(errors).max() > conf["crop_jitter_mm"]:
        assert "the crop may then not hold the landmarks" in summary["warning"]
    else:
        assert summary["warning"] is None
    log = (refine / "fold_0" / "training_log.txt").read_text()
    assert "refine crop offsets: measured" in log and "localizer crop-centre error" in log


def test_every_stage_folder_gets_its_own_calibration_and_statistics(cascade):
    ds, _, results, _ = cascade
    for stage in ("MR_localizer", "MR_refine"):
        folder = results / f"{TRAINER}__{stage}"
        cal = json.loads((folder / "calibration.json").read_text())
        assert sorted(cal["folds"]) == ["0", "1"]
        assert all(v["num_cases"] == 6 for v in cal["landmarks"].values())  # both folds' held-out cases
        stats = json.loads((folder / "training_statistics.json").read_text())
        assert stats["modality"] == "MR" and stats["num_cases"] == 6
    cal = json.loads((results / f"{TRAINER}__MR_refine" / "calibration.json").read_text())
    assert cal["crop_placement"]["0"].startswith("localizer:") and "fold 0" in cal["crop_placement"]["0"]
    assert cal["crop_placement"]["1"].startswith("planned jitter:")
    assert "crop_placement" not in json.loads((results / f"{TRAINER}__MR_localizer" / "calibration.json").read_text())
    # the refine fold 0 calibration errors are those of the whole cascade on its held-out cases
    from lmkreg.inference.cascade import CascadePredictor
    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image

    cases = json.loads((results / f"{TRAINER}__MR_refine" / "fold_0" / "calibration_cases.json").read_text())["cases"]
    row = cases[0]
    predictor = CascadePredictor(
        LandmarkPredictor(results / f"{TRAINER}__MR_localizer", ["0"], mirror_tta=True, optimize=False),
        LandmarkPredictor(results / f"{TRAINER}__MR_refine", ["0"], mirror_tta=True, optimize=False))
    pred = predictor.predict(read_image(ds.image_path(row["case"], "MR")))
    truth = read_lmkreg_json(ds.landmarks_path(row["case"], "MR"))
    for n in NAMES:
        assert row["landmarks"][n]["error_mm"] == pytest.approx(
            float(np.linalg.norm(pred.landmarks.points[n] - truth.points[n])), abs=1e-4)
