"""Fingerprint, plans, preprocessing and splits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from lmkreg.config.augmentation import DEFAULT_AUGMENTATION
from lmkreg.config.cost import step_cost
from lmkreg.config.network import UNetSpec
from lmkreg.config.plans import PLANS_FILE, Plans
from lmkreg.config.splits import SPLITS_FILE, load_or_create_splits, make_splits
from lmkreg.errors import ConfigurationError
from lmkreg.geometry import ImageGeometry
from lmkreg.geometry.spaces import apply_affine
from lmkreg.paths import preprocessed_root
from lmkreg.phantoms.presets import PRESETS as PHANTOM_PRESETS
from lmkreg.training.step_cost import main as cost_main, measure_cpu_step_times
from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
from lmkreg.run.plan_and_preprocess import main as plan_main
from lmkreg.planning.planner import (FOV_MARGIN_MM, Budget, coarsen, plan_configuration, target_spacing,
                                     topology)
from lmkreg.preprocessing.preprocessor import normalize
from lmkreg.preprocessing.storage import load_array
from lmkreg.training.augmentation import build_augmentation
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


@pytest.mark.parametrize("modality", ["MR", "US"])
def test_preprocessed_value_at_landmark_matches_original(planned, modality):
    ds, out, plans = planned
    conf = plans.configuration(modality)
    checked = 0
    for case in ds.cases("Tr", modality):
        meta = json.loads((out / conf.data_identifier / f"{case}.json").read_text())
        arr = load_array(out / conf.data_identifier / f"{case}.b2nd")[0]
        original = sitk.ReadImage(str(ds.image_path(case, modality)))
        raw = sitk.GetArrayFromImage(original).astype(np.float64)
        for world, voxel in zip(meta["landmarks_world_lps"], meta["landmarks_voxel_zyx"]):
            # independent reference: SimpleITK's linear interpolation of the *original* (oblique,
            # anisotropic) image at the world point, normalised as the plans say (numpy z-score
            # over the non-zero voxels for MR: prediction has no mask, so neither may training)
            value = original.EvaluateAtPhysicalPoint(tuple(world), sitk.sitkLinear)
            if conf.normalization.scheme == "zscore":
                fg = raw[raw != 0]
                expected = (value - fg.mean()) / fg.std()
                # the toy image is an affine function of the world position: exact reference too
                assert value == pytest.approx(ramp_value(np.array(world)), abs=1e-3)
            else:
                lo, hi = conf.normalization.lower, conf.normalization.upper
                expected = (value - lo) / (hi - lo)
                if not 0.02 < expected < 0.98:  # near a clip bound the clip's kink is interpolated
                    continue
            got = map_coordinates(arr, np.array(voxel)[:, None], order=1)[0]
            assert got == pytest.approx(expected, abs=1e-3)
            checked += 1
    assert checked >= len(ds.cases("Tr", modality))


def test_field_of_view_holds_every_training_landmark_with_the_margin(planned):
    ds, out, plans = planned
    for modality, conf in plans.configurations.items():
        spacing = np.asarray(conf.spacing_zyx)
        size = np.asarray(conf.input_size_zyx)
        for case in ds.cases("Tr", modality):
            meta = json.loads((out / conf.data_identifier / f"{case}.json").read_text())
            for v in meta["landmarks_voxel_zyx"]:
                v = np.asarray(v)
                # distance in mm from the landmark to the grid's outer voxel faces
                assert np.all((v + 0.5) * spacing >= FOV_MARGIN_MM - 1e-6)
                assert np.all((size - 0.5 - v) * spacing >= FOV_MARGIN_MM - 1e-6)


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
    (lambda d: d["configurations"]["MR"]["training"].__setitem__("learning_rate", "fast"),
     "configurations.MR.training.learning_rate"),
    (lambda d: d["configurations"]["US"]["training"]["augmentation"]["spatial"].__setitem__("scale", [1.2, 0.8]),
     "configurations.US.training.augmentation.spatial.scale"),
    (lambda d: d["configurations"]["MR"]["training"]["augmentation"]["gaussian_noise"].__setitem__("p", 1.5),
     "configurations.MR.training.augmentation.gaussian_noise.p"),
    (lambda d: d["configurations"]["US"]["training"]["augmentation"]["spatial"].__setitem__("rotation_deg", [[-5, 5]]),
     "configurations.US.training.augmentation.spatial.rotation_deg"),
    (lambda d: d["configurations"]["US"]["training"]["augmentation"]["speckle"].__setitem__("keep_zero", "yes"),
     "configurations.US.training.augmentation.speckle.keep_zero"),
    (lambda d: d["configurations"]["MR"]["training"]["augmentation"]["mirror"].__setitem__("probability", 0.5),
     "configurations.MR.training.augmentation.mirror.probability"),
    (lambda d: d["configurations"]["MR"]["training"]["augmentation"].__setitem__("elastic", {"p": 0.2}),
     "configurations.MR.training.augmentation.elastic"),
    (lambda d: d["configurations"]["MR"]["training"]["augmentation"].__setitem__("gamma", 0.3),
     "configurations.MR.training.augmentation.gamma"),
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


def test_plans_carry_the_augmentation_per_modality_kind(planned):
    _, out, plans = planned
    data = json.loads((out / PLANS_FILE).read_text())
    for modality, kind in (("MR", "MR"), ("US", "US")):
        aug = data["configurations"][modality]["training"]["augmentation"]
        assert aug == DEFAULT_AUGMENTATION[kind]
        # what the trainer builds from the plans is exactly the default pipeline of that kind
        assert build_augmentation(kind, plans.configuration(modality).training.augmentation) == \
            build_augmentation(kind)
    assert data["configurations"]["US"]["training"]["augmentation"]["speckle"] is not None
    assert data["configurations"]["MR"]["training"]["augmentation"]["speckle"] is None


def test_hand_edited_augmentation_is_what_training_uses(planned, tmp_path):
    _, out, _ = planned
    data = json.loads((out / PLANS_FILE).read_text())
    aug = data["configurations"]["US"]["training"]["augmentation"]
    aug["mirror"] = None  # switched off
    aug["spatial"]["translation_mm"] = 4
    aug["acoustic_shadow"]["p"] = 0.0
    edited = tmp_path / PLANS_FILE
    edited.write_text(json.dumps(data, indent=2))
    conf = Plans.load(edited).configuration("US")
    pipeline = build_augmentation("US", conf.training.augmentation)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert "MirrorLeftRight" not in names and len(names) == len(build_augmentation("US").transforms) - 1
    assert pipeline.transforms[0].translation_mm == 4
    assert next(t for t in pipeline.transforms if type(t).__name__ == "AcousticShadow").p == 0.0
    # a plans file written before the augmentation was planned still loads (defaults apply)
    del data["configurations"]["US"]["training"]["augmentation"]
    edited.write_text(json.dumps(data))
    training = Plans.load(edited).configuration("US").training
    assert training.augmentation is None and "augmentation" not in training.to_dict()


def test_estimated_and_measured_step_of_the_planned_network(planned, capsys):
    _, out, plans = planned
    conf = plans.configuration("MR")
    # one torch thread: two threads on a machine shared with other jobs stall each other
    times = measure_cpu_step_times(conf.network, conf.input_size_zyx, conf.batch_size, len(plans.landmarks),
                                   conf.spacing_zyx, repeats=1, threads=1)
    assert len(times) == 1 and times[0] > 0
    assert cost_main([str(out / PLANS_FILE), "--repeats", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "MR: input" in printed and "US: input" in printed and "estimated" in printed and "measured" in printed


def test_cli_plan_only_on_missing_dataset_fails_cleanly(capsys):
    assert plan_main(["-d", "42"]) == 2
    assert "no dataset with id 42" in capsys.readouterr().err


# ---- planning rules ----------------------------------------------------------------------

def _summary(spacing_zyx, extent_zyx, offset_min_lps, offset_max_lps):
    return {"median_spacing_zyx": list(spacing_zyx), "spacing_percentile_10_zyx": list(spacing_zyx),
            "max_extent_mm_zyx": list(extent_zyx), "landmark_offset_min_lps": list(offset_min_lps),
            "landmark_offset_max_lps": list(offset_max_lps),
            "intensity": {"percentile_00_5": 0.0, "percentile_99_5": 200.0}}


def _preset_summary(preset: str, modality: str) -> dict:
    """A fingerprint summary synthesised from a phantom preset's grids (no volumes generated).

    Landmark offsets from the image centre are those of the fingerprints of the generated
    datasets in documentation/planning.md (12 mu_regpro, 8 paper cases), rounded outwards."""
    p = PHANTOM_PRESETS[preset]
    size_xyz, spacing_xyz = (p.mr_size_xyz, p.mr_spacing_xyz) if modality == "MR" else (p.us_size_xyz, p.us_spacing_xyz)
    spacing_zyx = np.asarray(spacing_xyz[::-1], float)
    offsets = {("mu_regpro", "MR"): ((-2, -6, -26), (5, 19, 31)), ("paper", "MR"): ((-2, -6, -26), (5, 19, 31)),
               ("mu_regpro", "US"): ((-8, -14, -30), (6, 16, 26)), ("paper", "US"): ((-10, 4, -25), (8, 35, 26))}
    lo, hi = offsets[preset, modality]
    return _summary(spacing_zyx, spacing_zyx * np.asarray(size_xyz[::-1]), lo, hi)


PRESETS = {f"{preset}_{modality}": _preset_summary(preset, modality)
           for preset in ("mu_regpro", "paper") for modality in ("MR", "US")}
NAMES = ["apex", "bladder_neck", "posterior_median"]


def _plan(name: str, budget: Budget = Budget("cpu")):
    return plan_configuration(name.split("_")[-1], PRESETS[name], NAMES, budget, "Dataset001_X")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_fit_the_cpu_budget(name):
    conf = _plan(name)
    budget = Budget("cpu").max_step_seconds
    assert budget < 1.0 and conf.estimated_step_seconds <= budget
    spec = conf.network
    assert conf.estimated_step_seconds == pytest.approx(
        step_cost(spec, conf.input_size_zyx, 1, len(NAMES)).cpu_seconds(conf.batch_size), abs=1e-3)
    for n, f in zip(conf.input_size_zyx, spec.total_downsampling):
        assert n % f == 0
    # the field of view spans every landmark offset plus the margin on both sides
    s = PRESETS[name]
    spread_zyx = (np.asarray(s["landmark_offset_max_lps"]) - np.asarray(s["landmark_offset_min_lps"]))[::-1]
    assert np.all(np.asarray(conf.field_of_view_mm_zyx) >= spread_zyx + 2 * FOV_MARGIN_MM - 1e-6)
    assert conf.fov_offset_lps == pytest.approx(
        ((np.asarray(s["landmark_offset_max_lps"]) + np.asarray(s["landmark_offset_min_lps"])) / 2).tolist())
    # every preset is finer than the CPU budget allows: the plan coarsens and says so
    assert max(conf.spacing_zyx) > max(s["median_spacing_zyx"])
    assert any("coarsened" in n and "per step > 0.5 s" in n for n in conf.notes)


def test_presets_differ_where_their_spacings_differ():
    plans = {name: _plan(name) for name in PRESETS}
    mu_mr, paper_mr = plans["mu_regpro_MR"], plans["paper_MR"]
    # the paper's MR has slices twice as thick as its pixels; the plan keeps that anisotropy,
    # the isotropic muRegPro MR stays isotropic
    assert paper_mr.spacing_zyx[0] == pytest.approx(2 * paper_mr.spacing_zyx[1])
    assert paper_mr.spacing_zyx[1] == pytest.approx(paper_mr.spacing_zyx[2])
    assert np.ptp(mu_mr.spacing_zyx) == pytest.approx(0)
    assert paper_mr.spacing_zyx != mu_mr.spacing_zyx
    assert paper_mr.input_size_zyx != mu_mr.input_size_zyx
    # with 2:1 spacing every axis is pooled from the first stage on, and all kernels are 3
    assert paper_mr.network.strides[1] == (2, 2, 2)
    assert all(k == (3, 3, 3) for k in paper_mr.network.kernel_sizes)
    # the paper's 0.4 mm TRUS is coarsened by a larger factor than muRegPro's 0.8 mm TRUS
    mu_us, paper_us = plans["mu_regpro_US"], plans["paper_US"]
    assert np.ptp(paper_us.spacing_zyx) == pytest.approx(0) and np.ptp(mu_us.spacing_zyx) == pytest.approx(0)
    assert paper_us.spacing_zyx[0] / 0.4 > mu_us.spacing_zyx[0] / 0.8 > 1
    assert paper_us.fov_offset_lps != mu_us.fov_offset_lps


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gpu_budget_keeps_finer_spacing_and_larger_batch(name):
    cpu = _plan(name)
    gpu = _plan(name, Budget.parse("24"))
    assert max(gpu.spacing_zyx) < max(cpu.spacing_zyx)
    assert gpu.batch_size >= 4 and gpu.estimated_memory_gb <= 24
    assert gpu.network.features_per_stage[0] == 32 and cpu.network.features_per_stage[0] == 8
    small = _plan(name, Budget.parse("8"))
    assert small.estimated_memory_gb <= 8 and max(small.spacing_zyx) >= max(gpu.spacing_zyx)


def test_plans_of_both_kinds_carry_their_augmentation():
    for name in PRESETS:
        kind = name.split("_")[-1]
        assert _plan(name).training.augmentation == DEFAULT_AUGMENTATION[kind]


def test_anisotropy_rule():
    assert target_spacing([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == ([1.0, 1.0, 1.0], None)
    spacing, note = target_spacing([5.0, 0.5, 0.5], [3.5, 0.5, 0.5])
    assert spacing == [3.5, 0.5, 0.5] and "anisotropic" in note


def test_coarsen_fine_axes_first():
    assert coarsen([3.0, 1.0, 1.0]) == pytest.approx([3.0, 1.1, 1.1])
    assert coarsen([2.0, 1.0, 1.0]) == pytest.approx([2.2, 1.1, 1.1])


def test_topology_treats_spacings_equal_up_to_rounding_as_equal():
    # 1.6 read as float32 is 1.6000000238..., a hair more than twice 0.8: still pooled at once
    spec = topology([40, 80, 80], [float(np.float32(1.6)), 0.8, 0.8], 8, 128)
    assert spec.strides[1] == (2, 2, 2) and spec.kernel_sizes[0] == (3, 3, 3)
    assert coarsen([float(np.float32(1.6)), 0.8, 0.8]) == pytest.approx([1.76, 0.88, 0.88])


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
