"""Predicted prostate masks in lmkreg_register and lmkreg_evaluate (issue 17).

The masks are written in lmkreg_predict's form for a segmentation model (``STEM_prostate.nii.gz``
beside ``STEM.json``, whose ``"prostate": {"mask_file": ...}`` names it) from known masks: the
phantom gland of tests/test_surface_registration.py (oblique, anisotropic grids related by a
known rigid map) and the true masks of a tiny phantom dataset, one of them eroded to imitate an
imperfect prediction.  Segmentation metrics are checked against hand-computed values and scipy
distance transforms; registrations against the known map and the evaluation's ICP reference.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lmkreg.evaluation.metrics import surface_registration_error
from lmkreg.geometry.mesh import surface_points
from lmkreg.evaluation.segmentation import segmentation_metrics, surface_distances
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.landmark_files import write_landmarks
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.run.register import main as register_main
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.registration.predicted_masks import attach_mask, find_predicted_mask
from lmkreg.registration.icp import gland_surface
from lmkreg.registration.transform_files import read_transform_record

from test_surface_registration import TRUTH, _write_case, phantom  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]


# -- lmkreg_register --refine surface with predicted masks --------------------------------------

def _predicted_case(folder: Path, phantom, name: str, with_masks: bool = True):
    """Landmark JSONs (US landmarks ~2 mm off) and, with `with_masks`, the phantom's masks
    attached as predicted ones; the user's mask files are removed."""
    files, lm_mr, lm_us = _write_case(folder, phantom, name)
    files["mr_mask"].unlink()
    files["us_mask"].unlink()
    if with_masks:
        attach_mask(files["mr"], phantom["mr_mask"])
        attach_mask(files["us"], phantom["us_mask"])
    return files, lm_mr, lm_us


def test_register_refines_on_the_masks_named_in_the_landmark_jsons(tmp_path, phantom, capsys):
    files, lm_mr, lm_us = _predicted_case(tmp_path / "pred", phantom, "case1")
    mask, why = find_predicted_mask(files["us"])
    assert mask == tmp_path / "pred" / "case1_US_prostate.nii.gz" and why is None
    doc_us = json.loads(files["us"].read_text())
    expected_ml = np.count_nonzero(phantom["us_arr"]) * np.prod(phantom["us_mask"].GetSpacing()) / 1000
    assert doc_us["prostate"]["volume_ml"] == pytest.approx(expected_ml, abs=1e-3)

    out = tmp_path / "out"
    assert register_main(["--mr", str(files["mr"]), "--us", str(files["us"]), "-o", str(out),
                          "--refine", "surface", "--landmark-weight", "0"]) == 0  # exact masks: surfaces alone
    assert "surface refinement accepted" in capsys.readouterr().out
    doc = json.loads((out / "case1_MR_to_US.json").read_text())
    record = read_transform_record(out / "case1_MR_to_US.json")
    assert doc["transform_source"] == "surface"
    assert doc["surface_refinement"]["us_mask"].endswith("case1_US_prostate.nii.gz")
    d = doc["surface_refinement"]["surface_distance_mm"]
    assert d["surface"] < d["landmarks"]
    np.testing.assert_allclose(record["landmarks"].matrix(), fit_rigid(lm_mr, lm_us).matrix(), atol=1e-9)
    pts = surface_points(gland_surface(phantom["mr_mask"]).mesh, 3000, seed=3)
    assert surface_registration_error(pts, TRUTH, record["used"]) < 0.5 < \
        surface_registration_error(pts, TRUTH, record["landmarks"])


def test_a_case_without_a_predicted_mask_keeps_its_landmark_transform_and_says_why(tmp_path, phantom, capsys):
    _predicted_case(tmp_path / "pred", phantom, "case1")
    _predicted_case(tmp_path / "pred", phantom, "case2", with_masks=False)
    dirs = {m: tmp_path / m for m in ("MR", "US")}
    for m, d in dirs.items():
        d.mkdir()
        for f in (tmp_path / "pred").glob(f"*_{m}*"):
            f.rename(d / f.name)
    out = tmp_path / "out"
    assert register_main(["--mr-dir", str(dirs["MR"]), "--us-dir", str(dirs["US"]), "-o", str(out),
                          "--refine", "surface", "--landmark-weight", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "case1: surface refinement accepted" in printed
    assert "case2: surface refinement not done, landmark transform kept: no predicted prostate mask" in printed
    assert "surface refinement: 1 of 2 pair(s) refined, 0 refused (landmark transform kept), 1 not done" in printed
    doc = json.loads((out / "case2_MR_to_US.json").read_text())
    assert doc["transform_source"] == "landmarks" and doc["surface_transform"] is None
    assert "no 'prostate' entry" in doc["surface_refinement"]["reason"]
    np.testing.assert_allclose(doc["matrix"], doc["landmark_transform"]["matrix"])
    lm = [read_lmkreg_json(dirs[m] / f"case2_{m}.json").to_array(["apex", "bladder_neck", "posterior_median"])
          for m in ("MR", "US")]
    np.testing.assert_allclose(np.asarray(doc["matrix"]), fit_rigid(*lm).matrix(), atol=1e-9)
    assert read_transform_record(out / "case2_MR_to_US.json")["used"] is not None
    done = json.loads((out / "case1_MR_to_US.json").read_text())["surface_refinement"]
    assert done["settings"]["landmark_weight"] == 0.1

    # a mask file named in the JSON but gone: the same, with that reason
    (dirs["US"] / "case1_US_prostate.nii.gz").unlink()
    assert register_main(["--mr-dir", str(dirs["MR"]), "--us-dir", str(dirs["US"]), "-o", str(out),
                          "--refine", "surface"]) == 0
    doc = json.loads((out / "case1_MR_to_US.json").read_text())
    assert doc["transform_source"] == "landmarks" and "case1_US_prostate.nii.gz" in doc["surface_refinement"]["reason"]


# -- segmentation metrics against independent references -------------------------------------------

OBLIQUE = ImageGeometry.create(shape_zyx=(30, 34, 38), spacing_xyz=(0.8, 1.1, 1.7), origin_xyz=(-20.0, 12.5, 40.0),
                               direction=rotation_direction((23.0, -14.0, 37.0)))


def test_dice_of_two_boxes_with_known_overlap_also_across_grids():
    truth = np.zeros(OBLIQUE.shape_zyx, np.uint8)
    truth[5:15, 8:18, 6:16] = 1  # 10 x 10 x 10 voxels
    pred = np.zeros_like(truth)
    pred[5:15, 8:18, 10:20] = 1  # shifted 4 voxels along x: overlap 10 x 10 x 6
    m = segmentation_metrics(OBLIQUE.make_image(pred), OBLIQUE.make_image(truth))
    assert m["dice"] == pytest.approx(2 * 600 / 2000)
    # the same prediction on another grid (origin 3 voxels further along x, 2 along y): resampled onto the truth's
    d, sp = OBLIQUE.direction_matrix, np.array([0.8, 1.1, 1.7])
    other = ImageGeometry.create(OBLIQUE.shape_zyx, tuple(sp),
                                 tuple(np.asarray(OBLIQUE.origin_xyz) + d @ (sp * [3, 2, 0])), d)
    moved = np.zeros_like(truth)
    moved[5:15, 6:16, 7:17] = 1
    m2 = segmentation_metrics(other.make_image(moved), OBLIQUE.make_image(truth))
    assert m2["dice"] == pytest.approx(0.6)
    assert m["volume_ml_predicted"] == pytest.approx(1000 * 0.8 * 1.1 * 1.7 / 1000)


def _ball(geom: ImageGeometry, centre_world, radius_mm) -> np.ndarray:
    w = geom.voxel_centres_world().reshape(-1, 3)
    return (np.linalg.norm(w - np.asarray(centre_world), axis=1) <= radius_mm).reshape(geom.shape_zyx)


def _boundary_by_neighbours(a: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background (or outside) face neighbour, by shifted comparisons."""
    p = np.pad(a, 1)
    inner = np.ones_like(a, bool)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(p, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return a & ~inner


def test_surface_distance_matches_scipy_distance_transforms_on_an_oblique_anisotropic_grid():
    centre = OBLIQUE.voxel_centres_world()[15, 17, 19]
    shift = OBLIQUE.direction_matrix @ np.array([3 * 0.8, 0.0, 1 * 1.7])  # 3 voxels in x, 1 in z
    a, b = _ball(OBLIQUE, centre, 9.0), _ball(OBLIQUE, centre + shift, 9.0)
    d_ab, d_ba = surface_distances(OBLIQUE.make_image(a.astype(np.uint8)), OBLIQUE.make_image(b.astype(np.uint8)))
    ba_, bb_ = _boundary_by_neighbours(a), _boundary_by_neighbours(b)
    spacing_zyx = (1.7, 1.1, 0.8)
    ref_ab = ndimage.distance_transform_edt(~bb_, sampling=spacing_zyx)[ba_]
    ref_ba = ndimage.distance_transform_edt(~ba_, sampling=spacing_zyx)[bb_]
    np.testing.assert_allclose(np.sort(d_ab), np.sort(ref_ab), atol=1e-6)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(ref_ba), atol=1e-6)
    m = segmentation_metrics(OBLIQUE.make_image(a.astype(np.uint8)), OBLIQUE.make_image(b.astype(np.uint8)))
    pooled = np.concatenate([ref_ab, ref_ba])
    assert m["mean_surface_distance_mm"] == pytest.approx(pooled.mean())
    assert m["surface_distance_95_mm"] == pytest.approx(np.percentile(pooled, 95))
    # the shift bounds every distance; the largest ones (along the shift) are close to its length
    assert m["surface_distance_95_mm"] <= np.linalg.norm(shift) + 1.7


def test_concentric_spheres_are_their_radius_difference_apart():
    g = ImageGeometry.create((60, 60, 60), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), rotation_direction((30.0, 10.0, -20.0)))
    centre = g.voxel_centres_world()[30, 30, 30]
    m = segmentation_metrics(g.make_image(_ball(g, centre, 9.0).astype(np.uint8)),
                             g.make_image(_ball(g, centre, 12.0).astype(np.uint8)))
    assert m["mean_surface_distance_mm"] == pytest.approx(3.0, abs=0.25)  # voxel centres: within half a voxel
    assert m["dice"] == pytest.approx(2 * 9 ** 3 / (9 ** 3 + 12 ** 3), abs=0.02)


# -- lmkreg_evaluate and the benchmark rows with predicted masks --------------------------------------

NAMES = ("apex", "bladder_neck", "posterior_median")
# landmark errors of the "predictions" (mm): enough to tilt the three-landmark fit by degrees
OFFSETS = {"MR": [(1.2, -0.8, 0.5), (-1.0, 1.0, -0.8), (0.8, 1.0, 1.2)],
           "US": [(-1.0, 0.5, -1.2), (1.0, -1.2, 0.5), (-0.8, -0.5, -1.0)]}


@pytest.fixture(scope="module")
def mask_predictions(tmp_path_factory):
    """A tiny phantom dataset (2 test pairs) and prediction folders: true landmarks + OFFSETS, the
    true masks attached as predicted ones; the second case's MR mask eroded by one voxel (an
    imperfect prediction) and its US prediction without a mask."""
    from lmkreg.dataset.layout import Dataset
    from lmkreg.phantoms.generator import generate_dataset

    root = tmp_path_factory.mktemp("pm_raw")
    folder = generate_dataset(34, 1, 2, name="MaskPhantom", preset="tiny", seed=3, workers=1, root=root,
                              progress=False)
    ds = Dataset(folder)
    out = tmp_path_factory.mktemp("pm_pred")
    cases = ds.cases("Ts")
    for i, case in enumerate(cases):
        for m in ("MR", "US"):
            truth = read_lmkreg_json(ds.landmarks_path(case, m, "Ts"))
            pts = {n: truth[n] + np.asarray(o) for n, o in zip(NAMES, OFFSETS[m])}
            f = out / m / f"{case}_{m}.json"
            write_lmkreg_json(LandmarkSet(pts), f)
            write_landmarks(LandmarkSet(pts), out / m / f"{case}_{m}.mrk.json")
            if i == 1 and m == "US":
                continue
            mask = sitk.ReadImage(str(ds.mask_path(case, m, "Ts")))
            if i == 1 and m == "MR":  # one voxel less all round (6-neighbourhood)
                arr = ndimage.binary_erosion(sitk.GetArrayFromImage(mask) > 0)
                eroded = sitk.GetImageFromArray(arr.astype(np.uint8))
                eroded.CopyInformation(mask)
                mask = eroded
            attach_mask(f, mask)
    return folder, out, cases


def test_evaluate_scores_predicted_masks_and_the_three_registrations(mask_predictions, tmp_path, monkeypatch,
                                                                      capsys):
    from lmkreg.run.evaluate import main as evaluate_main

    folder, pred, cases = mask_predictions
    monkeypatch.setenv("LMKREG_raw", str(folder.parent))
    report = tmp_path / "report"
    assert evaluate_main(["-d", "34", "--mr-pred", str(pred / "MR"), "--us-pred", str(pred / "US"), "-o", str(report),
                          "--qc", "2", "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "segmentation MR" in printed and "surface-refined" in printed and "landmarks+surface" in printed
    doc = json.loads((report / "evaluation.json").read_text())
    by_case = {c["case"]: c for c in doc["cases"]}
    first, second = by_case[cases[0]], by_case[cases[1]]

    # segmentation: the eroded MR mask against the truth, Dice by hand; the true masks are exact
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "masksTs" / f"{cases[1]}_MR.nii.gz"))) > 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "MR" / f"{cases[1]}_MR_prostate.nii.gz"))) > 0
    assert predicted.sum() < truth.sum() and not (predicted & ~truth).any()  # the eroded mask, inside the truth
    assert second["segmentation"]["MR"]["dice"] == pytest.approx(2 * predicted.sum() / (predicted.sum() + truth.sum()))
    spacing = sitk.ReadImage(str(folder / "masksTs" / f"{cases[1]}_MR.nii.gz")).GetSpacing()
    assert min(spacing) - 1e-6 <= second["segmentation"]["MR"]["mean_surface_distance_mm"] < 1.5 * max(spacing)
    for m in ("MR", "US"):
        assert first["segmentation"][m]["dice"] == 1.0 and first["segmentation"][m]["surface_distance_95_mm"] == 0
    assert "US" not in second["segmentation"]
    assert any("no 'prostate' entry" in n for n in second["notes"])

    # registration rows: the case with both masks has all three; refined beats landmark-only
    assert first["sre_surface_mm"] < first["sre_predicted_mm"]
    assert first["sre_predicted_mm"] > 1.0 and first["sre_surface_mm"] < 1.0
    assert first["sre_landmarks_surface_mm"] < first["sre_predicted_mm"]
    assert first["refinement"]["surface"]["accepted"] and first["refinement"]["landmarks_surface"]["landmark_weight"] == 0.2
    assert second["sre_surface_mm"] is None  # no US mask: no refined rows (NaN -> null)
    var = doc["summary"]["registration_variants"]
    assert doc["summary"]["registration_variants_cases"] == 1
    assert var["landmarks"]["sre_mm"]["mean"] == pytest.approx(first["sre_predicted_mm"])
    assert var["surface"]["sre_mm"]["mean"] == pytest.approx(first["sre_surface_mm"])
    assert var["surface"]["refused"] == 0
    seg = doc["summary"]["segmentation"]
    assert seg["MR"]["dice"]["n"] == 2 and seg["US"]["dice"]["n"] == 1
    assert seg["MR"]["dice"]["worst"] == pytest.approx(min(by_case[c]["segmentation"]["MR"]["dice"] for c in cases))
    md = (report / "evaluation.md").read_text()
    assert "## Segmentation (predicted prostate masks)" in md and "| surface-refined |" in md
    assert "| landmarks+surface |" in md and "| landmark-only |" in md
    assert (report / "qc" / f"{cases[0]}_fusion_surface.png").is_file()  # the refined view of the refined case
    assert not (report / "qc" / f"{cases[1]}_fusion_surface.png").exists()
    with (report / "evaluation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["sre_surface_mm"]) == pytest.approx(first["sre_surface_mm"])
    assert "MR_seg_dice" in rows[0]


def test_a_refused_refinement_is_counted_and_keeps_the_landmark_row(mask_predictions, monkeypatch):
    from lmkreg.dataset.layout import Dataset
    from lmkreg.evaluation.evaluate import evaluate_case, summarize
    from lmkreg.evaluation import predicted_masks

    folder, pred, cases = mask_predictions
    orig = predicted_masks.SurfaceSettings

    def tight(**kw):  # a bound every refinement of this case exceeds
        return orig(max_rotation_deg=0.01, **kw)
    monkeypatch.setattr(predicted_masks, "SurfaceSettings", tight)
    r = evaluate_case(Dataset(folder), cases[0], "Ts", {"MR": pred / "MR", "US": pred / "US"}, NAMES)
    assert not r.refinement["surface"]["accepted"] and r.refinement["surface"]["beyond_bound"]
    assert r.sre_surface_mm == pytest.approx(r.sre_predicted_mm)
    assert any("surface-refined: refinement refused" in n for n in r.notes)
    s = summarize([r], NAMES)
    assert s["registration_variants"]["surface"]["refused"] == 1


def test_benchmark_rows_come_from_the_evaluation(mask_predictions, monkeypatch):
    from lmkreg.dataset.layout import Dataset
    from lmkreg.evaluation.evaluate import evaluate_cases, summarize

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import accuracy_benchmark as bench

    folder, pred, cases = mask_predictions
    results, failed = evaluate_cases(Dataset(folder), cases, "Ts", {"MR": pred / "MR", "US": pred / "US"}, NAMES,
                                     workers=1, progress=False)
    assert not failed
    block = bench.mask_block(results)
    assert block == json.loads(json.dumps(bench.mask_block(results)))  # JSON-ready
    assert block["summary"]["registration_variants"] == summarize(results, NAMES)["registration_variants"]
    lines = "\n".join(bench.mask_tables({"registration": {"HeatmapMatchingTrainer_Seg": {"masks": block}}}))
    assert "| HeatmapMatchingTrainer_Seg | surface-refined |" in lines
    assert "| HeatmapMatchingTrainer_Seg | MR |" in lines


class _FakePredictor:
    """Stands in for a trained model in one-shot register: answers the true landmarks + OFFSETS
    and, as a segmentation model would (``has_segmentation``, ``Prediction.mask``), the true mask."""

    def __init__(self, ds, case, modality, segments):
        self.ds, self.case, self.modality = ds, case, modality
        self.has_segmentation = segments

    def predict(self, image):
        from lmkreg.inference.prediction import Prediction

        truth = read_lmkreg_json(self.ds.landmarks_path(self.case, self.modality, "Ts"))
        pts = {n: truth[n] + np.asarray(o) for n, o in zip(NAMES, OFFSETS[self.modality])}
        pred = Prediction(LandmarkSet(pts), {}, {})
        pred.mask = sitk.ReadImage(str(self.ds.mask_path(self.case, self.modality, "Ts")))
        return pred


@pytest.mark.parametrize("segments", [True, False])
def test_one_shot_feeds_the_predictors_masks_to_the_refinement(mask_predictions, tmp_path, monkeypatch, capsys,
                                                               segments):
    import lmkreg.run.register as cascade  # the command's own name for build_predictor
    from lmkreg.dataset.layout import Dataset

    folder, _, cases = mask_predictions
    monkeypatch.setenv("LMKREG_raw", str(folder.parent))
    ds = Dataset(folder)
    monkeypatch.setattr(cascade, "build_predictor", lambda results, trainer, modality, *a, **k:
                        _FakePredictor(ds, cases[0], modality, segments))
    out = tmp_path / "out"
    assert register_main(["-d", "34", "--mr-image", str(ds.image_path(cases[0], "MR", "Ts")), "--us-image",
                          str(ds.image_path(cases[0], "US", "Ts")), "-tr", "Fake_Seg", "-o", str(out),
                          "--refine", "surface"]) == 0
    captured = capsys.readouterr()
    doc = json.loads((out / f"{cases[0]}_MR_to_US.json").read_text())
    if segments:
        assert doc["transform_source"] == "surface"
        assert doc["surface_refinement"]["mr_mask"] == "predicted MR mask (in memory)"
        assert find_predicted_mask(out / f"{cases[0]}_US.json")[0] == out / f"{cases[0]}_US_prostate.nii.gz"
    else:
        assert "has no segmentation head" in captured.err
        assert doc["transform_source"] == "landmarks" and "no predicted prostate mask" in \
            doc["surface_refinement"]["reason"]
        assert not (out / f"{cases[0]}_US_prostate.nii.gz").exists()
