"""Augmentation as data: the transform names, the parameters each accepts, and the default set
per modality kind, as stored in ``plans.json`` under ``training.augmentation``.

The transforms themselves (numpy/scipy code) live in lmkreg.training.augmentation, which looks
each name up in its registry; tests/test_config.py checks that every name here has a class
there whose fields are exactly these parameters, in this order, with defaults of these kinds.
Planning copies the defaults into the plans; loading plans checks hand-edited values against
the parameter kinds, without importing the transforms.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional

from lmkreg.errors import ConfigurationError

# What a parameter accepts (checked by parameter_problem):
#   "bool", "order" (spline order 0-5), "axis" (array axis 0-2), "probability" (a number in [0, 1]),
#   "non_negative" (a number >= 0), "number" (any finite number), "range" ([low, high], low <= high),
#   "positive_range" (a range of numbers > 0), "ranges3" (three ranges, one per axis z, y, x)
PARAMETER_KINDS = ("bool", "order", "axis", "probability", "non_negative", "number", "range", "positive_range",
                   "ranges3")

_INTENSITY = {"p": "probability", "keep_zero": "bool"}

# transform name -> {parameter: kind}; names in the order the transforms are applied, parameters
# in the order of the transform's fields (error messages list them so)
AUGMENTATION_PARAMETERS: dict[str, dict[str, str]] = {
    "spatial": {"rotation_deg": "ranges3", "scale": "positive_range", "translation_mm": "non_negative",
                "p_rotation": "probability", "p_scale": "probability", "p_translation": "probability",
                "isotropic_scale": "bool", "elastic_alpha_mm": "non_negative", "elastic_sigma_mm": "non_negative",
                "p_elastic": "probability", "order": "order", "cval": "number"},
    "mirror": {"p": "probability"},
    "sweep_cut": {"p": "probability", "beyond_mm": "range"},
    "speckle": {**_INTENSITY, "std": "range", "correlation_mm": "non_negative"},
    "acoustic_shadow": {**_INTENSITY, "attenuation": "range", "width_mm": "range", "height_mm": "range",
                        "edge_mm": "non_negative", "depth_axis": "axis", "probe_at_high_index": "bool"},
    "gaussian_blur": {**_INTENSITY, "sigma_mm": "range"},
    "brightness": {**_INTENSITY, "factor": "range"},
    "contrast": {**_INTENSITY, "factor": "range"},
    "gamma": {**_INTENSITY, "gamma": "range"},
    "gaussian_noise": {**_INTENSITY, "std": "range"},
    # smooth multiplicative field exp(strength * g), g a random quadratic polynomial with max |g| = 1
    "bias_field": {**_INTENSITY, "strength": "range"},
    # nnU-Net's intensity transforms, applied by batchgenerators (documentation/training.md)
    "nn_gaussian_noise": {**_INTENSITY, "variance": "range"},
    "nn_gaussian_blur": {**_INTENSITY, "sigma_voxels": "positive_range", "p_per_channel": "probability"},
    "nn_brightness": {**_INTENSITY, "factor": "positive_range"},
    "nn_contrast": {**_INTENSITY, "factor": "positive_range", "preserve_range": "bool"},
    "nn_low_resolution": {**_INTENSITY, "zoom": "positive_range", "p_per_channel": "probability"},
    "nn_gamma": {**_INTENSITY, "gamma": "positive_range", "p_inverted": "probability", "retain_stats": "bool"},
}
AUGMENTATIONS: tuple[str, ...] = tuple(AUGMENTATION_PARAMETERS)

# nnU-Net's intensity transforms are off by default in both kinds (nnunet_intensity_override
# switches them on); one definition, in AUGMENTATION_PARAMETERS' order, spread into each kind.
_NNUNET_INTENSITY_OFF: dict[str, None] = {name: None for name in AUGMENTATION_PARAMETERS if name.startswith("nn_")}

# Plain JSON-able defaults (stored in plans.json under training.augmentation).  Keys are applied
# in this order; a key set to null (None) is switched off.
DEFAULT_AUGMENTATION: dict[str, dict[str, Optional[dict[str, Any]]]] = {
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
        **_NNUNET_INTENSITY_OFF,
    },
    "US": {
        "spatial": {"rotation_deg": [[-15.0, 15.0], [-15.0, 15.0], [-30.0, 30.0]], "scale": [0.85, 1.15],
                    "translation_mm": 10.0, "p_rotation": 0.6, "p_scale": 0.5, "p_translation": 0.5,
                    "isotropic_scale": True, "elastic_alpha_mm": 0.0, "elastic_sigma_mm": 12.0, "p_elastic": 0.0},
        "mirror": {"p": 0.5},
        # a TRUS sweep that ends inside the gland (documentation/training.md, "Sweep cut")
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
        **_NNUNET_INTENSITY_OFF,
    },
}


# nnU-Net's (v1, nnUNetTrainerV2) intensity recipe with its probabilities, plus a coil-like bias
# field; `nnunet_intensity_override` swaps it in for lmkreg's own intensity transforms.  The two
# gamma transforms of nnU-Net (inverted p 0.1, plain p 0.3) are one entry: p 0.37 = 1 - 0.9 * 0.7,
# of which 27 % inverted.
NNUNET_INTENSITY_RECIPE: dict[str, dict[str, Any]] = {
    "bias_field": {"p": 0.3, "strength": [0.0, 0.4]},
    "nn_gaussian_noise": {"p": 0.1, "variance": [0.0, 0.1]},
    "nn_gaussian_blur": {"p": 0.2, "sigma_voxels": [0.5, 1.0], "p_per_channel": 0.5},
    "nn_brightness": {"p": 0.15, "factor": [0.75, 1.25]},
    "nn_contrast": {"p": 0.15, "factor": [0.75, 1.25], "preserve_range": True},
    "nn_low_resolution": {"p": 0.25, "zoom": [0.5, 1.0], "p_per_channel": 0.5},
    "nn_gamma": {"p": 0.37, "gamma": [0.7, 1.5], "p_inverted": 0.27, "retain_stats": True},
}
LMKREG_INTENSITY = ("gaussian_blur", "brightness", "contrast", "gamma", "gaussian_noise")


def nnunet_intensity_override(kind: str) -> dict[str, Optional[dict[str, Any]]]:
    """The training.augmentation override (plans.json) that replaces lmkreg's generic intensity
    transforms by the nnU-Net recipe; the spatial transform and the TRUS-specific ones (sweep
    cut, speckle, shadow) stay.  keep_zero follows the kind (ultrasound: 0 = outside the fan)."""
    if kind not in DEFAULT_AUGMENTATION:
        raise ConfigurationError(f"augmentation kind must be one of {sorted(DEFAULT_AUGMENTATION)}, got {kind!r}")
    keep_zero = kind == "US"
    out: dict[str, Optional[dict[str, Any]]] = {name: None for name in LMKREG_INTENSITY}
    out.update({name: {**params, "keep_zero": keep_zero} for name, params in NNUNET_INTENSITY_RECIPE.items()})
    return out


def augmentation_settings(kind: str, params: Optional[dict] = None) -> dict[str, Optional[dict[str, Any]]]:
    """The defaults for `kind` with `params` merged in per transform (a transform's given keys
    replace the default ones; None switches it off).  `params` may also be keyed by kind."""
    if kind not in DEFAULT_AUGMENTATION:
        raise ConfigurationError(f"augmentation kind must be one of {sorted(DEFAULT_AUGMENTATION)}, got {kind!r}")
    settings = copy.deepcopy(DEFAULT_AUGMENTATION[kind])
    if params and set(params) <= set(DEFAULT_AUGMENTATION):
        params = params.get(kind)
    for name, value in (params or {}).items():
        if name not in AUGMENTATION_PARAMETERS:
            raise ConfigurationError(f"unknown augmentation {name!r} in training.augmentation; "
                                     f"known: {', '.join(AUGMENTATIONS)}")
        if value is None:
            settings[name] = None
        elif not isinstance(value, dict):
            raise ConfigurationError(f"training.augmentation.{name} must be an object or null, got {value!r}")
        else:
            settings[name] = {**(settings[name] or {}), **value}
    return settings


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_range(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_is_number(e) for e in x) and x[0] <= x[1]


def parameter_problem(kind: str, value: Any) -> Optional[str]:
    """What is wrong with `value` for a parameter of `kind` (PARAMETER_KINDS), or None."""
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind in ("order", "axis"):
        if not (isinstance(value, int) and not isinstance(value, bool)):
            return f"must be an integer, got {value!r}"
        if kind == "order" and not 0 <= value <= 5:
            return f"must be a spline order 0-5, got {value}"
        if kind == "axis" and not 0 <= value <= 2:
            return f"must be an array axis 0, 1 or 2, got {value}"
        return None
    if kind in ("probability", "non_negative", "number"):
        if not _is_number(value):
            return f"must be a number, got {value!r}"
        if kind == "probability" and not 0 <= value <= 1:
            return f"is a probability and must be in [0, 1], got {value!r}"
        if kind != "number" and value < 0:
            return f"must not be negative, got {value!r}"
        return None
    if kind == "ranges3":
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_range(r) for r in value)):
            return f"must be 3 [low, high] ranges (low <= high), got {value!r}"
        return None
    if kind in ("range", "positive_range"):
        if not _is_range(value):
            return f"must be a [low, high] range of numbers with low <= high, got {value!r}"
        if kind == "positive_range" and value[0] <= 0:
            return f"must be a [low, high] range of positive numbers, got {value!r}"
        return None
    raise ValueError(f"unknown parameter kind {kind!r}; known: {', '.join(PARAMETER_KINDS)}")
