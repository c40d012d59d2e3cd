"""Where lmkreg keeps data: three folders set by environment variables (nnU-Net style).

``LMKREG_raw`` (datasets as the user gives them), ``LMKREG_preprocessed`` (plans and
resampled arrays) and ``LMKREG_results`` (trained models, predictions, reports).  When a
variable is unset the folder defaults to ``~/lmkreg_data/{raw,preprocessed,results}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from lmkreg.errors import ConfigurationError

_DEFAULTS = {"LMKREG_raw": "raw", "LMKREG_preprocessed": "preprocessed", "LMKREG_results": "results"}


class Named(Protocol):
    """What preprocessed_folder needs of a dataset (lmkreg.dataset.layout.Dataset, which imports
    this module, so this module does not import it)."""

    name: str


def _folder(var: str) -> Path:
    value = os.environ.get(var)
    if value is None or value.strip() == "":
        return Path.home() / "lmkreg_data" / _DEFAULTS[var]
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"{var}={value} is not a folder")
    return path


def raw_root() -> Path:
    return _folder("LMKREG_raw")


def preprocessed_root() -> Path:
    return _folder("LMKREG_preprocessed")


def results_root() -> Path:
    return _folder("LMKREG_results")


def preprocessed_folder(dataset: Named) -> Path:
    """A dataset's folder of plans, splits and preprocessed data (written by planning, read by
    training and evaluation)."""
    return preprocessed_root() / dataset.name
