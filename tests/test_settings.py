"""Typed plans settings (lmkreg.config.settings): the ``training`` section's keys, their one
default, unknown keys refused with their path, old plans files still loading, the planner's
output round-tripping, the stage enum and the refine stage's crop-offset hook."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lmkreg.config.plans import STAGES, Configuration, Plans, Stage
from lmkreg.config.settings import LEGACY_TRAINING_KEYS, TrainingSettings
from lmkreg.errors import ConfigurationError
from lmkreg.planning.planner import Budget, plan_configuration
from lmkreg.planning.stages import plan_dataset

EXAMPLES = sorted((Path(__file__).parent.parent / "documentation" / "plans_examples").glob("*.json"))
NAMES = ["a", "b", "c"]
SUMMARY = {"median_spacing_zyx": [2.0, 2.0, 2.0], "spacing_percentile_10_zyx": [2.0, 2.0, 2.0],
           "max_extent_mm_zyx": [60.0, 60.0, 60.0], "landmark_offset_min_lps": [-5.0, -5.0, -10.0],
           "landmark_offset_max_lps": [5.0, 5.0, 10.0], "intensity": {"percentile_00_5": 0, "percentile_99_5": 1}}


def _plans_json() -> dict:
    conf = plan_configuration("US", SUMMARY, NAMES, Budget("cpu"), "D")
    return Plans("D", NAMES, Budget("cpu").to_json(), {"US": conf}).to_json()


# ---- unknown keys and values -------------------------------------------------------------------

def test_an_unknown_training_key_is_refused_with_its_path_and_the_nearest_known_key():
    data = _plans_json()
    data["configurations"]["US"]["training"]["lr_warmup_step"] = 50
    with pytest.raises(ConfigurationError) as info:
        Plans.from_json(data, "plans.json")
    text = str(info.value)
    assert text.startswith("plans.json: key 'configurations.US.training.lr_warmup_step' is not a known key")
    assert "(did you mean lr_warmup_steps?)" in text
    data["configurations"]["US"]["training"].pop("lr_warmup_step")
    data["configurations"]["US"]["training"]["zzz"] = 1  # nothing near: no suggestion, the known keys
    with pytest.raises(ConfigurationError, match=r"'configurations\.US\.training\.zzz' is not a known key; "
                                                 r"known: .*augmentation.*weights_ema_decay") as info:
        Plans.from_json(data, "plans.json")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("where, key, near", [
    (("configurations", "US"), "crop_jiter_mm", "crop_jitter_mm"),
    (("configurations", "US"), "refine_iteration", "refine_iterations"),
    (("configurations", "US", "normalization"), "shceme", "scheme"),
    ((), "landmark", "landmarks"),
])
def test_an_unknown_key_of_the_other_levels_is_refused_with_its_path_and_the_nearest_known_key(where, key, near):
    data = _plans_json()
    obj = data
    for step in where:
        obj = obj[step]
    obj[key] = obj.get(near, 1)
    path = ".".join(where + (key,))
    with pytest.raises(ConfigurationError) as info:
        Plans.from_json(data, "plans.json")
    assert str(info.value).startswith(f"plans.json: key '{path}' is not a known key (did you mean {near}?); known: ")
    obj.pop(key)
    assert Plans.from_json(data, "plans.json").to_json() == data  # the same plan without it loads


def test_a_configuration_key_with_nothing_near_lists_the_known_keys():
    data = _plans_json()
    data["configurations"]["US"]["zzz"] = 1
    with pytest.raises(ConfigurationError, match=r"plans\.json: key 'configurations\.US\.zzz' is not a known key; "
                                                 r"known: batch_size, crop_jitter_mm, .*training$"):
        Plans.from_json(data, "plans.json")


def test_a_plan_the_planner_writes_to_disk_loads_with_every_stage(tmp_path):
    """Every key the planner writes, single, localizer and refine, is a known key."""
    from lmkreg.config.plans import CONFIGURATION_KEYS, PLANS_KEYS

    for budget in (Budget("cpu"), Budget("cuda", 11.0)):
        path = plan_dataset(_fingerprint(), budget, cascade=True).save(tmp_path / "plans.json")
        data = json.loads(path.read_text())
        assert set(data) == set(PLANS_KEYS)
        for name, conf in data["configurations"].items():
            stage_keys = {"stage", "previous_stage", "crop_jitter_mm", "refine_iterations"}
            assert set(conf) == set(CONFIGURATION_KEYS) - (stage_keys if conf.get("stage") is None else set())
        again = Plans.load(path)
        assert again.to_json() == data
        assert again.configuration("MR_refine").stage is Stage.REFINE
        assert again.configuration("MR_refine").previous_stage == "MR_localizer"


@pytest.mark.parametrize("key, value, problem", [
    ("min_steps", -1, "must be a finite number >= 0"), ("min_steps", 1.5, "must be of type int"),
    ("lr_warmup_steps", "50", "must be of type int"), ("channels_last", 1, "must be of type bool"),
    ("expected_val_mre_mm", 0.0, "must be a finite number > 0 or null"),
    ("expected_val_mre_mm", "2", "must be of type float"), ("num_epochs", 0, "must be a finite number >= 1"),
    ("segmentation_weight", -2.0, "must be a finite number >= 0"),
])
def test_keys_nothing_validated_before_are_type_and_range_checked(key, value, problem):
    data = _plans_json()
    data["configurations"]["US"]["training"][key] = value
    with pytest.raises(ConfigurationError, match=rf"plans\.json: key 'configurations\.US\.training\.{key}' {problem}"):
        Plans.from_json(data, "plans.json")


def test_the_legacy_optimizer_key_is_accepted_ignored_and_no_longer_written():
    assert LEGACY_TRAINING_KEYS == ("optimizer",)
    data = _plans_json()
    assert "optimizer" not in data["configurations"]["US"]["training"]  # the planner stopped writing it
    data["configurations"]["US"]["training"]["optimizer"] = "Adam"
    plans = Plans.from_json(copy.deepcopy(data))
    assert "optimizer" not in plans.to_json()["configurations"]["US"]["training"]
    data["configurations"]["US"]["training"].pop("optimizer")
    assert plans.to_json() == data


# ---- defaults ----------------------------------------------------------------------------------

def test_each_default_is_what_the_trainer_used_before():
    """The fallbacks the trainer had at each dict read (trainers.py before issue 28)."""
    d = TrainingSettings()
    assert (d.learning_rate, d.weight_decay, d.lambda1, d.lambda2_variance, d.lambda2_distance) == \
        (1e-4, 0.0, 1.0, 0.0, 0.0)
    assert (d.num_epochs, d.iterations_per_epoch, d.seed) == (100, 50, 12345)
    assert d.bf16_autocast_cpu == "auto" and d.weights_ema_decay == 0.0 and d.augmentation is None
    assert d.segmentation_weight is None and d.min_steps == 400 and d.lr_warmup_steps == 0
    assert d.channels_last is True and d.expected_val_mre_mm is None
    assert (d.lambda2("none"), d.lambda2("variance"), d.lambda2("distance")) == (0.0, 0.0, 0.0)
    assert d.to_dict() == {}  # nothing given, nothing written
    assert TrainingSettings.from_json({}) == d


def test_a_trainer_of_a_plan_without_training_keys_runs_with_the_old_fallbacks(tmp_path):
    from lmkreg.training.registry import find_trainer
    from lmkreg.training.runtime import cpu_bf16_setting

    plans = Plans.load(EXAMPLES[0])
    conf = plans.configuration("MR")
    conf.training = TrainingSettings()
    splits = [{"train": ["x"], "val": ["y"]}]
    t = find_trainer("LandmarkTrainer_Variance")(plans, "MR", 0, tmp_path, tmp_path / "m" / "fold_0", splits,
                                                 device="cpu")
    assert (t.num_epochs, t.iterations_per_epoch, t.seed, t.lambda1, t.lambda2) == (100, 50, 12345, 1.0, 0.0)
    assert (t.min_steps, t.lr_warmup_steps, t.expected_mre_mm) == (400, 0, None)
    assert t.cpu_bf16 == cpu_bf16_setting("auto")
    t.total_steps = 1000
    assert t.learning_rate(0) == pytest.approx(1e-4) and t.learning_rate(500) == pytest.approx(1e-4 * 0.5 ** 0.9)
    # absent segmentation_weight: each *_Seg trainer's own default, as before
    seg = find_trainer("LandmarkTrainer_Seg")(plans, "MR", 0, tmp_path, tmp_path / "s" / "fold_0", splits,
                                              device="cpu")
    heat = find_trainer("HeatmapMatchingTrainer_Seg")(plans, "MR", 0, tmp_path, tmp_path / "h" / "fold_0", splits,
                                                      device="cpu")
    assert (seg.segmentation_weight, heat.segmentation_weight) == (25.0, 2.0)
    conf.training = conf.training.with_changes(segmentation_weight=7.0, lambda2_variance=0.5)
    seg = find_trainer("LandmarkTrainer_Variance_Seg")(plans, "MR", 0, tmp_path, tmp_path / "s" / "fold_0", splits,
                                                       device="cpu")
    assert (seg.segmentation_weight, seg.lambda2) == (7.0, 0.5)
    # the trainer is given a configuration name; its modality is the configuration's
    assert (t.configuration, t.modality) == ("MR", "MR")


def test_absent_keys_keep_their_absent_meaning():
    """weights_ema_decay absent = off (the planner writes 0.98); augmentation absent = the kind's
    defaults; bf16 absent = "auto"."""
    data = _plans_json()
    t = data["configurations"]["US"]["training"]
    assert t["weights_ema_decay"] == 0.98 and t["bf16_autocast_cpu"] == "auto"
    for key in ("weights_ema_decay", "augmentation", "bf16_autocast_cpu"):
        t.pop(key)
    loaded = Plans.from_json(data).configuration("US").training
    assert loaded.weights_ema_decay == 0.0 and loaded.augmentation is None and loaded.bf16_autocast_cpu == "auto"
    assert loaded.to_dict() == t  # and they stay absent when written back


# ---- files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_old_plans_files_load_and_write_back_the_same_keys_but_optimizer(path):
    data = json.loads(path.read_text())
    plans = Plans.load(path)
    out = plans.to_json()
    for name, conf in data["configurations"].items():
        expected = {k: v for k, v in conf["training"].items() if k != "optimizer"}
        assert out["configurations"][name]["training"] == expected
        assert conf["training"].get("optimizer") == "Adam"
        t = plans.configuration(name).training
        assert t.learning_rate == 1e-3 and t.num_epochs == 100 and t.weights_ema_decay == 0.0
        assert plans.configuration(name).stage is Stage.SINGLE


def _fingerprint() -> dict:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):  # gland centres spread 50 mm: the planner plans a cascade
        centre = np.array([-25.0 + 10 * i, 0.0, 0.0])
        cases.append({"landmark_offsets_lps": {n: (centre + rng.normal(0, 5, 3)).tolist() for n in NAMES}})
    summary = dict(SUMMARY, landmark_offset_min_lps=[-40.0, -10.0, -10.0], landmark_offset_max_lps=[40.0, 10.0, 10.0])
    return {"dataset_name": "Dataset001_X", "landmarks": NAMES,
            "modalities": {m: {"summary": summary, "cases": cases} for m in ("MR", "US")}}


@pytest.mark.parametrize("budget", [Budget("cpu"), Budget("cuda", 11.0)], ids=["cpu", "gpu"])
def test_the_planner_output_round_trips_through_the_typed_settings(budget):
    plans = plan_dataset(_fingerprint(), budget, cascade=True)
    assert {c.stage for c in plans.configurations.values()} == set(Stage)
    data = plans.to_json()
    json.dumps(data)  # plain JSON
    again = Plans.from_json(copy.deepcopy(data))
    assert again.to_json() == data
    for name, conf in plans.configurations.items():
        assert again.configuration(name).training == conf.training
        keys = set(data["configurations"][name]["training"])
        assert keys == {"learning_rate", "weight_decay", "lambda1", "lambda2_variance", "lambda2_distance",
                        "num_epochs", "iterations_per_epoch", "seed", "bf16_autocast_cpu", "weights_ema_decay",
                        "augmentation"}
    loc, ref = plans.configuration("US_localizer"), plans.configuration("US_refine")
    assert loc.training.augmentation["spatial"]["p_translation"] == 0.8
    assert ref.training.augmentation["spatial"]["p_translation"] == 0.0
    assert plans.configuration("US").training.augmentation["spatial"]["p_translation"] == 0.5
    assert data["configurations"]["US_refine"]["stage"] == "refine"


# ---- the stage ---------------------------------------------------------------------------------

def test_the_stage_is_an_enum_that_reads_and_writes_as_its_string():
    assert STAGES == ("single", "localizer", "refine")
    assert Stage.REFINE == "refine" and f"{Stage.LOCALIZER}" == "localizer" and str(Stage.SINGLE) == "single"
    assert json.dumps({"stage": Stage.REFINE}) == '{"stage": "refine"}'
    conf = plan_configuration("MR", SUMMARY, NAMES, Budget("cpu"), "D")
    assert conf.stage is Stage.SINGLE
    import dataclasses
    refine = dataclasses.replace(conf, stage="refine", previous_stage="MR", crop_jitter_mm=4.0)
    assert refine.stage is Stage.REFINE and refine.crop_margin_zyx == [2, 2, 2]
    data = _plans_json()
    data["configurations"]["US"]["stage"] = "refiner"
    with pytest.raises(ConfigurationError, match=r"'configurations\.US\.stage' must be one of"):
        Plans.from_json(data, "plans.json")


def test_a_configuration_built_by_hand_from_a_training_dict_gets_checked_settings():
    conf = plan_configuration("MR", SUMMARY, NAMES, Budget("cpu"), "D")
    fields = {f: getattr(conf, f) for f in Configuration.__dataclass_fields__}
    built = Configuration(**{**fields, "training": {"learning_rate": 2e-3, "min_steps": 10}})
    assert built.training == TrainingSettings(learning_rate=2e-3, min_steps=10)
    assert built.training.to_dict() == {"learning_rate": 2e-3, "min_steps": 10}
    with pytest.raises(ConfigurationError, match=r"'training\.min_step' is not a known key \(did you mean min_steps\?\)"):
        Configuration(**{**fields, "training": {"min_step": 10}})


def test_the_refine_stage_hook_places_the_crops_as_refine_crop_offsets_does(tmp_path):
    """The hook the trainer calls (no replaced method) gives the offsets of refine_crop_offsets
    and hands them to the training data; other stages get a hook that does nothing."""
    from test_cascade_training import NAMES as CASCADE_NAMES, _fake_files

    from lmkreg.training.stage_offsets import RefineCropOffsetsHook, StageHook, refine_crop_offsets, stage_hook

    errors = {"c0": np.array([2.0, -3.0, 1.0]), "c1": np.array([-1.5, 0.5, 4.0]), "c2": np.array([0.3, 0.2, -0.4]),
              "c4": np.array([-2.5, 2.5, 0.0]), "c5": np.array([1.0, 1.0, 1.0])}
    conf, splits, data, refine, cases, _, _ = _fake_files(tmp_path, errors)
    hook = stage_hook(conf, refine, splits)
    assert type(hook) is RefineCropOffsetsHook
    assert type(stage_hook(SimpleNamespace(stage=Stage.LOCALIZER), refine, splits)) is StageHook
    assert type(stage_hook(SimpleNamespace(stage="single"), refine, splits)) is StageHook
    lines = []
    trainer = SimpleNamespace(conf=conf, configuration="MR_refine", names=CASCADE_NAMES, data_folder=data,
                              train_cases=cases, train_data=SimpleNamespace(crop_offsets=None),
                              log=SimpleNamespace(write=lines.append, echo=True), output_folder=refine / "fold_0")
    hook.prepare(trainer)
    expected = refine_crop_offsets(conf, "MR_refine", CASCADE_NAMES, splits, refine, data, cases)
    assert trainer.refine_crop_offsets is trainer.train_data.crop_offsets is hook.offsets
    assert hook.offsets.source == expected.source == "measured"
    for case in cases:
        got, want = hook.offsets.cases[case], expected.cases[case]
        assert (got.error_world is None) == (want.error_world is None)
        if want.error_world is not None:
            assert np.allclose(got.offset_voxels(got.error_world), want.offset_voxels(want.error_world))
    assert lines == expected.describe()
    summary = {"mre_mm": 1.0}
    hook.finish(trainer, summary)
    assert summary["refine_crop_offsets"]["source"] == "measured"
    assert json.loads((refine / "fold_0" / "refine_crop_offsets.json").read_text())["source"] == "measured"
