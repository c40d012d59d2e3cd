"""lmkreg.config: the vocabulary planning, training and inference share, and the import rule
that keeps planning free of torch and of lmkreg.training."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmkreg.config.augmentation import (AUGMENTATION_PARAMETERS, AUGMENTATIONS, DEFAULT_AUGMENTATION,
                                        PARAMETER_KINDS, augmentation_settings, parameter_problem)
from lmkreg.config.modality import MODALITY_KINDS, modality_kind
from lmkreg.config.plans import Plans
from lmkreg.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]

# a value typical of each kind, and the kinds that accept it (worked out by hand)
PROBES = {"bool": True, "order": 3, "axis": 1, "probability": 0.5, "non_negative": 7.5, "number": -2.0,
          "range": [-1.0, 2.0], "positive_range": [0.5, 2.0], "ranges3": [[-1, 1], [0, 2], [3, 4]]}
ACCEPTS = {"bool": {"bool"}, "order": {"order", "non_negative", "number"},
           "axis": {"order", "axis", "probability", "non_negative", "number"},
           "probability": {"probability", "non_negative", "number"}, "non_negative": {"non_negative", "number"},
           "number": {"number"}, "range": {"range"}, "positive_range": {"range", "positive_range"},
           "ranges3": {"ranges3"}}


def _imported_after(*modules: str) -> list[str]:
    """Modules of torch and of lmkreg.training/inference loaded by importing `modules` in a
    fresh interpreter."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print('\\n'.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
            "'lmkreg.training', 'lmkreg.inference')))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_config_and_planning_import_neither_torch_nor_training():
    loaded = _imported_after("lmkreg.config.plans", "lmkreg.config.splits", "lmkreg.planning.planner",
                             "lmkreg.planning.stages", "lmkreg.planning.plan_and_preprocess", "lmkreg.planning.fingerprint",
                             "lmkreg.run.plan_and_preprocess")
    assert loaded == []
    # the check itself can fail: importing the training network does load both
    assert {"torch", "lmkreg.training.network"} <= set(_imported_after("lmkreg.training.network"))


def test_config_modules_import_no_other_layer():
    """lmkreg.config reads only lmkreg.errors and lmkreg.io.atomic besides itself (by its source)."""
    for path in sorted((REPO / "lmkreg" / "config").glob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and words[1].startswith("lmkreg"):
                assert words[1].startswith(("lmkreg.config", "lmkreg.errors", "lmkreg.io.atomic")), (path, line)


def test_every_augmentation_name_has_a_transform_with_exactly_its_parameters():
    from lmkreg.training.augmentation import TRANSFORMS

    assert list(TRANSFORMS) == list(AUGMENTATIONS)
    for name, cls in TRANSFORMS.items():
        fields = dataclasses.fields(cls)
        assert [f.name for f in fields] == list(AUGMENTATION_PARAMETERS[name]), name
        for f in fields:
            kind = AUGMENTATION_PARAMETERS[name][f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert parameter_problem(kind, default) is None, (name, f.name, kind, default)


def test_every_parameter_kind_refuses_the_values_of_the_others():
    assert set(PROBES) == set(PARAMETER_KINDS)
    for kind in PARAMETER_KINDS:
        for probe_kind, value in PROBES.items():
            accepted = parameter_problem(kind, value) is None
            assert accepted == (kind in ACCEPTS[probe_kind]), (kind, probe_kind, value)
    assert "probability" in parameter_problem("probability", 1.5)
    assert "negative" in parameter_problem("non_negative", -0.1)
    assert "positive" in parameter_problem("positive_range", [0.0, 1.0])
    assert "low <= high" in parameter_problem("range", [2.0, 1.0])
    assert "spline order" in parameter_problem("order", 6)
    assert "array axis" in parameter_problem("axis", 3)
    with pytest.raises(ValueError, match="unknown parameter kind"):
        parameter_problem("colour", 1)


def test_defaults_build_every_transform_with_their_values():
    from lmkreg.training.augmentation import TRANSFORMS, build_augmentation

    assert set(DEFAULT_AUGMENTATION) == set(MODALITY_KINDS)
    json.loads(json.dumps(DEFAULT_AUGMENTATION))  # storable in plans.json
    for kind, settings in DEFAULT_AUGMENTATION.items():
        assert list(settings) == list(AUGMENTATIONS)
        pipeline = build_augmentation(kind)
        on = [(n, p) for n, p in settings.items() if p is not None]
        assert [type(t) for t in pipeline.transforms] == [TRANSFORMS[n] for n, _ in on]
        for t, (name, params) in zip(pipeline.transforms, on):
            for key, value in params.items():
                assert getattr(t, key) == value, (kind, name, key)


def test_settings_merge_overrides_and_refuse_unknown_names():
    merged = augmentation_settings("US", {"mirror": None, "speckle": {"p": 0.9}})
    assert merged["mirror"] is None
    assert merged["speckle"] == {**DEFAULT_AUGMENTATION["US"]["speckle"], "p": 0.9}
    assert augmentation_settings("MR", {"MR": {"gamma": None}})["gamma"] is None
    with pytest.raises(ConfigurationError, match="unknown augmentation 'elastic'"):
        augmentation_settings("MR", {"elastic": {}})



# DEFAULT_AUGMENTATION written out by hand (as it stood before its nnU-Net entries were defined once
# for both kinds): the defaults are stored in every plans.json, so they must not drift silently.
_NN_OFF_LITERAL = {"nn_gaussian_noise": None, "nn_gaussian_blur": None, "nn_brightness": None, "nn_contrast": None,
                   "nn_low_resolution": None, "nn_gamma": None}
DEFAULT_AUGMENTATION_LITERAL = {
    "MR": {
        "spatial": {"rotation_deg": [[-10.0, 10.0], [-10.0, 10.0], [-15.0, 15.0]], "scale": [0.85, 1.15],
                    "translation_mm": 10.0, "p_rotation": 0.5, "p_scale": 0.5, "p_translation": 0.5,
                    "isotropic_scale": True, "elastic_alpha_mm": 0.0, "elastic_sigma_mm": 12.0, "p_elastic": 0.0},
        "mirror": {"p": 0.5},
        "sweep_cut": None,
        "speckle": None,
        "acoustic_shadow": None,
        "gaussian_blur": {"p": 0.15, "sigma_mm": [0.5, 1.5], "keep_zero": False},
        "brightness": {"p": 0.15, "factor": [0.75, 1.25], "keep_zero": False},
        "contrast": {"p": 0.15, "factor": [0.75, 1.25], "keep_zero": False},
        "gamma": {"p": 0.15, "gamma": [0.7, 1.5], "keep_zero": False},
        "gaussian_noise": {"p": 0.15, "std": [0.0, 0.1], "keep_zero": False},
        "bias_field": None,
        "nn_gaussian_noise": None,
        "nn_gaussian_blur": None,
        "nn_brightness": None,
        "nn_contrast": None,
        "nn_low_resolution": None,
        "nn_gamma": None,
    },
    "US": {
        "spatial": {"rotation_deg": [[-15.0, 15.0], [-15.0, 15.0], [-30.0, 30.0]], "scale": [0.85, 1.15],
                    "translation_mm": 10.0, "p_rotation": 0.6, "p_scale": 0.5, "p_translation": 0.5,
                    "isotropic_scale": True, "elastic_alpha_mm": 0.0, "elastic_sigma_mm": 12.0, "p_elastic": 0.0},
        "mirror": {"p": 0.5},
        "sweep_cut": {"p": 0.2, "beyond_mm": [-2.0, 6.0]},
        "speckle": {"p": 0.3, "std": [0.05, 0.25], "correlation_mm": 1.0, "keep_zero": True},
        "acoustic_shadow": {"p": 0.2, "attenuation": [0.3, 0.7], "width_mm": [4.0, 15.0],
                            "height_mm": [10.0, 40.0], "keep_zero": True},
        "gaussian_blur": {"p": 0.15, "sigma_mm": [0.5, 1.5], "keep_zero": True},
        "brightness": {"p": 0.15, "factor": [0.75, 1.25], "keep_zero": True},
        "contrast": {"p": 0.15, "factor": [0.75, 1.25], "keep_zero": True},
        "gamma": {"p": 0.15, "gamma": [0.7, 1.5], "keep_zero": True},
        "gaussian_noise": {"p": 0.15, "std": [0.0, 0.05], "keep_zero": True},
        "bias_field": None,
        "nn_gaussian_noise": None,
        "nn_gaussian_blur": None,
        "nn_brightness": None,
        "nn_contrast": None,
        "nn_low_resolution": None,
        "nn_gamma": None,
    },
}


def test_default_augmentation_equals_its_literal_copy():
    # == alone would take 10 for 10.0 and 1 for True and ignore the key order (the order the
    # transforms are applied); the JSON text as plans.json stores it tells them apart
    assert DEFAULT_AUGMENTATION == DEFAULT_AUGMENTATION_LITERAL
    assert json.dumps(DEFAULT_AUGMENTATION) == json.dumps(DEFAULT_AUGMENTATION_LITERAL)
    for kind in ("MR", "US"):
        assert {k: v for k, v in DEFAULT_AUGMENTATION[kind].items() if k.startswith("nn_")} == _NN_OFF_LITERAL
        assert augmentation_settings(kind) == DEFAULT_AUGMENTATION_LITERAL[kind]
    # the two kinds share no mutable object: changing one kind's settings leaves the other alone
    assert all(a is None or a is not b for a, b in zip(DEFAULT_AUGMENTATION["MR"].values(),
                                                       DEFAULT_AUGMENTATION["US"].values()))

@pytest.mark.parametrize("name,kind", [("MR", "MR"), ("T2", "MR"), ("US", "US"), ("TRUS", "US"),
                                       ("trus_bmode", "US"), ("3D-Ultrasound", "US"), ("CT", "MR")])
def test_modality_kind(name, kind):
    assert modality_kind(name) == kind


def _plans_json() -> dict:
    from lmkreg.planning.planner import Budget, plan_configuration

    summary = {"median_spacing_zyx": [2.0, 2.0, 2.0], "spacing_percentile_10_zyx": [2.0, 2.0, 2.0],
               "max_extent_mm_zyx": [40.0, 40.0, 40.0], "landmark_offset_min_lps": [-5.0, -5.0, -10.0],
               "landmark_offset_max_lps": [5.0, 5.0, 10.0], "intensity": {"percentile_00_5": 0, "percentile_99_5": 1}}
    conf = plan_configuration("US", summary, ["a", "b", "c"], Budget("cpu"), "D")
    return Plans("D", ["a", "b", "c"], Budget("cpu").to_json(), {"US": conf}).to_json()


def test_plans_refuse_a_non_positive_scale_naming_the_key():
    data = _plans_json()
    assert Plans.from_json(copy.deepcopy(data)).to_json() == data
    data["configurations"]["US"]["training"]["augmentation"]["spatial"]["scale"] = [0.0, 1.2]
    with pytest.raises(ConfigurationError, match=r"'configurations\.US\.training\.augmentation\.spatial\.scale' "
                                                 r"must be a \[low, high\] range of positive numbers"):
        Plans.from_json(data, "plans.json")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_plans_refuse_a_bf16_setting_other_than_true_false_or_auto(value):
    data = _plans_json()
    for ok in (True, False, "auto"):
        good = copy.deepcopy(data)
        good["configurations"]["US"]["training"]["bf16_autocast_cpu"] = ok
        assert Plans.from_json(good).configuration("US").training.bf16_autocast_cpu == ok
    data["configurations"]["US"]["training"]["bf16_autocast_cpu"] = value
    with pytest.raises(ConfigurationError, match=r"'configurations\.US\.training\.bf16_autocast_cpu' "
                                                 r'must be true, false or "auto"'):
        Plans.from_json(data, "plans.json")


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan"), "0.98"])
def test_plans_refuse_a_weight_average_decay_outside_0_to_1(value):
    data = _plans_json()
    for ok in (0.0, 0.98):
        good = copy.deepcopy(data)
        good["configurations"]["US"]["training"]["weights_ema_decay"] = ok
        assert Plans.from_json(good).configuration("US").training.weights_ema_decay == ok
    data["configurations"]["US"]["training"]["weights_ema_decay"] = value
    with pytest.raises(ConfigurationError, match=r"'configurations\.US\.training\.weights_ema_decay' must be"):
        Plans.from_json(data, "plans.json")
