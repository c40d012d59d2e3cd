"""Cross-validation splits shared by all modalities (so MR and US folds hold the same cases)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from lmkreg.errors import ConfigurationError
from lmkreg.io.atomic import atomic_write_json

PathLike = Union[str, Path]
SPLITS_FILE = "splits_final.json"


def make_splits(cases: Sequence[str], num_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """Seeded k-fold: every case is validated exactly once; folds differ in size by at most one."""
    cases = sorted(cases)
    if len(cases) < num_folds:
        raise ConfigurationError(f"{len(cases)} training case(s) cannot make {num_folds} folds; "
                                 f"add cases or choose fewer folds")
    order = np.random.default_rng(seed).permutation(len(cases))
    folds = np.array_split(order, num_folds)
    splits = []
    for f in folds:
        val = set(int(i) for i in f)
        splits.append({"train": [c for i, c in enumerate(cases) if i not in val],
                       "val": [c for i, c in enumerate(cases) if i in val]})
    return splits


def load_or_create_splits(folder: PathLike, cases: Sequence[str], num_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Reuse ``splits_final.json`` if present (it may be the user's own), else create it.

    A present file is checked: every fold has 'train' and 'val', and every case it names exists.
    """
    path = Path(folder) / SPLITS_FILE
    if path.is_file():
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid JSON ({exc})") from None
        known = set(cases)
        if not isinstance(splits, list) or not splits:
            raise ConfigurationError(f"{path}: must be a list of folds with 'train' and 'val' case lists")
        for i, fold in enumerate(splits):
            if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
                raise ConfigurationError(f"{path}: fold {i} must have 'train' and 'val'")
            unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
            if unknown:
                raise ConfigurationError(f"{path}: fold {i} names unknown case(s) {unknown[:5]}")
            overlap = sorted(set(fold["train"]) & set(fold["val"]))
            if overlap:
                raise ConfigurationError(f"{path}: fold {i} has case(s) in both train and val: {overlap[:5]}")
        return splits
    splits = make_splits(cases, num_folds, seed)
    atomic_write_json(path, splits)
    return splits
