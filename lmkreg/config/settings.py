"""Typed sections of ``plans.json`` that the trainer reads: ``configurations.NAME.training``.

Why typed: the trainer used to read a plain dict with a fallback at every read, so the defaults
lived in three places (planner, trainer, plans validator), keys nothing validated were read
(``min_steps``, ``lr_warmup_steps``...) and a misspelt key was silently replaced by its default.
Here every key the code reads is a field with its one default (the value an absent key means),
loading refuses unknown keys with their path and the nearest known name, and the planner builds
the same object and writes it back with ``to_dict``.  documentation/planning.md has the table.

Plain data and checks only (no torch): lmkreg.config must stay importable without lmkreg.training.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from lmkreg.config.augmentation import AUGMENTATION_PARAMETERS, AUGMENTATIONS, DEFAULT_AUGMENTATION, parameter_problem
from lmkreg.config.validation import Validator

# Accepted on load and ignored: planners before issue 28 wrote "optimizer": "Adam", which nothing
# read (the optimiser is always Adam, lmkreg.training.runtime.make_adam).  Never written again.
LEGACY_TRAINING_KEYS = ("optimizer",)

# the value of "min_steps" when a plan does not set it: the demo's 150-step runs missed by 1-12 mm,
# 500 steps met its targets (lmkreg.training.convergence)
DEFAULT_MIN_STEPS = 400

# number keys: (type, lowest allowed value); checked finite
_NUMBERS: dict[str, tuple[type, float]] = {
    "learning_rate": (float, 0.0), "weight_decay": (float, 0.0), "lambda1": (float, 0.0),
    "lambda2_variance": (float, 0.0), "lambda2_distance": (float, 0.0), "num_epochs": (int, 1),
    "iterations_per_epoch": (int, 1), "seed": (int, 0), "segmentation_weight": (float, 0.0),
    "min_steps": (int, 0), "lr_warmup_steps": (int, 0),
}


@dataclass(frozen=True)
class TrainingSettings:
    """``training`` of one configuration.  Each default is what an absent key means (plans
    written by older planners lack some keys); the planner writes its own choices explicitly
    (e.g. learning_rate 1e-3 on a CPU budget, weights_ema_decay 0.98)."""

    learning_rate: float = 1e-4  # Adam's rate at the start of the polynomial decay
    weight_decay: float = 0.0  # Adam's weight decay
    lambda1: float = 1.0  # weight of the L2 term of the DSNT loss ||P-G||_1 + lambda1 ||P-G||_2
    lambda2_variance: float = 0.0  # weight of the variance regulariser (LandmarkTrainer_Variance)
    lambda2_distance: float = 0.0  # weight of the distance regulariser (LandmarkTrainer_Distance)
    num_epochs: int = 100
    iterations_per_epoch: int = 50  # optimiser steps per epoch
    seed: int = 12345
    bf16_autocast_cpu: Union[bool, str] = "auto"  # true, false or "auto" (on when the CPU has native bf16)
    weights_ema_decay: float = 0.0  # exponential moving average of the weights; 0 = off
    augmentation: Optional[dict] = None  # overrides of DEFAULT_AUGMENTATION[kind]; None = the defaults
    segmentation_weight: Optional[float] = None  # *_Seg trainers; None = the trainer's default_segmentation_weight
    min_steps: int = DEFAULT_MIN_STEPS  # fewer optimiser steps: the run is reported as not fit for use
    lr_warmup_steps: int = 0  # linear warm-up of the learning rate over this many steps
    channels_last: bool = True  # channels-last 3D memory layout of training on the CPU
    expected_val_mre_mm: Optional[float] = None  # above this final validation MRE: not fit for use
    # keys given explicitly (loaded from a file or set by the planner): to_dict writes them even
    # when they equal the default, so a plans file reads back with the same keys
    given: frozenset = field(default=frozenset(), compare=False, repr=False)

    # ---- reading --------------------------------------------------------------------------

    def lambda2(self, regularizer: str) -> float:
        """Weight of the trainer's regulariser ("none", "variance" or "distance")."""
        return {"variance": self.lambda2_variance, "distance": self.lambda2_distance}.get(regularizer, 0.0)

    # ---- building and writing -------------------------------------------------------------

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The plan keys, in the order they are written."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "given")

    @classmethod
    def of(cls, **values: Any) -> "TrainingSettings":
        """Settings with `values` given explicitly (written by to_dict even when default)."""
        return cls(**values, given=frozenset(values))

    def with_changes(self, **values: Any) -> "TrainingSettings":
        """A copy with `values` set (and given)."""
        return dataclasses.replace(self, **values, given=self.given | frozenset(values))

    def without(self, *keys: str) -> "TrainingSettings":
        """A copy in which `keys` are absent (back to their defaults, not written)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in keys}
        return dataclasses.replace(self, **defaults, given=self.given - frozenset(keys))

    def to_dict(self) -> dict[str, Any]:
        """The plan's JSON object: every key that was given or differs from its default."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "given":
                continue
            value = getattr(self, f.name)
            if f.name in self.given or value != f.default:
                out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_json(cls, t: Any, where: str = "training", kind: str = "MR",
                  v: Optional[Validator] = None) -> "TrainingSettings":
        """Checked settings from a plan's ``training`` object (`where`: its dotted path; `kind`:
        the modality kind, "MR" or "US", whose augmentation defaults the overrides refine)."""
        v = v or Validator("plans.json")
        v.mapping(t, where)
        v.known_keys(t, cls.keys() + LEGACY_TRAINING_KEYS, where)
        values: dict[str, Any] = {}
        for key, (kind_of, lowest) in _NUMBERS.items():
            if key in t and not (key == "segmentation_weight" and t[key] is None):
                value = v.key(t, key, kind_of, where)
                if not (math.isfinite(value) and value >= lowest):
                    v.fail(f"{where}.{key}", f"must be a finite number >= {lowest:g}, got {value!r}")
                values[key] = kind_of(value)
        if "bf16_autocast_cpu" in t:
            if not (isinstance(t["bf16_autocast_cpu"], bool) or t["bf16_autocast_cpu"] == "auto"):
                v.fail(f"{where}.bf16_autocast_cpu", f'must be true, false or "auto", got {t["bf16_autocast_cpu"]!r}')
            values["bf16_autocast_cpu"] = t["bf16_autocast_cpu"]
        if "weights_ema_decay" in t:
            decay = v.key(t, "weights_ema_decay", float, where)
            if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
                v.fail(f"{where}.weights_ema_decay", f"must be a number from 0 (off) to below 1, got {decay!r}")
            values["weights_ema_decay"] = float(decay)
        if "channels_last" in t:
            values["channels_last"] = v.key(t, "channels_last", bool, where)
        if t.get("expected_val_mre_mm") is not None:
            mre = v.key(t, "expected_val_mre_mm", float, where)
            if not (math.isfinite(mre) and mre > 0):
                v.fail(f"{where}.expected_val_mre_mm", f"must be a finite number > 0 or null, got {mre!r}")
            values["expected_val_mre_mm"] = float(mre)
        if "augmentation" in t:
            if t["augmentation"] is not None:
                check_augmentation(v, v.key(t, "augmentation", dict, where), f"{where}.augmentation", kind)
            values["augmentation"] = copy.deepcopy(t["augmentation"])
        given = frozenset(k for k in t if k not in LEGACY_TRAINING_KEYS)
        return cls(**values, given=given)


def check_augmentation(v: Validator, aug: dict, where: str, kind: str) -> None:
    """training.augmentation: transform name -> parameters (merged over the per-kind defaults
    of lmkreg.config.augmentation.DEFAULT_AUGMENTATION) or null to switch it off.  Like
    augmentation_settings, it also accepts the parameters keyed by modality kind ("MR", "US")."""
    if aug and set(aug) <= set(DEFAULT_AUGMENTATION):
        if aug.get(kind) is not None:
            check_augmentation(v, v.key(aug, kind, dict, where), f"{where}.{kind}", kind)
        return
    for name, params in aug.items():
        key = f"{where}.{name}"
        if name not in AUGMENTATION_PARAMETERS:
            v.fail(key, f"is not a known augmentation; known: {', '.join(AUGMENTATIONS)}")
        if params is None:
            continue
        if not isinstance(params, dict):
            v.fail(key, f"must be an object of parameters or null (switched off), got {params!r}")
        known = AUGMENTATION_PARAMETERS[name]
        for p, value in params.items():
            if p not in known:
                v.fail(f"{key}.{p}", f"is not a parameter of {name}; known: {', '.join(known)}")
            problem = parameter_problem(known[p], value)
            if problem:
                v.fail(f"{key}.{p}", problem)
