"""Self-configuration: the dataset fingerprint (against numpy and SimpleITK, DICOMOrient for the
canonical spacing), preprocessed masks (nearest neighbour of the original, by
TransformPhysicalPointToIndex / TransformContinuousIndexToPhysicalPoint), seeded splits, the
fingerprint and plans files, the default budget and the anisotropy rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.dataset.layout import Dataset, DatasetSpec
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.io.images import write_image


# ==== issue 3: fingerprint ========================================================================

def _orientation_reference(direction) -> str:
    """ITK letters: for each array axis x, y, z the world axis it mostly points along."""
    d = np.asarray(direction, float).reshape(3, 3)
    out = ""
    for col in range(3):
        row = int(np.argmax(np.abs(d[:, col])))
        out += ("LPS" if d[row, col] > 0 else "RAI")[row]
    return out


def _write_case(ds, case, modality, geom, array, mask, landmarks):
    write_image(geom.make_image(array), ds.image_path(case, modality))
    if mask is not None:
        write_image(geom.make_image(mask), ds.mask_path(case, modality))
    write_lmkreg_json(landmarks, ds.landmarks_path(case, modality))


def test_fingerprint_values_against_numpy_and_simpleitk(tmp_path, rng):
    """Per case: shape, spacing, canonical spacing (= SimpleITK's DICOMOrient to LPS), orientation,
    intensity statistics over the mask (or the non-zero voxels without one), landmark offsets
    from the image centre; and the per-modality summary."""
    from lmkreg.planning.fingerprint import FINGERPRINT_FILE, compute_fingerprint, save_fingerprint

    spec = DatasetSpec(name="Dataset031_Fp", modalities=["MR"], num_training=3)
    ds = Dataset.create(tmp_path / spec.name, spec)
    perm = np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])  # array x -> S, y -> L, z -> -P
    geoms = [ImageGeometry.create((10, 12, 14), (0.7, 1.1, 2.5), (3.0, -4.0, 5.0), rotation_direction((10, -5, 20))),
             ImageGeometry.create((9, 11, 13), (0.9, 0.6, 1.7), (-8.0, 2.0, 1.0),
                                  rotation_direction((4, 8, -6)) @ perm),
             ImageGeometry.create((8, 10, 12), (1.0, 1.2, 1.4), (0.0, 0.0, 0.0), np.eye(3))]
    truth = []
    for i, g in enumerate(geoms):
        arr = rng.uniform(1, 500, g.shape_zyx).astype(np.float32)
        arr[:2] = 0  # zeros: excluded from the non-zero region
        mask = None
        if i < 2:
            mask = np.zeros(g.shape_zyx, np.uint8)
            mask[3:7, 3:8, 4:10] = 1
        idx = rng.uniform(1, np.asarray(g.shape_zyx) - 2, (3, 3))
        image = g.make_image(np.zeros(g.shape_zyx, np.uint8))
        world = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in idx])
        lms = LandmarkSet(dict(zip(["apex", "bladder_neck", "posterior_median"], world)))
        if i == 2:
            lms.points["bladder_neck"] = None
        _write_case(ds, f"f{i}", "MR", g, arr, mask, lms)
        truth.append((g, arr, mask, lms))

    fp = compute_fingerprint(Dataset(ds.folder), workers=1)
    path = save_fingerprint(fp, tmp_path)
    assert path.name == FINGERPRINT_FILE and json.loads(path.read_text()) == json.loads(json.dumps(fp))
    cases = fp["modalities"]["MR"]["cases"]
    all_offsets = []
    for (g, arr, mask, lms), c in zip(truth, cases):
        image = sitk.ReadImage(str(ds.image_path(c["case"], "MR")))
        assert c["shape_zyx"] == list(g.shape_zyx)
        np.testing.assert_allclose(c["spacing_xyz"], g.spacing_xyz, rtol=1e-6)
        canon = sitk.DICOMOrient(image, "LPS")
        np.testing.assert_allclose(c["canonical_spacing_zyx"], canon.GetSpacing()[::-1], rtol=1e-6)
        np.testing.assert_allclose(c["extent_mm_zyx"], np.multiply(canon.GetSpacing(), canon.GetSize())[::-1],
                                   rtol=1e-6)
        assert c["orientation"] == _orientation_reference(image.GetDirection())
        region = (arr[mask > 0] if mask is not None else arr[arr != 0]).astype(np.float64)
        st = c["intensity"]
        assert st["mean"] == pytest.approx(region.mean(), rel=1e-5)
        assert st["std"] == pytest.approx(region.std(), rel=1e-4)
        assert st["percentile_00_5"] == pytest.approx(np.percentile(region, 0.5), rel=1e-5)
        assert st["percentile_99_5"] == pytest.approx(np.percentile(region, 99.5), rel=1e-5)
        centre = np.array(image.TransformContinuousIndexToPhysicalPoint(
            tuple((np.asarray(image.GetSize(), float) - 1) / 2)))
        for name in lms.names:
            if lms[name] is None:
                assert c["landmark_offsets_lps"][name] is None
            else:
                np.testing.assert_allclose(c["landmark_offsets_lps"][name], lms[name] - centre, atol=1e-4)
                all_offsets.append(lms[name] - centre)
    assert cases[1]["orientation"] != "LPS"  # the permuted case really is permuted
    s = fp["modalities"]["MR"]["summary"]
    canon_spacings = [sitk.DICOMOrient(sitk.ReadImage(str(ds.image_path(f"f{i}", "MR"))), "LPS").GetSpacing()[::-1]
                      for i in range(3)]
    np.testing.assert_allclose(s["median_spacing_zyx"], np.median(canon_spacings, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["landmark_offset_min_lps"], np.min(all_offsets, axis=0), atol=1e-4)
    np.testing.assert_allclose(s["landmark_offset_max_lps"], np.max(all_offsets, axis=0), atol=1e-4)
    assert s["landmarks_missing"] == {"apex": 0, "bladder_neck": 1, "posterior_median": 0}


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, -20, 25), (-35, 10, 40), (44, 0, 0)])
def test_canonical_spacing_equals_dicomorient_for_every_axis_order(angles):
    from lmkreg.planning.fingerprint import canonical_spacing_zyx
    import itertools

    for perm in itertools.permutations(range(3)):
        for signs in ((1, 1, 1), (-1, 1, -1)):
            d = np.zeros((3, 3))
            for col, (row, sg) in enumerate(zip(perm, signs)):
                d[row, col] = sg
            g = ImageGeometry.create((3, 4, 5), (0.5, 1.3, 2.9), (0, 0, 0), rotation_direction(angles) @ d)
            ref = sitk.DICOMOrient(g.make_image(np.zeros(g.shape_zyx, np.uint8)), "LPS").GetSpacing()[::-1]
            np.testing.assert_allclose(canonical_spacing_zyx(g), ref, err_msg=f"{angles} {perm} {signs}")


# ==== issue 3: preprocessing, splits, budget ======================================================

@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from toydata import make_toy_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget

    root = tmp_path_factory.mktemp("audit_pp")
    mp = pytest.MonkeyPatch()
    for var in ("raw", "preprocessed", "results"):
        (root / var).mkdir()
        mp.setenv(f"LMKREG_{var}", str(root / var))
    ds = make_toy_dataset(root / "raw", n_cases=6, dataset_id=17)
    out = plan_and_preprocess("17", Budget("cpu"), workers=1)
    yield ds, out, root
    mp.undo()


def test_preprocessed_mask_is_the_nearest_neighbour_of_the_original(preprocessed):
    """Every preprocessed mask voxel equals the original mask voxel SimpleITK finds at its world
    point (0 outside); the grid is canonical (identity direction)."""
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.preprocessing.storage import load_array

    ds, out, _ = preprocessed
    plans = Plans.load(out / PLANS_FILE)
    for modality in ("MR", "US"):
        folder = out / plans.configuration(modality).data_identifier
        for case in ds.cases("Tr", modality)[:2]:
            meta = json.loads((folder / f"{case}.json").read_text())
            assert meta["has_mask"]
            np.testing.assert_allclose(np.reshape(meta["geometry"]["direction"], (3, 3)), np.eye(3))
            got = load_array(folder / f"{case}_mask.b2nd")[0]
            assert got.shape == tuple(meta["geometry"]["shape_zyx"]) and set(np.unique(got)) <= {0, 1}
            original = sitk.ReadImage(str(ds.mask_path(case, modality)))
            src = sitk.GetArrayFromImage(original)
            grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in got.shape], indexing="ij"), -1)
            affine = np.array(meta["index_to_world"])
            world = grid.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
            expected = np.zeros(len(world), np.uint8)
            size = np.array(original.GetSize())
            for n, w in enumerate(world):
                ci = np.array(original.TransformPhysicalPointToContinuousIndex(tuple(w)))
                i = np.floor(ci + 0.5).astype(int)
                if np.all(i >= 0) and np.all(i < size):
                    expected[n] = src[i[2], i[1], i[0]]
            agree = np.mean(expected == got.ravel())
            assert agree > 0.999 and got.sum() > 50  # ties at exact half-voxels may round either way


def test_splits_file_has_five_seeded_folds_and_a_users_file_is_kept(preprocessed, capsys, monkeypatch):
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget
    from lmkreg.config.splits import SPLITS_FILE, make_splits

    ds, out, root = preprocessed
    for var in ("raw", "preprocessed", "results"):  # the module's folders, not this test's fresh ones
        monkeypatch.setenv(f"LMKREG_{var}", str(root / var))
    splits = json.loads((out / SPLITS_FILE).read_text())
    assert len(splits) == 5 and splits == make_splits(ds.cases("Tr"), 5)
    assert sorted(c for f in splits for c in f["val"]) == ds.cases("Tr")
    mine = [{"train": ds.cases("Tr")[:4], "val": ds.cases("Tr")[4:]}]
    (out / SPLITS_FILE).write_text(json.dumps(mine))
    plan_and_preprocess("17", Budget("cpu"), workers=1)
    assert json.loads((out / SPLITS_FILE).read_text()) == mine
    capsys.readouterr()


def test_fingerprint_and_plans_files_are_written_and_readable_by_people(preprocessed):
    from lmkreg.planning.fingerprint import FINGERPRINT_FILE
    from lmkreg.config.plans import PLANS_FILE

    _, out, _ = preprocessed
    fp = json.loads((out / FINGERPRINT_FILE).read_text())
    assert set(fp["modalities"]) == {"MR", "US"}
    text = (out / PLANS_FILE).read_text()
    assert "\n" in text.strip() and json.loads(text)["configurations"]["MR"]["normalization"]["scheme"] == "zscore"
    plans = json.loads(text)
    assert plans["configurations"]["US"]["normalization"]["scheme"] == "percentile_clip"
    # settings are plain JSON values a person can read and edit; the legacy "optimizer" key, which
    # nothing read, is no longer written (documentation/planning.md, "Training settings")
    assert plans["configurations"]["MR"]["training"]["bf16_autocast_cpu"] == "auto"
    assert "optimizer" not in plans["configurations"]["MR"]["training"]


def test_default_budget_is_cpu_without_cuda(monkeypatch):
    import torch

    from lmkreg.planning.planner import Budget

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Budget.default() == Budget("cpu")
    assert Budget.parse("11").gpu_memory_gb == 11 and Budget.parse("24GB").device == "cuda"
    with pytest.raises(ValueError, match="'cpu' or a GPU memory size"):
        Budget.parse("fast")


def test_thick_slice_mr_plan_uses_the_anisotropy_rule():
    """Median 4 x 0.5 x 0.5 mm with a 10th percentile of 3 mm slices: z target 3 mm, noted."""
    from lmkreg.planning.planner import Budget, plan_configuration

    summary = {"median_spacing_zyx": [4.0, 0.5, 0.5], "spacing_percentile_10_zyx": [3.0, 0.5, 0.5],
               "max_extent_mm_zyx": [100.0, 128.0, 128.0], "landmark_offset_min_lps": [-5, -5, -25],
               "landmark_offset_max_lps": [5, 15, 25], "intensity": {"percentile_00_5": 0.0, "percentile_99_5": 1.0}}
    conf = plan_configuration("MR", summary, ["a", "b", "c"], Budget.parse("24"), "Dataset001_X")
    assert any("anisotropic" in n for n in conf.notes)
    assert conf.spacing_zyx[0] / conf.spacing_zyx[1] == pytest.approx(3.0 / 0.5, rel=1e-6)
    assert conf.network.kernel_sizes[0][0] == 1  # the thick axis gets kernel 1 in the first stage
