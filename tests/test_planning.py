"""Fingerprint, plans, preprocessing and splits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from lmkreg.errors import ConfigurationError
from lmkreg.geometry import ImageGeometry
from lmkreg.geometry.spaces import apply_affine
from lmkreg.paths import preprocessed_root
from lmkreg.planning.plan_and_preprocess import main as plan_main, plan_and_preprocess
from lmkreg.planning.planner import Budget, coarsen, plan_configuration, target_spacing, topology
from lmkreg.planning.plans import PLANS_FILE, Plans
from lmkreg.planning.splits import SPLITS_FILE, load_or_create_splits, make_splits
from lmkreg.preprocessing.storage import load_array
from toydata import make_toy_dataset, ramp_value


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A toy dataset (oblique, anisotropic) planned and preprocessed once for this module."""
    root = tmp_path_factory.mktemp("planned")
    mp = pytest.MonkeyPatch()
    for var in ("raw", "preprocessed", "results"):
        (root / var).mkdir()
        mp.setenv(f"LMKREG_{var}", str(root / var))
    ds = make_toy_dataset(root / "raw", n_cases=6)
    out = plan_and_preprocess(str(ds.spec.dataset_id), Budget("cpu"), workers=1)
    yield ds, out, Plans.load(out / PLANS_FILE)
    mp.undo()


def test_landmark_world_to_preprocessed_voxel_and_back(planned):
    ds, out, plans = planned
    for modality in ("MR", "US"):
        conf = plans.configuration(modality)
        for case in ds.cases("Tr", modality):
            meta = json.loads((out / conf.data_identifier / f"{case}.json").read_text())
            world = np.array(json.loads(ds.landmarks_path(case, modality).read_text())["landmarks"]["apex"])
            voxel = np.array(meta["landmarks_voxel_zyx"][0])
            back = apply_affine(np.array(meta["index_to_world"]), voxel)
            assert np.linalg.norm(back - world) < 1e-4
            # the stored affine is SimpleITK's mapping of the stored grid
            g = ImageGeometry.from_json(meta["geometry"])
            ref = g.make_image(np.zeros(g.shape_zyx, np.uint8)).TransformContinuousIndexToPhysicalPoint(
                tuple(float(v) for v in voxel[::-1]))
            assert np.linalg.norm(np.array(ref) - world) < 1e-4


def test_preprocessed_value_at_landmark_matches_original(planned):
    ds, out, plans = planned
    conf = plans.configuration("MR")
    for case in ds.cases("Tr", "MR"):
        meta = json.loads((out / conf.data_identifier / f"{case}.json").read_text())
        arr = load_array(out / conf.data_identifier / f"{case}.b2nd")[0]
        # independent reference: the analytic image value, z-scored with numpy over the non-zero
        # voxels (not the mask: prediction has no mask, so preprocessing must not use it)
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.image_path(case, "MR")))).astype(np.float64)
        fg = raw[raw != 0]
        for world, voxel in zip(meta["landmarks_world_lps"], meta["landmarks_voxel_zyx"]):
            expected = (ramp_value(np.array(world)) - fg.mean()) / fg.std()
            got = map_coordinates(arr, np.array(voxel)[:, None], order=1)[0]
            assert got == pytest.approx(expected, abs=1e-3)


def test_us_normalization_keeps_zero_and_clips(planned):
    ds, out, plans = planned
    conf = plans.configuration("US")
    assert conf.normalization.scheme == "percentile_clip"
    arr = load_array(out / conf.data_identifier / f"{ds.cases()[0]}.b2nd")
    assert arr.min() >= 0 and arr.max() <= 1
    assert np.mean(arr == 0) > 0  # padding outside the image is exactly zero


def test_plans_describe_grid_and_preprocessed_arrays_follow_it(planned):
    ds, out, plans = planned
    for modality, conf in plans.configurations.items():
        arr = load_array(out / conf.data_identifier / f"{ds.cases()[0]}.b2nd")
        assert arr.shape == (1, *conf.input_size_zyx)
        for n, f in zip(conf.input_size_zyx, conf.network.total_downsampling):
            assert n % f == 0
        # every training landmark lies inside the planned field of view
        for case in ds.cases("Tr", modality):
            meta = json.loads((out / conf.data_identifier / f"{case}.json").read_text())
            assert all(meta["landmarks_inside"])
        assert conf.estimated_step_seconds <= Budget("cpu").max_step_seconds


def test_rerun_skips_up_to_date_cases(planned, capsys, monkeypatch):
    ds, out, plans = planned
    monkeypatch.setenv("LMKREG_raw", str(ds.folder.parent))
    monkeypatch.setenv("LMKREG_preprocessed", str(out.parent))
    before = {p: p.stat().st_mtime_ns for p in (out / "lmkregPlans_MR").iterdir()}
    plan_and_preprocess(str(ds.spec.dataset_id), Budget("cpu"), workers=1)
    assert "0 case(s) preprocessed, 6 already up to date" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (out / "lmkregPlans_MR").iterdir()}


@pytest.mark.parametrize("edit,key", [
    (lambda d: d["configurations"]["MR"].pop("batch_size"), "configurations.MR.batch_size"),
    (lambda d: d["configurations"]["US"].__setitem__("spacing_zyx", [1.0, -1.0, 1.0]), "configurations.US.spacing_zyx"),
    (lambda d: d["configurations"]["MR"]["normalization"].__setitem__("scheme", "minmax"),
     "configurations.MR.normalization.scheme"),
    (lambda d: d["configurations"]["MR"]["network"]["strides"].pop(), "configurations.MR.network.strides"),
    (lambda d: d["configurations"]["MR"].__setitem__("input_size_zyx", [33, 32, 32]), "configurations.MR.input_size_zyx"),
    (lambda d: d.pop("landmarks"), "landmarks"),
])
def test_hand_broken_plans_name_the_key(planned, tmp_path, edit, key):
    _, out, _ = planned
    data = json.loads((out / PLANS_FILE).read_text())
    edit(data)
    broken = tmp_path / PLANS_FILE
    broken.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError) as info:
        Plans.load(broken)
    assert f"'{key}'" in str(info.value) and str(broken) in str(info.value)


def test_cli_plan_only_on_missing_dataset_fails_cleanly(capsys):
    assert plan_main(["-d", "42"]) == 2
    assert "no dataset with id 42" in capsys.readouterr().err


# ---- planning rules ----------------------------------------------------------------------

def _summary(spacing_zyx, extent_zyx, spread_lps=(50.0, 40.0, 45.0)):
    half = np.asarray(spread_lps) / 2
    return {"median_spacing_zyx": list(spacing_zyx), "spacing_percentile_10_zyx": list(spacing_zyx),
            "max_extent_mm_zyx": list(extent_zyx), "landmark_offset_min_lps": (-half).tolist(),
            "landmark_offset_max_lps": half.tolist(), "intensity": {"percentile_00_5": 0.0, "percentile_99_5": 200.0}}


PRESETS = {  # grids of the two phantom presets (array (z, y, x) spacing and extent in mm)
    "mu_regpro_MR": _summary((0.8, 0.8, 0.8), (128 * 0.8, 128 * 0.8, 120 * 0.8)),
    "paper_MR": _summary((1.0, 0.5, 0.5), (128 * 1.0, 256 * 0.5, 256 * 0.5)),
    "mu_regpro_US": _summary((0.8, 0.8, 0.8), (88 * 0.8, 118 * 0.8, 81 * 0.8)),
    "paper_US": _summary((0.4, 0.4, 0.4), (256 * 0.4,) * 3),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_fit_the_cpu_budget(name):
    conf = plan_configuration(name.split("_")[-1], PRESETS[name], ["a", "b", "c"], Budget("cpu"), "Dataset001_X")
    assert conf.estimated_step_seconds <= Budget("cpu").max_step_seconds
    fov = np.asarray(conf.field_of_view_mm_zyx)
    assert np.all(fov >= np.minimum(np.array([45.0, 40.0, 50.0]) + 30, PRESETS[name]["max_extent_mm_zyx"]) - 1e-6)


def test_presets_differ_where_their_spacings_differ():
    mu = plan_configuration("MR", PRESETS["mu_regpro_MR"], ["a", "b", "c"], Budget("cpu"), "Dataset001_X")
    paper = plan_configuration("MR", PRESETS["paper_MR"], ["a", "b", "c"], Budget("cpu"), "Dataset001_X")
    # the paper's MR has slices twice as thick as its pixels; the plan keeps that anisotropy
    assert paper.spacing_zyx[0] == pytest.approx(2 * paper.spacing_zyx[1])
    assert mu.spacing_zyx[0] == pytest.approx(mu.spacing_zyx[1])
    assert paper.spacing_zyx != mu.spacing_zyx
    assert any("coarsened" in n for n in paper.notes)


def test_gpu_budget_keeps_finer_spacing_and_larger_batch():
    cpu = plan_configuration("MR", PRESETS["paper_MR"], ["a", "b", "c"], Budget("cpu"), "Dataset001_X")
    gpu = plan_configuration("MR", PRESETS["paper_MR"], ["a", "b", "c"], Budget.parse("24"), "Dataset001_X")
    assert max(gpu.spacing_zyx) < max(cpu.spacing_zyx)
    assert gpu.batch_size >= 4 and gpu.estimated_memory_gb <= 24


def test_anisotropy_rule():
    assert target_spacing([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == ([1.0, 1.0, 1.0], None)
    spacing, note = target_spacing([5.0, 0.5, 0.5], [3.5, 0.5, 0.5])
    assert spacing == [3.5, 0.5, 0.5] and "anisotropic" in note


def test_coarsen_fine_axes_first():
    assert coarsen([3.0, 1.0, 1.0]) == pytest.approx([3.0, 1.1, 1.1])
    assert coarsen([2.0, 1.0, 1.0]) == pytest.approx([2.2, 1.1, 1.1])


def test_topology_pools_thick_axis_later():
    spec = topology([24, 128, 128], [3.0, 0.75, 0.75], 8, 128)
    assert spec.strides[1] == (1, 2, 2)  # z is 4x coarser: not pooled at first
    assert spec.kernel_sizes[0] == (1, 3, 3)
    assert spec.total_downsampling[1] == spec.total_downsampling[2] > spec.total_downsampling[0]


# ---- splits --------------------------------------------------------------------------------

def test_splits_cover_every_case_once():
    cases = [f"c{i}" for i in range(13)]
    splits = make_splits(cases, 5, seed=3)
    val = [c for f in splits for c in f["val"]]
    assert sorted(val) == sorted(cases)
    for f in splits:
        assert set(f["train"]) == set(cases) - set(f["val"])
    assert make_splits(cases, 5, seed=3) == splits and make_splits(cases, 5, seed=4) != splits


def test_fewer_cases_than_folds_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="3 training case"):
        make_splits(["a", "b", "c"], 5)


def test_user_splits_are_reused_and_checked(tmp_path):
    mine = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["c"], "val": ["a", "b"]}]
    (tmp_path / SPLITS_FILE).write_text(json.dumps(mine))
    assert load_or_create_splits(tmp_path, ["a", "b", "c"]) == mine
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ["a", "zz"], "val": ["c"]}]))
    with pytest.raises(ConfigurationError, match="zz"):
        load_or_create_splits(tmp_path, ["a", "b", "c"])
