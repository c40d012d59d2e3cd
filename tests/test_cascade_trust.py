"""Cascade trust (issues 13/14, inference side): the refine landmark against the localizer's
(limit from the localizer's calibrated radius, else from the plan), the refine heatmap at its
crop border, the localizer's radius borrowed by an uncalibrated refine stage; and cascade-only
models used by lmkreg_predict / lmkreg_register without -tr.

No training: model folders hold randomly initialised networks saved as checkpoints, and the
trust tests replace the stages' networks with a "blob finder" whose heatmap peaks at the
brightest structure of its input, so both stages' answers are known in world mm."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from toydata import use_folders
from torch import nn

from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.inference.predictor import BORDER_VOXELS
from lmkreg.io.atomic import atomic_write_json
from lmkreg.config.plans import PLANS_FILE, Plans
from lmkreg.training.checkpoint import save_checkpoint
from lmkreg.training.registry import find_trainer

TRAINER = "LandmarkTrainer"
DATASET_ID = 43
BLOB_SIGMA_MM = 4.0
SEED = 10  # random networks whose MR and US triangles are not collinear


def _sharpen(net: nn.Module, seed: int, input_size_zyx) -> None:
    """Scale the heatmap head of an untrained network so its logits have sd 3: each landmark's
    heatmap then peaks somewhere of its own (an untrained DSNT answers the grid centre for all
    three, a triangle no rigid fit accepts)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, *input_size_zyx, generator=g))
        net.head.weight.mul_(3.0 / float(out.std()))


@pytest.fixture(scope="module")
def cascade_models(tmp_path_factory):
    """Toy MR + US dataset planned with a cascade (no preprocessing); for each modality only
    the two cascade model folders (TRAINER__M_localizer, TRAINER__M_refine), fold 'all', with
    random weights saved by the checkpoint code."""
    from toydata import folders_under, make_toy_dataset

    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    root = tmp_path_factory.mktemp("cascade_trust")
    with folders_under(root) as env:
        ds = make_toy_dataset(root / "raw", n_cases=5, dataset_id=DATASET_ID, modalities=("MR", "US"))
        pre = plan_and_preprocess(str(DATASET_ID), workers=1, skip_preprocessing=True, cascade=True)
    doc = json.loads((pre / PLANS_FILE).read_text())
    results = root / "res" / ds.name
    names = doc["landmarks"]
    for k, name in enumerate(["MR_localizer", "MR_refine", "US_localizer", "US_refine"]):
        folder = results / f"{TRAINER}__{name}"
        (folder / "fold_all").mkdir(parents=True)
        (folder / PLANS_FILE).write_text(json.dumps(doc))
        conf = Plans.load(folder / PLANS_FILE).configuration(name)
        torch.manual_seed(SEED + k)
        net = find_trainer(TRAINER).build_network(conf, len(names))
        _sharpen(net, SEED + k, conf.input_size_zyx)
        save_checkpoint({"trainer": TRAINER, "network": net.state_dict(), "epoch": 0},
                        folder / "fold_all" / "checkpoint_final.pth")
    return {"env": env, "dataset": ds, "results": results, "names": names}


def _use_env(models, monkeypatch):
    use_folders(monkeypatch, models["env"])


# ---- a blob finder in place of each stage's networks --------------------------------------

class BlobNet(nn.Module):
    """Heatmap logits gamma * log(input - min): the DSNT heatmap is the input's bright blob
    raised to the power gamma (a Gaussian blob stays Gaussian, sd / sqrt(gamma)), so its
    expectation is the blob centre.  ``roll_z`` moves the heatmap by that many voxels along the
    grid's z axis (world S: cascade grids have the identity direction)."""

    def __init__(self, n_landmarks: int, roll_z: int = 0, gamma: float = 6.0):
        super().__init__()
        self.n, self.roll_z, self.gamma = n_landmarks, roll_z, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - x.amin(dim=(2, 3, 4), keepdim=True)).clamp_min(1e-6)
        logits = self.gamma * torch.log(h)
        if self.roll_z:
            logits = torch.roll(logits, self.roll_z, dims=2)
        return logits.repeat(1, self.n, 1, 1, 1)


class BorderNet(nn.Module):
    """Every heatmap on one voxel of the crop's first z plane (the crop did not hold it)."""

    def __init__(self, n_landmarks: int):
        super().__init__()
        self.n = n_landmarks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], self.n, *x.shape[2:]))
        out[:, :, 0, x.shape[3] // 2, x.shape[4] // 2] = 40.0
        return out


def _install(stage, net: nn.Module) -> None:
    stage.networks = [net] * len(stage.networks)
    stage.inference_modules = list(stage.networks)


def blob_image(offset_lps=(2.0, -1.5, 3.0)):
    """A toy-sized oblique, anisotropic MR image (the geometry the plans were made for) holding
    one bright Gaussian blob; returns the image and the blob centre (world LPS mm)."""
    geom = ImageGeometry.create((20, 24, 28), (1.5, 1.2, 2.4), (-20.0, 10.0, 5.0), rotation_direction((12, -8, 15)))
    centre = geom.index_to_world((np.asarray(geom.shape_zyx, float) - 1) / 2) + np.asarray(offset_lps)
    d2 = ((geom.voxel_centres_world() - centre) ** 2).sum(-1)
    return geom.make_image((1.0 + 100.0 * np.exp(-d2 / (2 * BLOB_SIGMA_MM ** 2))).astype(np.float32)), centre


def _cascade(results: Path, **kwargs):
    from lmkreg.inference.cascade import CascadePredictor, build_predictor

    p = build_predictor(results, TRAINER, "MR", device="cpu", optimize=False, mirror_tta=True, **kwargs)
    assert isinstance(p, CascadePredictor)
    return p


def _stage_flags(pred) -> list[str]:
    return [f.text for f in pred.flags if "disagree by" in f.text or "crop did not hold" in f.text]


def _calibrate(folder: Path, names, q: float) -> None:
    """calibration.json as training writes it (lmkreg.trust.calibration's format), quantile q."""
    from lmkreg.trust.calibration import CALIBRATION_FILE, Calibration

    cal = Calibration(0.9, {n: q for n in names}, {n: 20 for n in names}, {}, ["0", "1"])
    atomic_write_json(folder / CALIBRATION_FILE, cal.to_json())


def _roll_for(conf, distance_mm: float) -> int:
    """Voxels of the refine grid along z that move its answer by more than `distance_mm`, checked
    to keep the blob well inside the crop (so only the disagreement check can fire)."""
    s = conf.spacing_zyx[0]
    k = int(math.ceil(distance_mm / s))
    room_mm = (conf.input_size_zyx[0] - 1) / 2 * s - k * s - abs(conf.fov_offset_lps[2])  # crop z = world S
    # 3 sd of the heatmap (blob sd / sqrt(gamma)) clear of the border band
    assert room_mm > 3 * BLOB_SIGMA_MM / math.sqrt(6) + BORDER_VOXELS * s, "the refine crop is too small for the shift"
    return k


# ---- the tests ---------------------------------------------------------------------------

def test_agreeing_stages_are_not_flagged_and_the_record_holds_the_numbers(cascade_models, monkeypatch):
    _use_env(cascade_models, monkeypatch)
    names = cascade_models["names"]
    predictor = _cascade(cascade_models["results"])
    _install(predictor.localizer, BlobNet(len(names)))
    _install(predictor.refiner, BlobNet(len(names)))
    image, blob = blob_image()
    pred = predictor.predict(image)
    for n in names:  # both stages find the blob (independent reference: where it was drawn)
        assert np.linalg.norm(pred.stage1.landmarks.points[n] - blob) < 1.0
        assert np.linalg.norm(pred.landmarks.points[n] - blob) < 1.0
    assert _stage_flags(pred) == []
    plan_limit = predictor.conf.crop_jitter_mm * math.sqrt(3)
    record = pred.with_extras().extras["cascade"]
    for n in names:
        d = np.linalg.norm(pred.landmarks.points[n] - pred.stage1.landmarks.points[n])
        assert record["stage2_moved_mm"][n] == pytest.approx(d, abs=1e-3)
        assert record["stage2_moved_limit_mm"][n] == pytest.approx(plan_limit, abs=1e-3)
        assert "no localizer error radius" in record["stage2_moved_limit_from"][n]
        assert record["crop_border_mass"][n] < 0.05  # the blob is in the middle of the crop
        assert record["stage1_radius_mm"][n] is None  # no calibration.json: handled, not an error
        assert np.allclose(record["stage1_landmarks_lps"][n], pred.stage1.landmarks.points[n], atol=1e-3)


def test_refine_far_from_localizer_is_flagged_with_positions_distance_and_limit(cascade_models, monkeypatch):
    _use_env(cascade_models, monkeypatch)
    names = cascade_models["names"]
    predictor = _cascade(cascade_models["results"])
    conf = predictor.conf
    plan_limit = conf.crop_jitter_mm * math.sqrt(3)
    k = _roll_for(conf, plan_limit + 2.0)
    _install(predictor.localizer, BlobNet(len(names)))
    _install(predictor.refiner, BlobNet(len(names), roll_z=k))
    image, blob = blob_image()
    pred = predictor.predict(image)
    shift = np.array([0.0, 0.0, k * conf.spacing_zyx[0]])  # z of the identity-direction grid = world S
    flags = _stage_flags(pred)
    assert len(flags) == len(names) and not pred.reliable
    for n, flag in zip(names, flags):
        assert np.linalg.norm(pred.landmarks.points[n] - (blob + shift)) < 1.0
        d = float(np.linalg.norm(pred.landmarks.points[n] - pred.stage1.landmarks.points[n]))
        assert d == pytest.approx(k * conf.spacing_zyx[0], abs=1.5)
        assert flag.startswith(f"{n}: refine stage at [")
        assert f"disagree by {d:.1f} mm > {plan_limit:.1f} mm" in flag
        loc = pred.stage1.landmarks.points[n]
        assert "localizer at [" + ", ".join(f"{v:.1f}" for v in loc) + "]" in flag
        assert pred.landmark_flagged(n) and "UNRELIABLE" in pred.describe(n)


def test_localizer_radius_sets_the_limit_and_is_borrowed_by_an_uncalibrated_refine(cascade_models, tmp_path,
                                                                                  monkeypatch):
    """With calibration.json in the localizer folder only: the limit is the localizer's radius,
    a shift the plan's bound lets pass is flagged, and the final landmarks carry the localizer's
    radius with a note.  With the refine stage calibrated too: limit = sum of both radii."""
    _use_env(cascade_models, monkeypatch)
    names = cascade_models["names"]
    results = tmp_path / "res"
    for stage in ("MR_localizer", "MR_refine"):
        shutil.copytree(cascade_models["results"] / f"{TRAINER}__{stage}", results / f"{TRAINER}__{stage}")
    _calibrate(results / f"{TRAINER}__MR_localizer", names, q=0.8)
    image, blob = blob_image()

    predictor = _cascade(results)
    _install(predictor.localizer, BlobNet(len(names)))
    _install(predictor.refiner, BlobNet(len(names)))
    pred = predictor.predict(image)
    assert _stage_flags(pred) == []
    doc = pred.trust_document()
    for n in names:
        r1 = pred.stage1.radius_mm[n]
        assert r1 == pytest.approx(0.8 * pred.stage1.signals[n]["scale_mm"])  # q x scale: the calibration's rule
        assert pred.stage_check.limit_mm[n] == pytest.approx(r1)
        assert pred.radius_mm[n] == pytest.approx(r1) and doc["landmarks"][n]["radius_from"] == "localizer"
        assert "refine stage has none" in doc["landmarks"][n]["radius_note"]
        assert "localizer's radius" in pred.describe(n)
    r1 = min(pred.stage1.radius_mm.values())

    # a shift below the plan's bound but beyond the localizer's radius is flagged
    k = _roll_for(predictor.conf, r1 + 1.0)
    assert k * predictor.conf.spacing_zyx[0] < predictor.conf.crop_jitter_mm * math.sqrt(3)
    _install(predictor.refiner, BlobNet(len(names), roll_z=k))
    shifted = predictor.predict(image)
    assert len(_stage_flags(shifted)) == len(names)
    assert all("the localizer's 90% error radius" in f for f in _stage_flags(shifted))
    uncalibrated = _cascade(cascade_models["results"])  # same shift, no calibration: the plan's bound
    _install(uncalibrated.localizer, BlobNet(len(names)))
    _install(uncalibrated.refiner, BlobNet(len(names), roll_z=k))
    assert _stage_flags(uncalibrated.predict(image)) == []

    _calibrate(results / f"{TRAINER}__MR_refine", names, q=0.5)
    both = _cascade(results)
    _install(both.localizer, BlobNet(len(names)))
    _install(both.refiner, BlobNet(len(names)))
    pred = both.predict(image)
    for n in names:
        r2 = 0.5 * pred.signals[n]["scale_mm"]
        assert pred.radius_mm[n] == pytest.approx(r2)
        assert pred.trust_document()["landmarks"][n]["radius_from"] == "refine"
        assert pred.stage_check.limit_mm[n] == pytest.approx(pred.stage1.radius_mm[n] + r2)


def test_refine_heatmap_at_the_crop_border_is_flagged(cascade_models, monkeypatch):
    _use_env(cascade_models, monkeypatch)
    names = cascade_models["names"]
    predictor = _cascade(cascade_models["results"])
    _install(predictor.localizer, BlobNet(len(names)))
    _install(predictor.refiner, BorderNet(len(names)))
    pred = predictor.predict(blob_image()[0])
    border = [f.text for f in pred.flags if f.signal == "crop_border_mass"]
    assert len(border) == len(names)
    record = pred.with_extras().extras["cascade"]
    for n, flag in zip(names, border):
        # softmax of one logit of 40 among zeros: all but N e^-40 of the mass on that voxel
        assert record["crop_border_mass"][n] > 0.99 and flag.startswith(f"{n}: 100% of the refine heatmap")
        assert pred.trust_document()["landmarks"][n]["crop_border_mass"] > 0.99


def test_crop_border_mass_against_hand_computed_shares():
    from lmkreg.inference.predictor import crop_border_mass

    shape = (10, 8, 12)
    uniform = crop_border_mass(torch.zeros(1, 2, *shape), np.zeros((2, 3)), shape, band=2)
    inner = (6 * 4 * 8) / (10 * 8 * 12)  # a uniform heatmap's share off the outer 2 voxels
    np.testing.assert_allclose(uniform, [1 - inner] * 2, atol=1e-6)
    logits = torch.full((1, 1, *shape), -50.0)
    logits[0, 0, 5, 4, 6] = 0.0  # all mass in the middle
    assert crop_border_mass(logits, np.zeros((1, 3)), shape, band=2)[0] < 1e-6
    # regression output (no heatmap): 1 for a point in the band or outside the grid
    points = np.array([[5.0, 4.0, 6.0], [1.4, 4.0, 6.0], [5.0, 5.6, 6.0], [5.0, 4.0, 12.5], [1.6, 2.0, 9.4]])
    np.testing.assert_array_equal(crop_border_mass(torch.zeros(1, 5, 3), points, shape, band=2), [0, 1, 1, 1, 0])


# ---- cascade-only models without -tr -----------------------------------------------------

def test_choose_trainer_finds_cascade_only_models(cascade_models, tmp_path):
    from lmkreg.cli_utils import choose_trainer, trained_trainers
    from lmkreg.errors import ConfigurationError

    results = cascade_models["results"]
    assert trained_trainers(results, "MR") == [TRAINER]
    assert choose_trainer(results, "MR", None) == TRAINER
    assert choose_trainer(results, "US", None, "cascade") == TRAINER
    assert trained_trainers(results, "MR", "MR_localizer") == [TRAINER]
    assert trained_trainers(results, "MR", "MR") == []  # no single-stage model
    # a refine folder without its localizer is not a usable cascade; a second trainer is named
    other = tmp_path / "res"
    shutil.copytree(results / f"{TRAINER}__MR_refine", other / f"{TRAINER}__MR_refine")
    assert trained_trainers(other, "MR") == []
    with pytest.raises(ConfigurationError, match=r"TRAINER__MR_localizer \+ TRAINER__MR_refine"):
        choose_trainer(other, "MR", None)
    shutil.copytree(results / f"{TRAINER}__MR_localizer", other / f"{TRAINER}__MR_localizer")
    (other / "HeatmapMatchingTrainer__MR").mkdir()
    assert trained_trainers(other, "MR") == ["HeatmapMatchingTrainer", TRAINER]
    with pytest.raises(ConfigurationError, match="2 trained MR models"):
        choose_trainer(other, "MR", None)


def test_predict_and_register_one_shot_use_cascade_only_models_without_trainer(cascade_models, tmp_path,
                                                                              monkeypatch):
    from lmkreg.run.predict import main as predict_main
    from lmkreg.io.dicom import read_image_or_series
    from lmkreg.run.register import main as register_main

    _use_env(cascade_models, monkeypatch)
    ds, names = cascade_models["dataset"], cascade_models["names"]
    case = ds.cases("Tr")[0]
    mr, us = ds.image_path(case, "MR"), ds.image_path(case, "US")
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(mr, inp / "a.nii.gz")
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(DATASET_ID), "-m", "MR",
                         "--device", "cpu", "--no-progress", "--no-optimize"]) == 0
    predicted = json.loads((tmp_path / "pred" / "a.json").read_text())
    assert predicted["extras"]["cascade"]["refine"] == "MR_refine"

    out = tmp_path / "reg"
    assert register_main(["-d", str(DATASET_ID), "--mr-image", str(mr), "--us-image", str(us), "-o", str(out),
                          "--name", "pair"]) == 0
    transform = json.loads((out / "pair_MR_to_US.json").read_text())
    assert np.asarray(transform["matrix"]).shape == (4, 4) and transform["landmarks_used"] == names
    for modality, image in (("MR", mr), ("US", us)):
        doc = json.loads((out / f"pair_{modality}.json").read_text())
        record = doc["extras"]["cascade"]
        assert (record["localizer"], record["refine"]) == (f"{modality}_localizer", f"{modality}_refine")
    # the same MR landmarks as the cascade predictor gives directly (what lmkreg_predict runs)
    from lmkreg.inference.cascade import build_predictor

    direct = build_predictor(cascade_models["results"], TRAINER, "MR", None, optimize=False,
                             mirror_tta=True).predict(read_image_or_series(mr))
    doc = json.loads((out / "pair_MR.json").read_text())
    for n in names:
        np.testing.assert_allclose(doc["landmarks"][n], direct.landmarks.points[n], atol=1e-3)
