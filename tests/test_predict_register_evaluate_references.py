"""Prediction, registration and evaluation requirements that the
other test files did not pin down, each against an independent reference (scipy, SimpleITK,
duplicated landmarks, hand-computed geometry) or a hand-built case."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.run.register import main as register_main

NAMES = ["apex", "bladder_neck", "posterior_median"]


# ---------------------------------------------------------------------------------------------
# registration: reflection fix, weights, residuals (issue 5, "register")
# ---------------------------------------------------------------------------------------------

def _scipy_fit(mr: np.ndarray, us: np.ndarray, weights=None) -> RigidTransform:
    """Independent reference: scipy's Wahba solver (always a proper rotation) on the points
    centred at their weighted centroids."""
    w = np.ones(len(mr)) if weights is None else np.asarray(weights, float)
    pc, qc = (w[:, None] * mr).sum(0) / w.sum(), (w[:, None] * us).sum(0) / w.sum()
    rot, _ = Rotation.align_vectors(us - qc, mr - pc, weights=w)
    r = rot.as_matrix()
    return RigidTransform(r, qc - r @ pc)


def test_mirrored_landmarks_give_the_best_proper_rotation_not_a_reflection():
    """Six non-coplanar points and their mirror image: plain Kabsch (no fix) returns a reflection
    that fits exactly; the fix must return the least-squares *proper* rotation, which scipy finds
    independently.  (test_registration's mirror case uses points on the mirror plane, x = 0,
    where the mirror image is the input itself.)"""
    rng = np.random.default_rng(11)
    mr = rng.uniform(-30, 30, (6, 3))
    us = mr * [-1.0, 1.0, 1.0] + [4.0, -2.0, 7.0]
    pc, qc = mr.mean(0), us.mean(0)
    u, _, vt = np.linalg.svd((mr - pc).T @ (us - qc))
    assert np.linalg.det(vt.T @ u.T) < 0  # without the fix the answer would be a reflection
    fit = fit_rigid(mr, us)
    ref = _scipy_fit(mr, us)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(fit.rotation, ref.rotation, atol=1e-9)
    np.testing.assert_allclose(fit.translation, ref.translation, atol=1e-8)


def test_integer_weights_equal_duplicated_landmarks_and_scipy_weighted_fit():
    """Weight k on a landmark is the same least-squares problem as that landmark listed k times."""
    rng = np.random.default_rng(5)
    mr = rng.uniform(-30, 30, (5, 3))
    truth = RigidTransform(Rotation.from_euler("xyz", [15, -20, 8], degrees=True).as_matrix(), np.array([3.0, 9.0, -4.0]))
    us = truth.apply(mr) + rng.normal(0, 2.0, mr.shape)
    weights = np.array([1, 4, 2, 1, 3])
    weighted = fit_rigid(mr, us, weights=weights)
    # repeated points coincide, which fit_rigid rightly refuses, so the repeated problem is solved by scipy
    ref = _scipy_fit(np.repeat(mr, weights, axis=0), np.repeat(us, weights, axis=0))
    np.testing.assert_allclose(weighted.rotation, ref.rotation, atol=1e-9)
    np.testing.assert_allclose(weighted.translation, ref.translation, atol=1e-8)
    np.testing.assert_allclose(weighted.matrix(), _scipy_fit(mr, us, weights).matrix(), atol=1e-8)
    # and the weights matter: the unweighted fit is a different transform
    assert np.abs(fit_rigid(mr, us).matrix() - weighted.matrix()).max() > 1e-3


def test_register_cli_writes_residuals_that_simpleitk_reproduces(tmp_path):
    """Noisy landmarks: the written matrix equals SimpleITK's landmark initializer, and each
    written residual equals the distance between the US landmark and the MR landmark moved by
    the inverse of the .tfm as SimpleITK reads it."""
    rng = np.random.default_rng(3)
    mr = rng.uniform(-30, 30, (4, 3))
    names = NAMES + ["extra"]
    truth = RigidTransform(Rotation.from_euler("xyz", [-12, 6, 25], degrees=True).as_matrix(), np.array([-5.0, 8.0, 2.0]))
    us = truth.apply(mr) + rng.normal(0, 1.5, mr.shape)
    write_lmkreg_json(LandmarkSet(dict(zip(names, mr))), tmp_path / "p_MR.json")
    write_lmkreg_json(LandmarkSet(dict(zip(names, us))), tmp_path / "p_US.json")
    out = tmp_path / "out"
    assert register_main(["--mr", str(tmp_path / "p_MR.json"), "--us", str(tmp_path / "p_US.json"), "-o", str(out),
                          "--landmark-names", *names]) == 0  # only named landmarks are fitted (issue 15)
    doc = json.loads((out / "p_MR_to_US.json").read_text())
    assert doc["source"] == "MR" and doc["target"] == "US" and doc["coordinate_system"] == "LPS"
    ref = sitk.LandmarkBasedTransformInitializer(sitk.VersorRigid3DTransform(), us.ravel().tolist(), mr.ravel().tolist())
    ref_mr_to_us = np.array([ref.GetInverse().TransformPoint(tuple(p)) for p in mr])
    matrix = np.asarray(doc["matrix"])
    np.testing.assert_allclose(mr @ matrix[:3, :3].T + matrix[:3, 3], ref_mr_to_us, atol=1e-6)
    tfm_inverse = sitk.ReadTransform(str(out / "p_MR_to_US.tfm")).GetInverse()
    expected = {n: float(np.linalg.norm(np.array(tfm_inverse.TransformPoint(tuple(p))) - q))
                for n, p, q in zip(names, mr, us)}
    assert doc["landmarks_used"] == names
    assert doc["residuals_mm"] == pytest.approx(expected, abs=1e-6)
    assert all(v > 0.1 for v in expected.values())  # noisy: the residuals are real numbers, not zeros
    assert doc["rms_residual_mm"] == pytest.approx(np.sqrt(np.mean(np.square(list(expected.values())))), abs=1e-6)



def _confident_pair(tmp_path, spreads_mr, spreads_us, rng_seed=9):
    rng = np.random.default_rng(rng_seed)
    mr = np.array([[1.0, 20.0, -30.0], [-2.0, -5.0, 18.0], [0.5, 22.0, 3.0], [-12.0, 3.0, 25.0]])
    names = NAMES + ["extra"]
    us = RigidTransform(Rotation.from_euler("xyz", [10, -4, 6], degrees=True).as_matrix(), np.array([2.0, 1.0, -3.0])
                        ).apply(mr) + rng.normal(0, 2.0, mr.shape)
    files = []
    for modality, pts, spreads in (("MR", mr, spreads_mr), ("US", us, spreads_us)):
        conf = {n: {"heatmap_spread_mm": s, "fold_disagreement_mm": None} for n, s in zip(names, spreads)}
        doc = {"coordinate_system": "LPS", "units": "mm", "landmarks": {n: list(p) for n, p in zip(names, pts)},
               "extras": {"confidence": conf}}
        files.append(tmp_path / f"w_{modality}.json")
        files[-1].write_text(json.dumps(doc))  # json.dumps writes NaN as the bare token NaN, as a careless tool would
    return mr, us, names, files


def test_weighted_register_uses_the_documented_weights(tmp_path):
    """weight = 1 / (s_MR^2 + s_US^2), s floored at 0.5 mm, a null spread counting as 1 mm."""
    mr, us, names, (mr_file, us_file) = _confident_pair(tmp_path, [2.0, 1.0, None, 1.0], [1.0, 0.2, 3.0, 0.0])
    out = tmp_path / "out"
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(out), "--weighted",
                          "--landmark-names", *names]) == 0  # only named landmarks are fitted (issue 15)
    doc = json.loads((out / "w_MR_to_US.json").read_text())
    expected = {"apex": 1 / (4 + 1), "bladder_neck": 1 / (1 + 0.25), "posterior_median": 1 / (1 + 9),
                "extra": 1 / (1 + 0.25)}
    assert doc["weights"] == pytest.approx(expected)
    ref = _scipy_fit(mr, us, [expected[n] for n in names])
    np.testing.assert_allclose(np.asarray(doc["matrix"]), ref.matrix(), atol=1e-8)


@pytest.mark.parametrize("spread", [float("nan"), float("inf"), "wide", -3.0, True], ids=["nan", "inf", "text",
                                                                                         "negative", "bool"])
def test_weighted_register_refuses_a_malformed_confidence_naming_the_file(tmp_path, capsys, spread):
    """Before: NaN crashed in the SVD, text in float() (tracebacks), a negative spread was used."""
    _, _, _, (mr_file, us_file) = _confident_pair(tmp_path, [1.0] * 4, [1.0, spread, 1.0, 1.0])
    out = tmp_path / "out"
    out.mkdir()
    earlier = '{"earlier": "result", "matrix": [], "itk_file_direction": "US -> MR"}\n'  # lmkreg's own (issue 25)
    (out / "w_MR_to_US.json").write_text(earlier)
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(out), "--weighted"]) == 2
    err = capsys.readouterr().err
    assert "w_US.json" in err and "bladder_neck" in err and "heatmap_spread_mm" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["w_MR_to_US.json"]
    assert (out / "w_MR_to_US.json").read_text() == earlier
    # without --weighted the confidence is not used, and the same files register
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(out)]) == 0

# ---------------------------------------------------------------------------------------------
# evaluation: SRE of a rotation, Dice through a transform, median (issue 5, "evaluate")
# ---------------------------------------------------------------------------------------------

def test_sre_of_a_rotation_is_the_chord_length():
    """Points on circles about the rotation axis move by the chord 2 r sin(theta / 2)."""
    from lmkreg.evaluation.metrics import residual_rotation_deg, surface_registration_error

    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    centre = np.array([10.0, -5.0, 3.0])
    e1 = np.cross(axis, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    radii = np.array([5.0, 10.0, 20.0])
    phi = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts = np.concatenate([centre + r * (np.outer(np.cos(phi), e1) + np.outer(np.sin(phi), e2)) + h * axis
                          for r, h in zip(radii, (-7.0, 0.0, 4.0))])
    theta = np.radians(9.0)
    ref = RigidTransform(rotation_direction((3, -8, 20)), np.array([1.0, 2.0, 3.0]))
    turn = Rotation.from_rotvec(theta * axis).as_matrix()
    local = RigidTransform(turn, centre - turn @ centre)  # rotation by theta about the line through centre
    predicted = ref.compose(local)
    expected = np.mean(np.repeat(2 * radii * np.sin(theta / 2), len(phi)))
    assert surface_registration_error(pts, ref, predicted) == pytest.approx(expected, rel=1e-12)
    assert residual_rotation_deg(ref, predicted) == pytest.approx(9.0, abs=1e-9)


def test_registration_dice_by_counting_voxels_of_a_shifted_box():
    """MR box of 10 voxels along x; the US box is the same box 3 mm further along +x (1 mm
    voxels).  The right map (+3 mm) gives Dice 1, no shift 0.7, the wrong direction 0.4."""
    from lmkreg.evaluation.metrics import registration_dice

    geom = ImageGeometry.create((12, 14, 30), (1.0, 1.0, 1.0), (-15.0, -7.0, -6.0))
    mr = np.zeros(geom.shape_zyx, np.uint8)
    mr[3:9, 4:10, 8:18] = 1
    us = np.roll(mr, 3, axis=2)
    mr_img, us_img = geom.make_image(mr), geom.make_image(us)
    for shift, expected in ((3.0, 1.0), (0.0, 0.7), (-3.0, 0.4)):
        t = RigidTransform(np.eye(3), np.array([shift, 0.0, 0.0]))
        assert registration_dice(mr_img, us_img, t) == pytest.approx(expected, abs=1e-12), shift


def test_summary_holds_the_median_and_the_report_shows_it():
    from lmkreg.evaluation.evaluate import CaseResult, summarize
    from lmkreg.evaluation.report import markdown

    errors = [{"apex": 1.0, "bladder_neck": 2.0, "posterior_median": 9.0},
              {"apex": 3.0, "bladder_neck": 4.0, "posterior_median": 5.0},
              {"apex": 10.0, "bladder_neck": 0.5, "posterior_median": 6.0}]
    results = [CaseResult(f"c{i}", {"MR": e, "US": {n: 2 * v for n, v in e.items()}}) for i, e in enumerate(errors)]
    s = summarize(results, NAMES)
    pooled = [v for e in errors for v in e.values()]
    assert s["mre"]["MR"]["all"]["median"] == pytest.approx(np.median(pooled))
    assert s["mre"]["MR"]["apex"]["median"] == pytest.approx(3.0)
    assert s["mre"]["US"]["per_case"]["median"] == pytest.approx(2 * 4.0)  # case MREs 4, 4, 5.5 (x2)
    md = markdown(s, results, NAMES, "t")
    row = next(line for line in md.splitlines() if line.startswith("| apex |"))
    # mean ± sd and median of the apex errors 1, 3, 10 (MR) and 2, 6, 20 (US)
    assert row == (f"| apex | {np.mean([1, 3, 10]):.2f} ± {np.std([1, 3, 10], ddof=1):.2f} | 3.00 | "
                   f"{np.mean([2, 6, 20]):.2f} ± {np.std([2, 6, 20], ddof=1):.2f} | 6.00 |"), md


# ---------------------------------------------------------------------------------------------
# prediction (issue 5, "predict"; issue 7, faults during writing)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    """Toy dataset 7 planned (no preprocessing) and an untrained LandmarkTrainer__MR with folds 0
    and 1 (different random weights)."""
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.training.checkpoint import save_checkpoint
    from lmkreg.training.trainers import LandmarkTrainer
    from toydata import planned_toy_mr_dataset

    env, ds, pre = planned_toy_mr_dataset(tmp_path_factory.mktemp("audit_inference"))
    folder = Path(env["LMKREG_results"]) / ds.name / "LandmarkTrainer__MR"
    folder.mkdir(parents=True)
    shutil.copy(pre / PLANS_FILE, folder / PLANS_FILE)
    conf = Plans.load(folder / PLANS_FILE).configuration("MR")
    for fold in (0, 1):
        torch.manual_seed(fold)
        net = LandmarkTrainer.build_network(conf, len(NAMES))
        (folder / f"fold_{fold}").mkdir()
        save_checkpoint({"trainer": "LandmarkTrainer", "network": net.state_dict(), "epoch": 0},
                        folder / f"fold_{fold}" / "checkpoint_final.pth")
    return env, ds, folder


@pytest.fixture
def toy(toy_models, monkeypatch):
    env, ds, folder = toy_models
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return ds, folder


def _images(ds, tmp_path, n=3) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for case in ds.cases("Tr")[:n]:
        shutil.copy(ds.image_path(case, "MR"), folder / ds.image_path(case, "MR").name)
    return folder


def _predict(inp, out, *extra):
    from lmkreg.run.predict import main as predict_main

    return predict_main(["-i", str(inp), "-o", str(out), "-d", "7", "-m", "MR", "--device", "cpu", "--no-optimize",
                         *extra])


class _Brightness(torch.nn.Module):
    """A stand-in network whose heatmap logits are the image scaled to a peak of 16, so DSNT
    finds the centre of a bright blob: near its peak the softmax is a Gaussian of sigma / 4, a
    few voxels wide, whose expectation on the grid is its centre."""

    def forward(self, x):
        return (16.0 * x / x.amax()).repeat(1, len(NAMES), 1, 1, 1)


def _blob_image(ds, centre_lps, sigma_mm=8.0) -> sitk.Image:
    """An image on the grid of a toy case holding one Gaussian blob at `centre_lps`."""
    geom = ImageGeometry.from_image(sitk.ReadImage(str(ds.image_path(ds.cases("Tr")[0], "MR"))))
    d = np.linalg.norm(geom.voxel_centres_world() - centre_lps, axis=-1)
    return geom.make_image((100.0 * np.exp(-0.5 * (d / sigma_mm) ** 2)).astype(np.float32))


def test_mirror_tta_maps_the_mirrored_answer_back_to_the_same_world_point(toy):
    """A network that finds the brightest blob answers the same point for the image and for its
    left-right mirror once the mirrored answer is mapped back: TTA must then change nothing, and
    both must sit on the blob (world position, so the grid-to-world mapping is checked too).
    An off-by-one in the mirror mapping would move the TTA answer by half a voxel."""
    from lmkreg.inference.predictor import LandmarkPredictor

    ds, folder = toy
    geom = ImageGeometry.from_image(sitk.ReadImage(str(ds.image_path(ds.cases("Tr")[0], "MR"))))
    centre_index = (np.array(geom.shape_zyx) - 1) / 2 + [1.3, -2.1, 3.7]  # off-centre in every axis
    blob_at = geom.index_to_world(centre_index)
    image = _blob_image(ds, blob_at)
    results = {}
    for tta in (False, True):
        predictor = LandmarkPredictor(folder, folds=["0"], device="cpu", mirror_tta=tta, optimize=False)
        predictor.networks = predictor.inference_modules = [_Brightness()]
        results[tta] = predictor.predict(image)
    plain, mirrored = results[False].landmarks.to_array(NAMES), results[True].landmarks.to_array(NAMES)
    spacing = min(predictor.conf.spacing_zyx)
    np.testing.assert_allclose(mirrored, plain, atol=1e-3)
    assert max(results[True].fold_disagreement_mm.values()) < 1e-3
    assert np.abs(mirrored[:, 0] - plain[:, 0]).max() < 0.05 * spacing
    np.testing.assert_allclose(plain, np.repeat(blob_at[None], len(NAMES), 0), atol=0.25 * spacing)


class _FixedDecode:
    """Stand-in trainer.decode: the grid-mm positions and spreads of each successive network call."""

    def __init__(self, answers):
        self.answers = list(answers)

    def decode(self, outputs, spacing_zyx):
        mm, spread = self.answers.pop(0)
        return torch.tensor(mm, dtype=torch.float64)[None], torch.tensor(spread, dtype=torch.float64)[None]


def test_ensemble_confidence_and_unreliable_flags_against_hand_values(toy):
    from lmkreg.inference.predictor import DISAGREEMENT_FLAG_MM, SPREAD_FLAG_MM, LandmarkPredictor

    ds, folder = toy
    predictor = LandmarkPredictor(folder, folds=["0", "1"], device="cpu", optimize=False)
    array, grid = predictor.preprocess(sitk.ReadImage(str(ds.image_path(ds.cases("Tr")[1], "MR"))))
    spacing = np.asarray(predictor.conf.spacing_zyx, float)
    middle = (np.array(array.shape[1:]) - 1) / 2 * spacing  # grid mm of the grid's centre
    fold0 = np.stack([middle, middle + [0, 2, 0], middle + [1, 0, 0]])
    fold1 = fold0.copy()
    fold1[1, 2] += 12.0  # bladder neck: the folds are 12 mm apart, so each is 6 mm from the mean
    spreads0, spreads1 = [2.0, 3.0, 14.0], [4.0, 1.0, 12.0]  # posterior median: mean spread 13 mm
    predictor.trainer = _FixedDecode([(fold0, spreads0), (fold1, spreads1)])
    pred = predictor.predict_array(array, grid)
    expected = grid.index_to_world((fold0 + fold1) / 2 / spacing)
    np.testing.assert_allclose(pred.landmarks.to_array(NAMES), expected, atol=1e-9)
    assert pred.fold_disagreement_mm == pytest.approx({"apex": 0.0, "bladder_neck": 6.0, "posterior_median": 0.0})
    assert pred.spread_mm == pytest.approx({"apex": 3.0, "bladder_neck": 2.0, "posterior_median": 13.0})
    assert 6.0 > DISAGREEMENT_FLAG_MM and 13.0 > SPREAD_FLAG_MM > 3.0
    assert [f.text for f in pred.flags] == [f"bladder_neck: folds disagree by 6.0 mm > {DISAGREEMENT_FLAG_MM} mm",
                          f"posterior_median: heatmap spread 13.0 mm > {SPREAD_FLAG_MM} mm"]
    doc = pred.with_extras().extras
    assert doc["reliable"] is False and doc["flags"] == [f.text for f in pred.flags]
    assert [(d["landmark"], d["signal"], d["value"], d["limit"]) for d in doc["flag_details"]] == [
        ("bladder_neck", "fold_disagreement_mm", pytest.approx(6.0), DISAGREEMENT_FLAG_MM),
        ("posterior_median", "heatmap_spread_mm", pytest.approx(13.0), SPREAD_FLAG_MM)]
    assert doc["confidence"]["bladder_neck"] == {"heatmap_spread_mm": 2.0, "fold_disagreement_mm": 6.0}
    # a landmark beyond the grid is flagged as outside the planned field of view
    far = fold0.copy()
    far[0] = -20.0 * spacing
    predictor.trainer = _FixedDecode([(far, spreads0), (far, spreads0)])
    pred = predictor.predict_array(array, grid)
    assert [f.text for f in pred.flags] == ["apex: outside the planned field of view", f"posterior_median: heatmap spread 14.0 mm > "
                                                                      f"{SPREAD_FLAG_MM} mm"]
    assert np.isnan(pred.landmarks.to_array(["apex"])).sum() == 0  # flagged, still reported


def test_unreliable_cases_are_flagged_in_the_json_and_on_the_console(toy, tmp_path, capsys, monkeypatch):
    import lmkreg.inference.predictor as predictor_module

    ds, _ = toy
    inp = _images(ds, tmp_path, 2)
    monkeypatch.setattr(predictor_module, "SPREAD_FLAG_MM", 0.0)  # every heatmap is wider than 0 mm
    assert _predict(inp, tmp_path / "flagged") == 0
    out = capsys.readouterr().out
    assert "2 flagged unreliable" in out and "unreliable: toy000_MR.nii.gz: apex: heatmap spread" in out, out
    doc = read_lmkreg_json(tmp_path / "flagged" / "toy000_MR.json").extras
    assert doc["reliable"] is False and len(doc["flags"]) >= len(NAMES)
    monkeypatch.setattr(predictor_module, "SPREAD_FLAG_MM", 1e9)
    monkeypatch.setattr(predictor_module, "DISAGREEMENT_FLAG_MM", 1e9)
    assert _predict(inp, tmp_path / "calm") == 0
    assert "0 flagged unreliable" in capsys.readouterr().out
    doc = read_lmkreg_json(tmp_path / "calm" / "toy000_MR.json").extras
    assert doc["reliable"] is True and doc["flags"] == []


def test_every_simpleitk_format_in_the_folder_is_predicted_alike(toy, tmp_path):
    """The same volume as NIfTI, NRRD and MetaImage gives the same world landmarks."""
    ds, _ = toy
    src = sitk.ReadImage(str(ds.image_path(ds.cases("Tr")[0], "MR")))
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a_MR.nii.gz", "b_MR.nrrd", "c_MR.mha", "d_MR.nii"):
        sitk.WriteImage(src, str(inp / name))
    assert _predict(inp, tmp_path / "out") == 0
    points = [read_lmkreg_json(tmp_path / "out" / f"{s}_MR.json").to_array(NAMES) for s in "abcd"]
    for p in points[1:]:
        np.testing.assert_allclose(p, points[0], atol=1e-4)


def test_models_are_loaded_once_for_the_whole_folder(toy, tmp_path, monkeypatch):
    import lmkreg.inference.predictor as predictor_module

    ds, _ = toy
    inp = _images(ds, tmp_path, 3)
    loads = []
    real = predictor_module.load_checkpoint
    monkeypatch.setattr(predictor_module, "load_checkpoint", lambda path, device: loads.append(path) or real(path, device))
    assert _predict(inp, tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("*_MR.json"))) == 3
    assert sorted(p.parent.name for p in loads) == ["fold_0", "fold_1"]  # one load per fold, not per image


def test_num_parts_and_part_id_from_the_command_line(toy, tmp_path, capsys):
    ds, _ = toy
    inp, out = _images(ds, tmp_path, 3), tmp_path / "out"
    assert _predict(inp, out, "--num-parts", "2", "--part-id", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["toy001_MR.json", "toy001_MR.mrk.json"]
    assert _predict(inp, out, "--num-parts", "2", "--part-id", "0") == 0
    assert "2 predicted, 0 skipped" in capsys.readouterr().out
    assert len(list(out.glob("*_MR.json"))) == 3
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _predict(inp, out, "--num-parts", "2", "--part-id", "2") == 2
    assert "--part-id must be in 0..1" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_disk_full_during_prediction_names_the_file_and_leaves_nothing_partial(toy, tmp_path, capsys, monkeypatch):
    ds, _ = toy
    inp, out = _images(ds, tmp_path, 2), tmp_path / "out"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert _predict(inp, out) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "toy000_MR.nii.gz" in err and "toy001_MR.nii.gz" in err and "No space left on device" in err, err
    assert list(out.iterdir()) == []  # no landmark file, no temporary


@pytest.mark.parametrize("failing", ["json", "mrk_json"])
def test_a_failed_overwrite_keeps_the_previous_pair_of_landmark_files(toy, tmp_path, capsys, monkeypatch, failing):
    """--overwrite (e.g. after retraining) with a write that fails: the previous NAME.json and
    NAME.mrk.json stay as they were, together.  A new .mrk.json next to the old .json would be
    skipped as 'done' by the next run although the two files disagree."""
    import lmkreg.run.predict as predict_folder_module
    from lmkreg.errors import OutputError
    from lmkreg.io.landmark_files import write_landmarks

    ds, _ = toy
    inp, out = _images(ds, tmp_path, 1), tmp_path / "out"
    old = LandmarkSet.from_array(NAMES, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]]))
    write_lmkreg_json(old, out / "toy000_MR.json")
    write_landmarks(old, out / "toy000_MR.mrk.json")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_json, real_mrk = predict_folder_module.write_lmkreg_json, write_landmarks

    def fail_json(landmarks, path):
        raise OutputError(path, "could not be written (No space left on device)")

    if failing == "json":
        monkeypatch.setattr(predict_folder_module, "write_lmkreg_json", fail_json)
    else:
        monkeypatch.setattr(predict_folder_module, "write_landmarks",
                            lambda lm, path: fail_json(lm, path) if str(path).endswith(".mrk.json") else real_mrk(lm, path))
    assert _predict(inp, out, "--overwrite") == 1
    monkeypatch.undo()
    assert "toy000_MR.nii.gz" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert real_json is predict_folder_module.write_lmkreg_json


def test_a_run_stopped_between_the_two_renames_leaves_the_case_to_be_predicted_again(toy, tmp_path, capsys,
                                                                                     monkeypatch):
    """The new .mrk.json is in place but the new NAME.json is not (killed, or the rename failed):
    the old NAME.json must not remain, or the next run would skip a case whose two files disagree."""
    from lmkreg.io.landmark_files import read_landmarks, write_landmarks

    ds, _ = toy
    inp, out = _images(ds, tmp_path, 1), tmp_path / "out"
    old = LandmarkSet.from_array(NAMES, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]]))
    write_lmkreg_json(old, out / "toy000_MR.json")
    write_landmarks(old, out / "toy000_MR.mrk.json")
    replace = os.replace

    def stop_before_the_json(src, dst):
        if Path(dst).name == "toy000_MR.json":
            raise OSError(5, "Input/output error")
        return replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", stop_before_the_json)
        assert _predict(inp, out, "--overwrite") == 1
    assert "toy000_MR.nii.gz" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["toy000_MR.mrk.json"]  # incomplete, and visibly so
    assert _predict(inp, out) == 0
    assert "1 predicted, 0 skipped" in capsys.readouterr().out
    new_json, new_mrk = read_lmkreg_json(out / "toy000_MR.json"), read_landmarks(out / "toy000_MR.mrk.json")
    np.testing.assert_allclose(new_mrk.to_array(NAMES), new_json.to_array(NAMES), atol=1e-6)
    assert not np.allclose(new_json.to_array(NAMES), old.to_array(NAMES))


# ---------------------------------------------------------------------------------------------
# predict: reading the next volume overlaps computing the current one (issue 5, "predict")
# ---------------------------------------------------------------------------------------------

def test_reading_the_next_volume_overlaps_the_network_of_the_current_one(tmp_path):
    """The network of case k waits until the reading of case k+1 has started: if predict_folder
    read and computed one after the other, case k+1 would never start and the wait would time
    out.  A duck-typed predictor keeps the test free of torch."""
    import threading

    from lmkreg.run.predict import predict_folder

    inp = tmp_path / "in"
    inp.mkdir()
    img = sitk.GetImageFromArray(np.arange(120, dtype=np.float32).reshape(4, 5, 6))
    for k in range(3):
        sitk.WriteImage(img, str(inp / f"case{k}.nii.gz"))
    started = [threading.Event() for _ in range(3)]
    overlapped = []

    from lmkreg.inference.prediction import Prediction as RealPrediction

    def Prediction(k):
        return RealPrediction(LandmarkSet({n: [float(k), 1.0 + i, 2.0] for i, n in enumerate(NAMES)}), {}, {})

    class OverlapPredictor:  # the part of lmkreg.inference.interface.Predictor that predict_folder uses
        modality = "MR"
        has_segmentation = False
        calls = 0

        def check_image(self, pred, image_geometry, image=None):
            pass

        def preprocess(self, image):
            k = OverlapPredictor.calls
            OverlapPredictor.calls += 1
            started[k].set()
            return np.zeros((2, 2, 2), np.float32), k

        def predict_array(self, array, k, image=None):
            if k + 1 < len(started):
                overlapped.append(started[k + 1].wait(timeout=10))
            return Prediction(k)

    report = predict_folder(OverlapPredictor(), inp, tmp_path / "out", progress_bar=False)
    assert not report.failed, report.failed
    assert sorted(report.done) == [f"case{k}.nii.gz" for k in range(3)]
    assert overlapped == [True, True]
    # and each case's landmarks are its own, not its neighbour's, despite the overlap
    for k in range(3):
        got = read_lmkreg_json(tmp_path / "out" / f"case{k}.json")
        assert got["apex"][0] == pytest.approx(k)
