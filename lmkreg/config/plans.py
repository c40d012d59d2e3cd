"""``plans.json``: the single source of truth for preprocessing, training and inference.

One file per dataset, one *configuration* per modality.  It is meant to be read and edited
by people, so loading validates every key and names the one that is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from lmkreg.config.cost import step_cost
from lmkreg.config.modality import modality_kind
from lmkreg.config.network import UNetSpec
from lmkreg.config.settings import TrainingSettings
from lmkreg.config.validation import Validator as _Validator
from lmkreg.errors import ConfigurationError
from lmkreg.io.atomic import atomic_write_json
import os

PathLike = Union[str, Path]
PLANS_FILE = "plans.json"
PLANS_VERSION = 1
NORMALIZATION_SCHEMES = ("zscore", "percentile_clip")


class Stage(str, Enum):
    """A configuration's place in a cascade, as the plans' ``stage`` key spells it.  A str
    subclass: it is written to JSON as the plain string and compares equal to it.

    SINGLE: one grid at the image centre + offset (plans written before the cascade);
    LOCALIZER: the whole image, anchored at the image centre; REFINE: a crop anchored at the
    landmark centroid (true landmarks in training, the previous stage's prediction at inference)."""

    SINGLE = "single"
    LOCALIZER = "localizer"
    REFINE = "refine"

    def __str__(self) -> str:  # "refine", not "Stage.REFINE", in messages and f-strings
        return self.value

    __format__ = str.__format__


STAGES = tuple(s.value for s in Stage)


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
    training: TrainingSettings
    data_identifier: str
    estimated_step_seconds: float = 0.0
    estimated_memory_gb: float = 0.0
    notes: list[str] = field(default_factory=list)
    stage: Stage = Stage.SINGLE
    previous_stage: Optional[str] = None  # refine: the configuration whose prediction anchors the crop
    crop_jitter_mm: float = 0.0  # refine: largest per-axis offset of the crop centre seen in training
    refine_iterations: int = 1  # refine: times the crop is re-centred on its own prediction

    def __post_init__(self) -> None:
        """Accept the plain forms too (a stage string, a training dict as in plans.json), so
        code and tests that build a Configuration by hand get the typed values."""
        self.stage = Stage(self.stage)
        if isinstance(self.training, dict):
            self.training = TrainingSettings.from_json(self.training, "training", modality_kind(self.modality))

    @property
    def crop_margin_zyx(self) -> list[int]:
        """Voxels stored around a refine crop on each side, so training can offset the crop
        centre by up to crop_jitter_mm (0 for the other stages)."""
        if self.stage != Stage.REFINE:
            return [0, 0, 0]
        return [int(math.ceil(self.crop_jitter_mm / s - 1e-9)) for s in self.spacing_zyx]

    @property
    def field_of_view_mm_zyx(self) -> list[float]:
        return [s * n for s, n in zip(self.spacing_zyx, self.input_size_zyx)]

    def to_json(self) -> dict:
        d = asdict(self)
        if self.stage == Stage.SINGLE:  # plans without a cascade read exactly as before
            for key in ("stage", "previous_stage", "crop_jitter_mm", "refine_iterations"):
                d.pop(key)
        else:
            d["stage"] = self.stage.value
        d["training"] = self.training.to_dict()
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
            if c.modality == modality and c.stage == Stage.REFINE:
                return c.previous_stage, name
        return None

    def configuration(self, name: str) -> Configuration:
        """The configuration called `name` (a modality's single stage is named by the modality:
        MR; cascade stages MR_localizer, MR_refine)."""
        if name not in self.configurations:
            raise ConfigurationError(f"plans for {self.dataset_name} have no configuration {name!r}; "
                                     f"available: {sorted(self.configurations)}")
        return self.configurations[name]

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
        v.known_keys(data, PLANS_KEYS, "")
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
            if c.stage == Stage.REFINE and configurations.get(c.previous_stage) is None:
                v.fail(f"configurations.{m}.previous_stage", f"names {c.previous_stage!r}, which is not a "
                                                             f"configuration of these plans")
            if c.stage == Stage.REFINE and configurations[c.previous_stage].modality != c.modality:
                v.fail(f"configurations.{m}.previous_stage", f"names a configuration of modality "
                                                             f"{configurations[c.previous_stage].modality!r}, "
                                                             f"not {c.modality!r}")
        return Plans(dataset_name=v.key(data, "dataset_name", str), landmarks=list(names),
                     budget=v.key(data, "budget", dict), configurations=configurations, plans_version=version)


# the keys of plans.json's top level and of one configuration (every key Plans.to_json and
# Configuration.to_json write; field_of_view_mm_zyx is derived, written for the reader and
# ignored on load).  Anything else is refused with its path: a misspelt optional key such as
# "crop_jiter_mm" would otherwise be silently replaced by its default.
PLANS_KEYS = ("plans_version", "dataset_name", "landmarks", "budget", "configurations")
CONFIGURATION_KEYS = tuple(f.name for f in dataclasses.fields(Configuration)) + ("field_of_view_mm_zyx",)
NORMALIZATION_KEYS = tuple(f.name for f in dataclasses.fields(Normalization))


def _configuration(v: _Validator, c: Any, where: str) -> Configuration:
    v.mapping(c, where)
    v.known_keys(c, CONFIGURATION_KEYS, where)
    norm = v.key(c, "normalization", dict, where)
    v.known_keys(norm, NORMALIZATION_KEYS, f"{where}.normalization")
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
        training=TrainingSettings.from_json(v.key(c, "training", dict, where), f"{where}.training",
                                            modality_kind(v.key(c, "modality", str, where)), v),
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
    stage = c.get("stage", Stage.SINGLE.value)
    if stage not in STAGES:
        v.fail(f"{where}.stage", f"must be one of {STAGES}, got {stage!r}")
    out: dict[str, Any] = {"stage": Stage(stage)}
    if stage == Stage.REFINE:
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
