"""Find trainer classes by name, in lmkreg and in the user's own modules.

Users add a trainer without editing lmkreg: subclass ``LandmarkTrainer`` in any module and
name it with ``--trainer-module my_trainers.py`` (a file or a dotted module path), or list
such modules in the environment variable ``LMKREG_TRAINER_MODULES`` (separated by ``:``).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from pathlib import Path
from types import ModuleType
from typing import Iterable, Optional

from lmkreg.errors import ConfigurationError
from lmkreg.training import trainers as builtin
from lmkreg.training.trainers import LandmarkTrainer
from lmkreg.training import segmentation  # the <Trainer>_Seg multi-task variants

ENV_VAR = "LMKREG_TRAINER_MODULES"


def _load_module(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ConfigurationError(f"{spec}: trainer module file not found")
        mod_spec = importlib.util.spec_from_file_location(f"lmkreg_user_trainers_{abs(hash(str(path.resolve())))}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import trainer module {spec!r}: {exc}") from None


def trainer_modules(extra: Optional[Iterable[str]] = None) -> list[ModuleType]:
    specs = [s for s in os.environ.get(ENV_VAR, "").split(":") if s.strip()] + list(extra or [])

    return [builtin, segmentation] + [_load_module(s) for s in specs]


def available_trainers(extra: Optional[Iterable[str]] = None) -> dict[str, type[LandmarkTrainer]]:
    found: dict[str, type[LandmarkTrainer]] = {}
    for module in trainer_modules(extra):
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, LandmarkTrainer):
                found[name] = obj
    return found


def find_trainer(name: str, extra: Optional[Iterable[str]] = None) -> type[LandmarkTrainer]:
    trainers = available_trainers(extra)
    if name not in trainers:
        raise ConfigurationError(f"unknown trainer {name!r}; available: {', '.join(sorted(trainers))} "
                                 f"(add your own with --trainer-module or {ENV_VAR})")
    return trainers[name]
