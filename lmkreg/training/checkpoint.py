"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain Python
values only, so opening one never executes pickled code.  Written atomically."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Union

import torch

from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_path

PathLike = Union[str, Path]
CHECKPOINT_FORMAT = "lmkreg-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: PathLike) -> Path:
    """torch.save to a temporary file, then rename: a crash never leaves a torn checkpoint."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; refuse anything else with a clear message."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise InputError(p, f"refused: the checkpoint holds pickled code or objects that are not plain "
                            f"weights ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(p, f"not a readable checkpoint ({detail})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(p, "not an lmkreg checkpoint (no or unknown 'format' entry)")
    return state
