"""Thread policy for a shared CPU: OpenMP threads that sleep instead of spinning, and as many
intra-op threads as there are cores free.

Why: PyTorch's CPU kernels run in OpenMP parallel regions.  By default GNU OpenMP lets a thread
that reaches the end of a region spin (GOMP_SPINCOUNT = 300000) waiting for its partners.  When
another program holds one of the cores, a partner is descheduled and the spinning threads burn
the time it needs: a training step on 2 cores then takes 3-11x its idle time instead of about
2x.  ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep.  libgomp reads it once, when it is
loaded (on ``import torch``), so it must be in the environment before that:
``set_openmp_environment`` runs from ``lmkreg/__init__.py``, before any lmkreg module imports
torch or numpy.

Overrides (documented in documentation/training.md):

* ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` set by the user are kept as they are;
* ``LMKREG_NUM_THREADS=N`` fixes the intra-op thread count (instead of measuring free cores);
* ``LMKREG_THREAD_POLICY=off`` leaves every library default alone (the "old" behaviour).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, MutableMapping, Optional, Sequence

ENV_THREADS = "LMKREG_NUM_THREADS"
ENV_POLICY = "LMKREG_THREAD_POLICY"
OFF_VALUES = ("off", "0", "no", "false", "library")
SAMPLE_SECONDS = 0.25  # how long configure_threads watches /proc/stat for other programs' CPU use

# what set_openmp_environment did at import time (for the log)
_SET_AT_IMPORT: dict[str, str] = {}
_LOADED_BEFORE: tuple[str, ...] = ()


def policy_enabled(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(ENV_POLICY, "").strip().lower() not in OFF_VALUES


def user_thread_count(environ: Optional[MutableMapping[str, str]] = None) -> Optional[int]:
    """LMKREG_NUM_THREADS as a positive int, or None when unset; a bad value is an error naming it."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_THREADS, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_THREADS}={text!r}: must be a whole number of threads >= 1")
    return n


def set_openmp_environment(environ: Optional[MutableMapping[str, str]] = None,
                           loaded: Optional[Sequence[str]] = None) -> dict[str, str]:
    """Put the wait policy (and a user's LMKREG_NUM_THREADS) into the environment before the
    OpenMP runtime is loaded.  Values already present are kept.  Returns what was set."""
    global _SET_AT_IMPORT, _LOADED_BEFORE
    environ = os.environ if environ is None else environ
    loaded = tuple(m for m in ("torch", "numpy") if m in sys.modules) if loaded is None else tuple(loaded)
    done: dict[str, str] = {}
    if policy_enabled(environ):
        wanted = {"OMP_WAIT_POLICY": "PASSIVE"}
        try:
            n = user_thread_count(environ)
        except ValueError:
            n = None  # reported by configure_threads, where a command can show it
        if n is not None:
            wanted["OMP_NUM_THREADS"] = str(n)
        for key, value in wanted.items():
            if not environ.get(key):
                environ[key] = value
                done[key] = value
    if environ is os.environ:
        _SET_AT_IMPORT, _LOADED_BEFORE = dict(done), loaded
    return done


# ---- free cores --------------------------------------------------------------------------------

def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: Sequence[int]) -> Optional[tuple[float, float]]:
    """(busy, total) jiffies summed over `cpus` from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    found = False
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [float(v) for v in parts[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
            total += sum(values[:8])  # guest time is already inside user time
            busy += sum(values[:8]) - idle
            found = True
    return (busy, total) if found else None


def busy_cores_now(cpus: Sequence[int], seconds: float = SAMPLE_SECONDS,
                   sleep: Callable[[float], None] = time.sleep) -> Optional[float]:
    """Cores' worth of CPU time other programs used while this process slept `seconds`."""
    a = _cpu_times(cpus)
    if a is None:
        return None
    sleep(seconds)
    b = _cpu_times(cpus)
    if b is None or b[1] <= a[1]:
        return None
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def free_cores(n_cpus: int, busy_now: Optional[float], load_1min: Optional[float]) -> int:
    """Cores no other program is using, at least 1.

    Two measures, each with a weakness: the CPU use sampled just now catches a program that
    started seconds ago but also a passing blip; the 1-minute load average is steady but lags
    and counts waiting processes too.  A core counts as taken only when both agree it is (the
    smaller of the two), rounded to the nearest whole core."""
    measures = [m for m in (busy_now, load_1min) if m is not None and math.isfinite(m)]
    busy = min(measures) if measures else 0.0
    return max(1, min(n_cpus, n_cpus - int(math.floor(busy + 0.5))))


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads and data-loader workers a command uses, and why."""

    intra_op_threads: int
    workers: int
    cpus: int
    free: int
    reason: str
    wait_policy: str

    def describe(self) -> str:
        return (f"threads: {self.intra_op_threads} intra-op, {self.workers} data worker(s) on {self.cpus} core(s), "
                f"{self.free} free; OMP_WAIT_POLICY={self.wait_policy} ({self.reason})")


def plan_threads(requested_workers: Optional[int] = None, environ: Optional[MutableMapping[str, str]] = None,
                 cpus: Optional[int] = None, busy_now: Optional[float] = None,
                 load_1min: Optional[float] = None, processes: int = 1) -> ThreadPlan:
    """Intra-op threads from the cores actually free; data workers so that both together do not
    oversubscribe the free cores.  `processes`: how many processes of one job share the
    machine (torchrun); each takes its share of the free cores.

    Workers make augmented batches ahead of the network and sleep once their queue is full; the
    augmentation of a batch costs 4-8 % of a training step (documentation/benchmarks.md), so
    they take a small share of a core, not a core each.  They are nevertheless capped at the
    free cores minus the intra-op threads, and at one otherwise, so that a run never starts more
    busy processes than cores."""
    environ = os.environ if environ is None else environ
    cpus = len(allowed_cpus()) if cpus is None else int(cpus)
    free = free_cores(cpus, busy_now, load_1min)
    wait = environ.get("OMP_WAIT_POLICY", "library default")
    user = user_thread_count(environ)
    if not policy_enabled(environ):
        threads, reason = cpus, f"{ENV_POLICY}=off: library defaults"
    elif user is not None:
        threads, reason = user, f"{ENV_THREADS}={user}"
    elif environ.get("OMP_NUM_THREADS", "").strip().isdigit() and "OMP_NUM_THREADS" not in _SET_AT_IMPORT:
        threads, reason = max(1, int(environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS set by the user"
    else:
        threads, reason = max(1, free // max(1, processes)), "free cores measured"
    workers = 0 if requested_workers is None else max(0, int(requested_workers))
    if workers and policy_enabled(environ):
        workers = min(workers, max(1, free - threads))
    return ThreadPlan(threads, workers, cpus, free, reason, wait)


def _load_1min() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def configure_threads(requested_workers: Optional[int] = None, measure: bool = True, processes: int = 1) -> ThreadPlan:
    """Choose and apply torch's intra-op thread count for a command; returns the plan (its
    ``workers`` is the data-loader worker count to use).  Call once at a command's start."""
    import torch  # lazy: lmkreg/__init__ imports this module before anything may load torch

    cpus = allowed_cpus()
    busy = busy_cores_now(cpus) if measure and policy_enabled() else None
    plan = plan_threads(requested_workers, cpus=len(cpus), busy_now=busy, load_1min=_load_1min(), processes=processes)
    if policy_enabled() and torch.get_num_threads() != plan.intra_op_threads:
        torch.set_num_threads(plan.intra_op_threads)
    return plan


class OtherProgramsWatch:
    """CPU use of other programs between two calls: the allowed CPUs' busy time from /proc/stat
    minus this process's own (its threads and its finished children, from os.times()).

    A training run calls ``free_cores()`` after each epoch; over a whole epoch the measure is an
    average, not a blip, so it alone decides."""

    def __init__(self, cpus: Optional[Sequence[int]] = None,
                 read_cpu: Optional[Callable[[Sequence[int]], Optional[tuple[float, float]]]] = None,
                 read_own: Optional[Callable[[], float]] = None, clock: Callable[[], float] = time.monotonic):
        self.cpus = list(allowed_cpus() if cpus is None else cpus)
        self._read_cpu = read_cpu or _cpu_times
        self._read_own = read_own or _own_cpu_seconds
        self._clock = clock
        self._last = self._sample()

    def _sample(self) -> Optional[tuple[float, float, float, float]]:
        cpu = self._read_cpu(self.cpus)
        return None if cpu is None else (cpu[0], cpu[1], self._read_own(), self._clock())

    def others_busy_cores(self) -> Optional[float]:
        """Cores' worth of CPU time other programs used since the previous call."""
        now, last = self._sample(), self._last
        self._last = now
        if now is None or last is None or now[1] <= last[1] or now[3] <= last[3]:
            return None
        all_busy = len(self.cpus) * (now[0] - last[0]) / (now[1] - last[1])
        own = (now[2] - last[2]) / (now[3] - last[3])
        return max(0.0, all_busy - own)

    def free_cores(self) -> Optional[int]:
        busy = self.others_busy_cores()
        return None if busy is None else free_cores(len(self.cpus), busy, None)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def may_adapt_threads(plan: ThreadPlan) -> bool:
    """Whether lmkreg chose the thread count itself (not a user's setting), so it may change it."""
    return plan.reason == "free cores measured"


def import_warning() -> Optional[str]:
    """A sentence for the log when the wait policy could not take effect: torch was imported
    before lmkreg set the environment, and the user did not set it either."""
    if policy_enabled() and "torch" in _LOADED_BEFORE and "OMP_WAIT_POLICY" in _SET_AT_IMPORT:
        return ("torch was imported before lmkreg, so OMP_WAIT_POLICY=PASSIVE did not reach OpenMP: on a busy "
                "machine steps may be several times slower; import lmkreg first or export OMP_WAIT_POLICY=PASSIVE")
    return None
