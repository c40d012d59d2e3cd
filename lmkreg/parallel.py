"""Run a function over many cases in worker processes, with a progress bar."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Workers for case-parallel work: the cores this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


_HIDDEN = {"progress": False}


def hide_progress() -> None:
    """--no-progress of a command whose bars are drawn deep inside (plan_and_preprocess, register,
    find_best_configuration, demo): every parallel_map bar and every tqdm bar left at its default."""
    _HIDDEN["progress"] = True
    os.environ["TQDM_DISABLE"] = "1"


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: Optional[int] = None, desc: str = "",
                 disable_progress: Optional[bool] = None) -> list[R]:
    """[fn(x) for x in items] in `workers` processes (in order); workers=1 runs in this process."""
    workers = default_workers() if workers is None else max(1, int(workers))
    disable = True if _HIDDEN["progress"] else disable_progress
    bar_kwargs = dict(total=len(items), desc=desc, unit="case", disable=disable, leave=False)
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, **bar_kwargs)]
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(tqdm(pool.map(fn, items), **bar_kwargs))

