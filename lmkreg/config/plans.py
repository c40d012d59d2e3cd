"""``plans.json``: the single source of truth for preprocessing, training and inference.

One file per dataset, one *configuration* per modality.  It is meant to be read and edited
by people, so loading validates every key and names the one that is wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lmkreg.config.augmentation import AUGMENTATION_PARAMETERS, AUGMENTATIONS, DEFAULT_AUGMENTATION, parameter_problem
from lmkreg.config.cost import step_cost
from lmkreg.config.modality import modality_kind
from lmkreg.config.network import UNetSpec
from lmkreg.errors import ConfigurationError
from lmkreg.io.atomic import atomic_write_json
import os

PathLike = Union[str, Path]
PLANS_FILE = "plans.json"
PLANS_VERSION = 1
NORMALIZATION_SCHEMES = ("zscore", "percentile_clip")
# "single": one grid at the image centre + offset (plans written before the cascade);
# "localizer": the whole image, anchored at the image centre; "refine": a crop anchored at the
# landmark centroid (true landmarks in training, the previous stage's prediction at inference)
STAGES = ("single", "localizer", "refine")
# optional numeric keys of a configuration's "training" dict: (type, lowest allowed value)
TRAINING_NUMBERS: dict[str, tuple[type, float]] = {
    "learning_rate": (float, 0.0), "weight_decay": (float, 0.0), "num_epochs": (int, 1),
    "iterations_per_epoch": (int, 1), "seed": (int, 0), "lambda1": (float, 0.0),
    "lambda2_variance": (float, 0.0), "lambda2_distance": (float, 0.0),
    "segmentation_weight": (float, 0.0),  # the *_Seg trainers' weight of the prostate loss
}


@dataclass
class Normalization:
    """How intensities are normalised.  zscore: per image, over the foreground (non-zero or
    mask).  percentile_clip: dataset percentiles [lower, upper] -> [0, 1], zeros stay zero."""

    scheme: str
    lower: Optional[float] = None
    upper: Optional[float] = None


@dataclass
class Configuration:
    """Everything needed to preprocess, train and predict one modality."""

    modality: str
    spacing_zyx: list[float]
    input_size_zyx: list[int]
    fov_offset_lps: list[float]
    normalization: Normalization
    network: UNetSpec
    batch_size: int
    training: dict[str, Any]
    data_identifier: str
    estimated_step_seconds: float = 0.0
    estimated_memory_gb: float = 0.0
    notes: list[str] = field(default_factory=list)
    stage: str = "single"
    previous_stage: Optional[str] = None  # refine: the configuration whose prediction anchors the crop
    crop_jitter_mm: float = 0.0  # refine: largest per-axis offset of the crop centre seen in training
    refine_iterations: int = 1  # refine: times the crop is re-centred on its own prediction

    @property
    def crop_margin_zyx(self) -> list[int]:
        """Voxels stored around a refine crop on each side, so training can offset the crop
        centre by up to crop_jitter_mm (0 for the other stages)."""
        if self.stage != "refine":
            return [0, 0, 0]
        return [int(math.ceil(self.crop_jitter_mm / s - 1e-9)) for s in self.spacing_zyx]

    @property
    def field_of_view_mm_zyx(self) -> list[float]:
        return [s * n for s, n in zip(self.spacing_zyx, self.input_size_zyx)]

    def to_json(self) -> dict:
        d = asdict(self)
        if self.stage == "single":  # plans without a cascade read exactly as before
            for key in ("stage", "previous_stage", "crop_jitter_mm", "refine_iterations"):
                d.pop(key)
        d["network"] = self.network.to_dict()
        d["field_of_view_mm_zyx"] = self.field_of_view_mm_zyx
        return d


@dataclass
class Plans:
    dataset_name: str
    landmarks: list[str]
    budget: dict[str, Any]
    configurations: dict[str, Configuration]
    plans_version: int = PLANS_VERSION

    def cascade(self, modality: str) -> Optional[tuple[str, str]]:
        """(localizer, refine) configuration names of `modality`'s cascade, or None."""
        for name, c in self.configurations.items():
            if c.modality == modality and c.stage == "refine":
                return c.previous_stage, name
        return None

    def configuration(self, modality: str) -> Configuration:
        if modality not in self.configurations:
            raise ConfigurationError(f"plans for {self.dataset_name} have no configuration {modality!r}; "
                                     f"available: {sorted(self.configurations)}")
        return self.configurations[modality]

    def to_json(self) -> dict:
        return {"plans_version": self.plans_version, "dataset_name": self.dataset_name,
                "landmarks": list(self.landmarks), "budget": dict(self.budget),
                "configurations": {m: c.to_json() for m, c in self.configurations.items()}}

    def save(self, path: PathLike) -> Path:
        atomic_write_json(path, self.to_json())
        return Path(path)

    @staticmethod
    def load(path: PathLike) -> "Plans":
        p = Path(path)
        if not p.is_file():
            raise ConfigurationError(f"{p}: plans file not found (run lmkreg_plan_and_preprocess first)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{p}: not valid JSON ({exc})") from None
        return Plans.from_json(data, p)

    @staticmethod
    def from_json(data: Any, source: PathLike = "plans.json") -> "Plans":
        v = _Validator(source)
        v.mapping(data, "")
        version = v.key(data, "plans_version", int)
        if version != PLANS_VERSION:
            v.fail("plans_version", f"is {version}, this lmkreg reads version {PLANS_VERSION}")
        names = v.key(data, "landmarks", list)
        if not names or not all(isinstance(n, str) for n in names):
            v.fail("landmarks", "must be a non-empty list of names")
        confs = v.key(data, "configurations", dict)
        if not confs:
            v.fail("configurations", "must hold at least one modality")
        configurations = {m: _configuration(v, c, f"configurations.{m}") for m, c in confs.items()}
        for m, c in configurations.items():
            if c.stage == "refine" and configurations.get(c.previous_stage) is None:
                v.fail(f"configurations.{m}.previous_stage", f"names {c.previous_stage!r}, which is not a "
                                                             f"configuration of these plans")
            if c.stage == "refine" and configurations[c.previous_stage].modality != c.modality:
                v.fail(f"configurations.{m}.previous_stage", f"names a configuration of modality "
                                                             f"{configurations[c.previous_stage].modality!r}, "
                                                             f"not {c.modality!r}")
        return Plans(dataset_name=v.key(data, "dataset_name", str), landmarks=list(names),
                     budget=v.key(data, "budget", dict), configurations=configurations, plans_version=version)


class _Validator:
    """Checks keys and types, failing with the dotted path of the offending key."""

    def __init__(self, source: PathLike):
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise ConfigurationError(f"{self.source}: key '{key}' {problem}")

    def mapping(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            self.fail(where or "<top level>", "must be a JSON object")

    def key(self, obj: dict, key: str, kind: type, where: str = "") -> Any:
        path = f"{where}.{key}" if where else key
        if key not in obj:
            self.fail(path, "is missing")
        value = obj[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            self.fail(path, f"must be of type {kind.__name__}, got {value!r}")
        return value

    def vector(self, obj: dict, key: str, where: str, kind: type = float, positive: bool = True) -> list:
        value = self.key(obj, key, list, where)
        good = len(value) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        if kind is int:
            good = good and all(isinstance(x, int) for x in value)
        if good and positive:
            good = all(x > 0 for x in value)
        if not good:
            self.fail(f"{where}.{key}", f"must be 3 {'positive ' if positive else ''}{kind.__name__}s "
                                        f"in (z, y, x) order, got {value!r}")
        return [kind(x) for x in value]


def _configuration(v: _Validator, c: Any, where: str) -> Configuration:
    v.mapping(c, where)
    norm = v.key(c, "normalization", dict, where)
    scheme = v.key(norm, "scheme", str, f"{where}.normalization")
    if scheme not in NORMALIZATION_SCHEMES:
        v.fail(f"{where}.normalization.scheme", f"must be one of {NORMALIZATION_SCHEMES}, got {scheme!r}")
    if scheme == "percentile_clip":
        lo = v.key(norm, "lower", float, f"{where}.normalization")
        hi = v.key(norm, "upper", float, f"{where}.normalization")
        if not hi > lo:
            v.fail(f"{where}.normalization.upper", f"must be greater than lower ({lo}), got {hi}")
    net = v.key(c, "network", dict, where)
    nw = f"{where}.network"
    feats = v.key(net, "features_per_stage", list, nw)
    strides = v.key(net, "strides", list, nw)
    kernels = v.key(net, "kernel_sizes", list, nw)
    if not feats or not all(isinstance(f, int) and f > 0 for f in feats):
        v.fail(f"{nw}.features_per_stage", "must be a non-empty list of positive integers")
    for key, lst in (("strides", strides), ("kernel_sizes", kernels)):
        if len(lst) != len(feats):
            v.fail(f"{nw}.{key}", f"must have one entry per stage ({len(feats)}), got {len(lst)}")
        for i, s in enumerate(lst):
            if not (isinstance(s, list) and len(s) == 3 and all(isinstance(x, int) and x > 0 for x in s)):
                v.fail(f"{nw}.{key}[{i}]", f"must be 3 positive integers, got {s!r}")
    if any(k % 2 == 0 for ks in kernels for k in ks):
        v.fail(f"{nw}.kernel_sizes", "must be odd")
    batch = v.key(c, "batch_size", int, where)
    if batch < 1:
        v.fail(f"{where}.batch_size", f"must be at least 1, got {batch}")
    spec = UNetSpec.from_dict(net)
    size = v.vector(c, "input_size_zyx", where, int)
    for axis, (n, f) in enumerate(zip(size, spec.total_downsampling)):
        if n % f:
            v.fail(f"{where}.input_size_zyx", f"axis {'zyx'[axis]} size {n} must be a multiple of the "
                                              f"network's total stride {f}")
    _check_limits(v, where, spec, size, batch)
    return Configuration(
        modality=v.key(c, "modality", str, where),
        spacing_zyx=v.vector(c, "spacing_zyx", where),
        input_size_zyx=size,
        fov_offset_lps=v.vector(c, "fov_offset_lps", where, float, positive=False),
        normalization=Normalization(scheme, norm.get("lower"), norm.get("upper")),
        network=spec,
        batch_size=batch,
        training=_training(v, v.key(c, "training", dict, where), f"{where}.training",
                           modality_kind(v.key(c, "modality", str, where))),
        data_identifier=v.key(c, "data_identifier", str, where),
        estimated_step_seconds=float(c.get("estimated_step_seconds", 0.0)),
        estimated_memory_gb=float(c.get("estimated_memory_gb", 0.0)),
        notes=list(c.get("notes", [])),
        **_stage_fields(v, c, where),
    )


def _check_limits(v: _Validator, where: str, spec: UNetSpec, size: list[int], batch: int,
                  max_batch: int = 1024, max_features: int = 2048) -> None:
    """Refuse hand-edited values that cannot run: a batch or feature count far beyond any real
    plan, or an input whose estimated memory (lmkreg.config.cost) exceeds this machine's.
    Otherwise prediction tries to allocate terabytes and training hangs."""

    if batch > max_batch:
        v.fail(f"{where}.batch_size", f"is {batch}; at most {max_batch} is accepted (planned values are 2-16)")
    worst = max(spec.features_per_stage)
    if worst > max_features:
        v.fail(f"{where}.network.features_per_stage", f"has {worst} features in a stage; at most "
                                                      f"{max_features} are accepted (planned: 8-320)")
    cost = step_cost(spec, size)
    try:  # physical memory of this machine
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        machine = float("inf")
    predict_gb = (cost.activations + cost.parameters) * 4 / 1e9  # one sample forward, float32
    train_gb = cost.gpu_memory_gb(batch, mixed_precision=False)
    try:  # imported only here, to ask for GPU memory: importing lmkreg.config must not load torch
        import torch  # lazy: importing lmkreg.config (and planning) must not load torch
        if torch.cuda.is_available():
            machine_train = max(machine, max(torch.cuda.get_device_properties(i).total_memory / 1e9
                                             for i in range(torch.cuda.device_count())))
        else:
            machine_train = machine
    except Exception:  # pragma: no cover - torch without a working CUDA runtime
        machine_train = machine
    if predict_gb > machine:
        v.fail(f"{where}.input_size_zyx", f"{size} needs an estimated {predict_gb:,.1f} GB to predict one image "
                                          f"(features {list(spec.features_per_stage)}); this machine has "
                                          f"{machine:,.1f} GB")
    if train_gb > machine_train:
        v.fail(f"{where}.batch_size", f"{batch} with input_size_zyx {size} needs an estimated {train_gb:,.1f} GB "
                                      f"to train; this machine has {machine_train:,.1f} GB")


def _stage_fields(v: _Validator, c: dict, where: str) -> dict:
    """The optional cascade keys (absent in plans written before the cascade: one stage)."""
    stage = c.get("stage", "single")
    if stage not in STAGES:
        v.fail(f"{where}.stage", f"must be one of {STAGES}, got {stage!r}")
    out: dict[str, Any] = {"stage": stage}
    if stage == "refine":
        out["previous_stage"] = v.key(c, "previous_stage", str, where)
        jitter = v.key(c, "crop_jitter_mm", float, where)
        if not (math.isfinite(jitter) and jitter >= 0):
            v.fail(f"{where}.crop_jitter_mm", f"must be a finite number >= 0, got {jitter!r}")
        out["crop_jitter_mm"] = float(jitter)
        iterations = v.key(c, "refine_iterations", int, where) if "refine_iterations" in c else 1
        if iterations < 1:
            v.fail(f"{where}.refine_iterations", f"must be at least 1, got {iterations}")
        out["refine_iterations"] = iterations
    return out


def _training(v: _Validator, t: dict, where: str, kind: str) -> dict:
    """Check the numbers the trainer reads and the augmentation parameters; returns `t`."""
    for key, (kind_of, lowest) in TRAINING_NUMBERS.items():
        if key in t:
            value = v.key(t, key, kind_of, where)
            if not (math.isfinite(value) and value >= lowest):
                v.fail(f"{where}.{key}", f"must be a finite number >= {lowest:g}, got {value!r}")
    if "bf16_autocast_cpu" in t and not (isinstance(t["bf16_autocast_cpu"], bool) or t["bf16_autocast_cpu"] == "auto"):
        v.fail(f"{where}.bf16_autocast_cpu", f'must be true, false or "auto", got {t["bf16_autocast_cpu"]!r}')
    if "weights_ema_decay" in t:
        decay = v.key(t, "weights_ema_decay", float, where)
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            v.fail(f"{where}.weights_ema_decay", f"must be a number from 0 (off) to below 1, got {decay!r}")
    if t.get("augmentation") is not None:
        _augmentation(v, v.key(t, "augmentation", dict, where), f"{where}.augmentation", kind)
    return t


def _augmentation(v: _Validator, aug: dict, where: str, kind: str) -> None:
    """training.augmentation: transform name -> parameters (merged over the per-kind defaults
    of lmkreg.config.augmentation.DEFAULT_AUGMENTATION) or null to switch it off.  Like
    augmentation_settings, it also accepts the parameters keyed by modality kind ("MR", "US")."""
    if aug and set(aug) <= set(DEFAULT_AUGMENTATION):
        if aug.get(kind) is not None:
            _augmentation(v, v.key(aug, kind, dict, where), f"{where}.{kind}", kind)
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
