"""Segmentation head (issue 17): the *_Seg trainers train landmarks and the prostate mask
together; masks follow the image through crops and augmentation; prediction writes the mask
on the input image's exact grid (oblique, anisotropic toy images) with its volume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from lmkreg.errors import LmkregError
from lmkreg.geometry import ImageGeometry
from lmkreg.inference.segmentation import SegLayer, mask_on_image, probability_on_image
from lmkreg.io.landmarks import read_lmkreg_json
from lmkreg.training.augmentation import MirrorLeftRight, SpatialTransform
from lmkreg.training.data import crop_sample, load_case
from lmkreg.training.registry import find_trainer

TRAINER = "LandmarkTrainer_Seg"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Toy MR dataset (oblique, anisotropic, sphere masks) preprocessed; LandmarkTrainer_Seg fold 0
    trained a few steps through lmkreg.run.train.train."""
    from toydata import folders_under, make_toy_dataset

    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.run.train import model_folder, train

    root = tmp_path_factory.mktemp("seg_head")
    with folders_under(root) as env:
        ds = make_toy_dataset(root / "raw", n_cases=5, dataset_id=17, modalities=("MR",))
        pre = plan_and_preprocess("17", workers=1, num_folds=5)
        summary = train("17", "MR", 0, trainer=TRAINER, device="cpu", num_epochs=1, iterations_per_epoch=3,
                        num_workers=0, progress_bar=False)
        folder = model_folder(ds.name, TRAINER, "MR")
    return {"env": env, "ds": ds, "pre": pre, "summary": summary, "folder": folder}


# ---- data and augmentation ------------------------------------------------------------------

def test_preprocessed_mask_is_on_the_image_grid(trained):
    from lmkreg.config.plans import Plans

    plans = Plans.load(trained["pre"] / "plans.json")
    data = trained["pre"] / plans.configuration("MR").data_identifier
    case = trained["ds"].cases("Tr", "MR")[0]
    sample = load_case(data, case, with_mask=True)
    assert sample["mask"] is not None and sample["mask"].shape == sample["image"].shape
    assert set(np.unique(sample["mask"])) == {0, 1}
    # crops cut the same box out of image and mask
    crop = crop_sample(sample, (1, 2, 3), np.asarray(sample["image"].shape[1:]) - 4)
    np.testing.assert_array_equal(crop["mask"], sample["mask"][:, 1:-3, 2:-2, 3:-1])
    # the stored mask is the raw mask resampled (nearest) on the stored grid: compare in world space
    meta = json.loads((data / f"{case}.json").read_text())
    grid = ImageGeometry.from_json(meta["geometry"])
    raw = sitk.ReadImage(str(trained["ds"].mask_path(case, "MR")))
    ref = grid.make_image(np.zeros(grid.shape_zyx, np.uint8))
    expected = sitk.GetArrayFromImage(sitk.Resample(raw, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_array_equal(sample["mask"][0], expected)


def test_refine_stage_mask_shares_the_stored_crop_grid(trained, tmp_path):
    """A refine configuration stores its crop with a margin: the mask gets exactly that grid too."""
    import dataclasses

    from lmkreg.config.plans import Plans
    from lmkreg.preprocessing.preprocessor import CaseFiles, preprocess_case

    conf = dataclasses.replace(Plans.load(trained["pre"] / "plans.json").configuration("MR"), stage="refine",
                               previous_stage="MR", crop_jitter_mm=3.0)
    ds, case = trained["ds"], trained["ds"].cases("Tr", "MR")[0]
    files = CaseFiles(case, ds.image_path(case, "MR"), ds.mask_path(case, "MR"), ds.landmarks_path(case, "MR"))
    meta = preprocess_case(files, conf, read_lmkreg_json(ds.landmarks_path(case, "MR")).names, tmp_path)
    sample = load_case(tmp_path, case, with_mask=True)
    assert any(meta["crop_margin_zyx"])
    assert sample["mask"].shape == sample["image"].shape
    grid = ImageGeometry.from_json(meta["geometry"])
    assert tuple(grid.shape_zyx) == sample["image"].shape[1:]
    raw = sitk.ReadImage(str(ds.mask_path(case, "MR")))
    ref = grid.make_image(np.zeros(grid.shape_zyx, np.uint8))
    expected = sitk.GetArrayFromImage(sitk.Resample(raw, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_array_equal(sample["mask"][0], expected)


def test_augmented_mask_stays_on_the_augmented_image():
    """A mask made by thresholding a smooth image, augmented (rotation, anisotropic scale, shift,
    elastic, mirror), still equals the thresholded augmented image up to interpolation."""
    z, y, x = np.indices((28, 44, 52), dtype=float)
    spacing = np.array([2.0, 1.0, 0.8])
    image = np.exp(-(((z - 13) * 2.0) ** 2 + ((y - 22) * 1.0) ** 2 + ((x - 24) * 0.8) ** 2) / (2 * 11.0 ** 2))
    image = image.astype(np.float32)[None]
    mask = (image > 0.5).astype(np.uint8)
    sample = {"image": image, "mask": mask, "landmarks": np.array([[11.0, 16.0, 15.0]]), "spacing": spacing}
    spatial = SpatialTransform(rotation_deg=((-30, 30),) * 3, scale=(0.8, 1.2), translation_mm=5.0, p_rotation=1,
                               p_scale=1, p_translation=1, isotropic_scale=False, elastic_alpha_mm=1.5,
                               elastic_sigma_mm=8.0, p_elastic=1.0)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        out = MirrorLeftRight(p=1.0)(spatial(sample, rng), rng)
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1}
        truth = out["image"] > 0.5
        assert truth.sum() > 2000  # the blob is still in view
        disagree = (out["mask"] > 0) != truth
        # order 0 vs linear: only voxels near the boundary may differ (nearest neighbour moves a
        # value by up to half an input voxel, 1 mm along z here: up to 2 output voxels of 0.8 mm)
        boundary = ndimage.binary_dilation(truth[0], iterations=2) & ~ndimage.binary_erosion(truth[0], iterations=2)
        assert not (disagree[0] & ~boundary).any()
        assert _dice(out["mask"], truth) > 0.95
        # no shift between them: the centroids agree to a fraction of a voxel
        np.testing.assert_allclose(ndimage.center_of_mass(out["mask"][0]), ndimage.center_of_mass(truth[0]),
                                   atol=0.25)
        assert not np.array_equal(out["mask"], mask)  # it did move


# ---- loss -----------------------------------------------------------------------------------

def _numpy_seg_loss(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over cases of (1 - soft Dice) + mean BCE, by hand."""
    out = []
    for lg, tg in zip(logits.astype(np.float64), target.astype(np.float64)):
        p = 1.0 / (1.0 + np.exp(-lg))
        dice = (2 * (p * tg).sum() + 1e-5) / (p.sum() + tg.sum() + 1e-5)
        bce = np.mean(np.maximum(lg, 0) - lg * tg + np.log1p(np.exp(-np.abs(lg))))
        out.append(1 - dice + bce)
    return float(np.mean(out))


def test_seg_loss_adds_dice_and_ce_and_masks_cases_without_a_mask(trained):
    from lmkreg.config.plans import Plans
    from lmkreg.config.splits import load_or_create_splits

    cls = find_trainer(TRAINER)
    base = find_trainer("LandmarkTrainer")
    plans = Plans.load(trained["pre"] / "plans.json")
    splits = load_or_create_splits(trained["pre"], trained["ds"].cases("Tr"))
    trainer = cls(plans, "MR", 0, trained["pre"], trained["folder"] / "unused", splits, device="cpu")
    single = base(plans, "MR", 0, trained["pre"], trained["folder"] / "unused", splits, device="cpu")
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 6, 7, 8)  # 3 landmarks + the prostate logit
    outputs = torch.randn(shape, generator=g) * 2
    target_mm = torch.rand(3, 3, 3, generator=g) * 5
    present = torch.ones(3, 3, dtype=torch.bool)
    masks = (torch.rand(3, 1, 6, 7, 8, generator=g) > 0.6).float()
    landmark_only, _ = single.compute_loss(outputs[:, :3], target_mm, present)

    trainer._seg_target, trainer._seg_present = masks, torch.tensor([True, False, True])
    loss, parts = trainer.compute_loss(outputs, target_mm, present)
    expected_seg = _numpy_seg_loss(outputs[[0, 2], 3].numpy(), masks[[0, 2], 0].numpy())
    assert float(parts["segmentation"]) == pytest.approx(expected_seg, rel=1e-5)
    assert float(loss) == pytest.approx(float(landmark_only) + trainer.segmentation_weight * expected_seg, rel=1e-5)

    trainer._seg_present = torch.tensor([False, False, False])
    loss_none, _ = trainer.compute_loss(outputs, target_mm, present)
    assert float(loss_none) == float(landmark_only)

    trainer.segmentation_weight = 0.25  # the weight scales the term
    trainer._seg_present = torch.tensor([True, False, True])
    loss_w, _ = trainer.compute_loss(outputs, target_mm, present)
    assert float(loss_w) == pytest.approx(float(landmark_only) + 0.25 * expected_seg, rel=1e-5)


def test_training_reports_validation_dice(trained):
    from lmkreg.training.checkpoint import load_checkpoint

    summary = trained["summary"]
    fold = trained["folder"] / "fold_0"
    on_disk = json.loads((fold / "validation" / "summary.json").read_text())
    assert on_disk["segmentation_dice_per_case"] == summary["segmentation_dice_per_case"]
    dice = summary["segmentation_dice_per_case"]
    assert dice and all(v is not None and 0.0 <= v <= 1.0 for v in dice.values())
    assert summary["segmentation_dice_mean"] == pytest.approx(np.mean(list(dice.values())))
    state = load_checkpoint(fold / "checkpoint_final.pth", torch.device("cpu"))
    assert state["network"]["seg_head.weight"].shape[0] == 1  # one prostate logit
    assert "validation prostate Dice" in (fold / "training_log.txt").read_text()


def test_no_training_masks_fails_at_the_start_naming_the_folder(trained, tmp_path):
    from lmkreg.config.plans import Plans
    from lmkreg.config.splits import load_or_create_splits

    plans = Plans.load(trained["pre"] / "plans.json")
    ident = plans.configuration("MR").data_identifier
    shutil.copytree(trained["pre"] / ident, tmp_path / ident)
    for p in (tmp_path / ident).glob("*_mask*"):
        p.unlink()
    splits = load_or_create_splits(trained["pre"], trained["ds"].cases("Tr"))
    trainer = find_trainer(TRAINER)(plans, "MR", 0, tmp_path, tmp_path / "run", splits, device="cpu",
                                    progress_bar=False)
    (tmp_path / "run").mkdir()
    with pytest.raises(LmkregError, match="has a prostate mask") as info:
        trainer._setup()
    assert str(tmp_path / ident) in str(info.value)


# ---- prediction -----------------------------------------------------------------------------

def test_predict_writes_the_mask_on_the_input_grid(trained, tmp_path, monkeypatch):
    from toydata import use_folders

    from lmkreg.run.predict import main

    use_folders(monkeypatch, trained["env"])
    ds = trained["ds"]
    images = tmp_path / "in"
    images.mkdir()
    case = ds.cases("Tr", "MR")[1]
    shutil.copy(ds.image_path(case, "MR"), images / "a.nii.gz")
    out = tmp_path / "out"
    assert main(["-i", str(images), "-o", str(out), "-d", "17", "-m", "MR", "-tr", TRAINER, "--no-progress",
                 "--device", "cpu"]) in (0, 3)
    src = sitk.ReadImage(str(images / "a.nii.gz"))
    assert src.GetSpacing()[0] != src.GetSpacing()[2]  # anisotropic
    assert not np.allclose(np.reshape(src.GetDirection(), (3, 3)), np.eye(3))  # oblique
    mask = sitk.ReadImage(str(out / "a_prostate.nii.gz"))
    assert mask.GetSize() == src.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), src.GetDirection(), atol=1e-6)
    arr = sitk.GetArrayFromImage(mask)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1}
    doc = json.loads((out / "a.json").read_text())
    assert doc["prostate"]["mask_file"] == "a_prostate.nii.gz"
    assert doc["prostate"]["volume_ml"] == pytest.approx(arr.sum() * np.prod(src.GetSpacing()) / 1000.0)
    # register reads these files: the extra key does not disturb the landmark reader
    read_back = read_lmkreg_json(out / "a.json")
    assert set(read_back.points) == set(doc["landmarks"])
    np.testing.assert_allclose(read_back.to_array(), np.array(list(doc["landmarks"].values()), float))
    # a second run skips the complete case; a mask file lmkreg did not write is never replaced
    before = (out / "a_prostate.nii.gz").stat().st_mtime_ns
    assert main(["-i", str(images), "-o", str(out), "-d", "17", "-m", "MR", "-tr", TRAINER, "--no-progress",
                 "--device", "cpu"]) in (0, 3)
    assert (out / "a_prostate.nii.gz").stat().st_mtime_ns == before
    foreign = sitk.Image(src.GetSize(), sitk.sitkUInt8)
    sitk.WriteImage(foreign, str(out / "a_prostate.nii.gz"))
    (out / "a.json").unlink()
    assert main(["-i", str(images), "-o", str(out), "-d", "17", "-m", "MR", "-tr", TRAINER, "--no-progress",
                 "--device", "cpu"]) != 0
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "a_prostate.nii.gz"))).sum() == 0


def test_predictor_mask_and_volume_with_mirror_tta(trained):
    from lmkreg.inference.predictor import LandmarkPredictor

    predictor = LandmarkPredictor(trained["folder"], device="cpu", mirror_tta=True)
    assert predictor.has_segmentation
    image = sitk.ReadImage(str(trained["ds"].image_path(trained["ds"].cases("Tr", "MR")[2], "MR")))
    pred = predictor.predict(image)
    assert pred.mask is not None and pred.mask.GetSize() == image.GetSize()
    assert pred.volume_ml == pytest.approx(sitk.GetArrayViewFromImage(pred.mask).sum()
                                           * np.prod(image.GetSpacing()) / 1000.0)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(pred.mask, True))
    assert labels.max() <= 1  # the largest component only
    plain = find_trainer("LandmarkTrainer")
    assert not getattr(plain, "has_segmentation", False)


def test_sphere_through_preprocessing_and_back_matches_the_original(trained):
    """A raw mask preprocessed onto the planned grid and brought back by mask_on_image keeps
    Dice > 0.9 with the original, on the original's exact (oblique, anisotropic) grid."""
    from lmkreg.config.plans import Plans

    plans = Plans.load(trained["pre"] / "plans.json")
    data = trained["pre"] / plans.configuration("MR").data_identifier
    ds = trained["ds"]
    for case in ds.cases("Tr", "MR")[:2]:
        meta = json.loads((data / f"{case}.json").read_text())
        grid = ImageGeometry.from_json(meta["geometry"])
        stored = load_case(data, case, with_mask=True)["mask"][0].astype(np.float32)
        raw = sitk.ReadImage(str(ds.mask_path(case, "MR")))
        geometry = ImageGeometry.from_image(raw)
        mask, volume = mask_on_image([SegLayer(stored, grid)], None, geometry)
        back = sitk.GetArrayFromImage(mask)
        assert _dice(back, sitk.GetArrayFromImage(raw)) > 0.9
        # the same as SimpleITK's own linear resampling of that grid's probability, thresholded
        ref = sitk.Resample(grid.make_image(stored), raw, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        np.testing.assert_array_equal(back, (sitk.GetArrayFromImage(ref) > 0.5).astype(np.uint8))
        assert volume == pytest.approx(back.sum() * np.prod(raw.GetSpacing()) / 1000.0)


def test_cascade_layers_blend_where_they_cover_and_fall_back_elsewhere():
    """Refine crops (weighted) where they reach, the localizer's probability outside them."""
    image = ImageGeometry.create((10, 12, 14), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    localizer = SegLayer(np.full((10, 12, 14), 0.8, np.float32), image)
    crop_a = ImageGeometry.create((4, 4, 4), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), np.eye(3))
    crop_b = ImageGeometry.create((4, 4, 4), (1.0, 1.0, 1.0), (3.0, 2.0, 2.0), np.eye(3))  # one voxel along x
    layers = [SegLayer(np.full((4, 4, 4), 0.2, np.float32), crop_a, 0.75),
              SegLayer(np.full((4, 4, 4), 0.6, np.float32), crop_b, 0.25)]
    prob = probability_on_image(layers, localizer, image)
    assert prob[3, 3, 2] == pytest.approx(0.2)  # x index 2: only crop a
    assert prob[3, 3, 4] == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)  # both crops
    assert prob[3, 3, 6] == pytest.approx(0.6)  # only crop b
    assert prob[0, 0, 0] == pytest.approx(0.8) and prob[8, 3, 4] == pytest.approx(0.8)  # localizer
    assert probability_on_image(layers, None, image)[0, 0, 0] == 0.0


@pytest.mark.parametrize("name", ["LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance",
                                  "HeatmapMatchingTrainer"])
def test_every_landmark_trainer_has_a_seg_variant_sharing_its_landmark_network(trained, name):
    """Same seed: the _Seg network's landmark part has the single-task network's initial weights,
    its output is those landmark channels plus one logit, and decode reads only the former."""
    from lmkreg.config.plans import Plans

    conf = Plans.load(trained["pre"] / "plans.json").configuration("MR")
    base, multi = find_trainer(name), find_trainer(f"{name}_Seg")
    torch.manual_seed(5)
    single_net = base.build_network(conf, 3).eval()
    torch.manual_seed(5)
    seg_net = multi.build_network(conf, 3).eval()
    single_state = single_net.state_dict()
    assert {k.removeprefix("unet."): v for k, v in seg_net.state_dict().items() if k.startswith("unet.")}.keys() \
        == single_state.keys()
    for k, v in single_state.items():
        assert torch.equal(seg_net.state_dict()[f"unet.{k}"], v), k
    x = torch.randn(1, 1, *conf.input_size_zyx, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, ref = seg_net(x), single_net(x)
    assert out.shape[1] == ref.shape[1] + 1
    torch.testing.assert_close(out[:, :-1], ref)
    for a, b in zip(multi.decode(out, conf.spacing_zyx), base.decode(ref, conf.spacing_zyx)):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_mirror_tta_probability_is_the_mean_of_plain_and_unflipped_mirror(trained):
    from lmkreg.inference.predictor import LandmarkPredictor

    predictor = LandmarkPredictor(trained["folder"], device="cpu", mirror_tta=True, optimize=False)
    image = sitk.ReadImage(str(trained["ds"].image_path(trained["ds"].cases("Tr", "MR")[3], "MR")))
    array, grid = predictor.preprocess(image)
    pred = predictor.predict_array(array, grid)
    x = torch.from_numpy(np.ascontiguousarray(array[None]))
    net = predictor.networks[0]
    with torch.no_grad():
        plain = torch.sigmoid(net(x)[0, -1])
        mirrored = torch.flip(torch.sigmoid(net(torch.flip(x, dims=[-1]))[0, -1]), dims=[-1])
    assert len(pred.seg_layers) == 1 and pred.seg_layers[0].grid.same_as(grid)
    np.testing.assert_allclose(pred.seg_layers[0].probability, ((plain + mirrored) / 2).numpy(), atol=1e-5)
    assert pred.mask is None  # predict_array without the source geometry: no input grid to map to


# ---- cascade --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seg_cascade(tmp_path_factory):
    """MR-only pelvic_tiny cases with gland masks, planned as a cascade, both stages of
    HeatmapMatchingTrainer_Seg trained a few steps on every case."""
    from toydata import folders_under

    from lmkreg.dataset.layout import Dataset, DatasetSpec, dataset_folder_name
    from lmkreg.io.images import write_image
    from lmkreg.io.landmarks import write_lmkreg_json
    from lmkreg.paths import raw_root
    from lmkreg.phantoms.generator import generate_case
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget
    from lmkreg.run.train import train

    root = tmp_path_factory.mktemp("seg_cascade")
    with folders_under(root) as env:
        spec = DatasetSpec(name=dataset_folder_name(43, "PelvicSeg"), modalities=["MR"], num_training=6)
        ds = Dataset.create(raw_root() / spec.name, spec)
        for i in range(6):
            case = generate_case(300 + i, "pelvic_tiny", mr_only=True)
            write_image(case.mr_image, ds.image_path(f"p{i:03d}", "MR"))
            write_image(case.mr_mask, ds.mask_path(f"p{i:03d}", "MR"))
            write_lmkreg_json(case.mr_landmarks, ds.landmarks_path(f"p{i:03d}", "MR"))
        plan_and_preprocess("43", Budget("cpu", None, 0.06), workers=1, num_folds=2, cascade=True)
        for c in ("localizer", "refine"):
            train("43", "MR", "all", "HeatmapMatchingTrainer_Seg", device="cpu", num_epochs=1, iterations_per_epoch=2,
                  num_workers=0, progress_bar=False, configuration=c)
    return env, ds


def test_cascade_writes_the_refine_mask_on_the_input_grid(seg_cascade, tmp_path, monkeypatch):
    from toydata import use_folders

    from lmkreg.inference.cascade import CascadePredictor, build_predictor
    from lmkreg.run.predict import main
    from lmkreg.paths import results_root

    env, ds = seg_cascade
    use_folders(monkeypatch, env)
    predictor = build_predictor(results_root() / ds.name, "HeatmapMatchingTrainer_Seg", "MR", device="cpu",
                                mirror_tta=False)
    assert isinstance(predictor, CascadePredictor) and predictor.has_segmentation
    image = sitk.ReadImage(str(ds.image_path("p000", "MR")))
    pred = predictor.predict(image)
    # the refine crops' layers, the localizer's as the fallback outside them
    assert pred.seg_layers and all(layer.grid.shape_zyx == tuple(predictor.refiner.conf.input_size_zyx)
                                   for layer in pred.seg_layers)
    assert sum(layer.weight for layer in pred.seg_layers) == pytest.approx(1.0)
    assert pred.seg_fallback is not None and pred.seg_fallback.grid.same_as(pred.stage1.seg_layers[0].grid)
    assert pred.mask.GetSize() == image.GetSize()
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(ds.image_path("p001", "MR"), inp / "b.nii.gz")
    assert main(["-i", str(inp), "-o", str(tmp_path / "out"), "-d", "43", "-m", "MR", "-tr",
                 "HeatmapMatchingTrainer_Seg", "--device", "cpu", "--no-progress"]) in (0, 3)
    src = sitk.ReadImage(str(inp / "b.nii.gz"))
    mask = sitk.ReadImage(str(tmp_path / "out" / "b_prostate.nii.gz"))
    assert mask.GetSize() == src.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), src.GetDirection(), atol=1e-6)
    doc = json.loads((tmp_path / "out" / "b.json").read_text())
    assert doc["prostate"]["volume_ml"] == pytest.approx(
        sitk.GetArrayFromImage(mask).sum() * np.prod(src.GetSpacing()) / 1000.0)
