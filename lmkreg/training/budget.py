"""A wall-clock training budget counted in optimiser steps, fitted to the machine's steady speed.

Why a class of its own: the first epoch of a run is slow (worker start-up, first-touch memory,
oneDNN choosing kernels), and a laptop's load changes while it trains.  Fitting the length of a
run once, from the first epoch, and only ever lowering it cut a 5-minute demo run to 3 epochs
(150 steps) where 10 fitted.  ``StepBudget`` leaves the first epoch(s) out of the estimate,
re-fits after every epoch from the most recent ones (so the count goes up again when the
machine gets faster), and counts optimiser steps, so the last epoch may be a partial one that
ends where the budget does.  The clock is injectable so that a test can drive it.

A budget is a target, not a promise to stop unfinished: a busy laptop fits fewer steps into the
same minutes, and a model cut short is not fit for use.  With ``limit_s`` above ``budget_s``
the trainer may ``extend`` a run whose model has not converged when the budget ends, in steps of
``EXTENSION_FRACTION`` of the budget, up to the limit (the trainer decides; see
``LandmarkTrainer.run``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

EXTENSION_FRACTION = 0.25  # one extension adds this share of the original budget
DEFAULT_LIMIT_FACTOR = 2.0  # lmkreg_train / lmkreg_demo: hard limit = this many times the budget


@dataclass(frozen=True)
class EpochTiming:
    steps: int  # optimiser steps of the epoch
    train_s: float  # seconds spent in those steps (data included)
    other_s: float  # seconds of everything else in the epoch: validation, checkpoints, plots


@dataclass
class StepBudget:
    """Total optimiser steps of a run that fit `budget_s` seconds of wall clock.

    budget_s: seconds from ``start()`` to the end of the last epoch.
    max_steps: the planned length; the budget never runs longer than the plan.
    steps_per_epoch: iterations of a full epoch (validation follows each epoch).
    warmup_epochs: epochs after ``start()`` left out of the speed estimate.
    window: how many of the most recent steady epochs the estimate uses.
    limit_s: hard limit for ``extend`` (None: the budget is also the limit).
    """

    budget_s: float
    max_steps: int
    steps_per_epoch: int
    warmup_epochs: int = 1
    window: int = 2
    clock: Callable[[], float] = time.monotonic
    limit_s: Optional[float] = None
    total_steps: int = field(init=False)
    steps_done: int = field(init=False, default=0)
    epochs: list[EpochTiming] = field(init=False, default_factory=list)
    history: list[dict] = field(init=False, default_factory=list)  # one entry per re-fit, for the log

    def __post_init__(self) -> None:
        if self.budget_s <= 0 or self.max_steps < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"budget {self.budget_s} s, {self.max_steps} steps, {self.steps_per_epoch} per epoch: "
                             f"all must be positive")
        if self.limit_s is not None and self.limit_s < self.budget_s:
            raise ValueError(f"time limit {self.limit_s} s is below the budget {self.budget_s} s")
        self.total_steps = int(self.max_steps)
        self.original_budget_s = float(self.budget_s)
        self.extensions: list[dict] = []
        self.refusal = ""  # why the last extend() was refused
        self._t0: Optional[float] = None

    def start(self, steps_done: int = 0) -> None:
        """Start the clock (after set-up); `steps_done` > 0 when a run resumes."""
        self._t0 = self.clock()
        self.steps_done = int(steps_done)

    @property
    def elapsed_s(self) -> float:
        if self._t0 is None:
            raise RuntimeError("StepBudget.start() was not called")
        return self.clock() - self._t0

    def next_epoch_steps(self) -> int:
        """Steps of the next epoch: a full one, or what is left of the total."""
        return max(0, min(self.steps_per_epoch, self.total_steps - self.steps_done))

    def speed(self) -> Optional[tuple[float, float]]:
        """(seconds per step, seconds of per-epoch overhead) from the last `window` steady
        epochs, or None while only warm-up epochs have run."""
        steady = self.epochs[self.warmup_epochs:][-self.window:]
        steps = sum(e.steps for e in steady)
        if not steady or steps == 0:
            return None
        return sum(e.train_s for e in steady) / steps, sum(e.other_s for e in steady) / len(steady)

    def epoch_done(self, steps: int, train_s: float, other_s: float) -> int:
        """Record a finished epoch and re-fit; returns the new total number of steps."""
        self.epochs.append(EpochTiming(int(steps), float(train_s), float(other_s)))
        self.steps_done += int(steps)
        remaining = self.budget_s - self.elapsed_s
        speed = self.speed()
        if remaining <= 0:
            total = self.steps_done
        elif speed is None:  # no steady measurement yet: keep the plan, the next epoch will tell
            total = self.total_steps
        else:
            total = self.steps_done + self.steps_that_fit(remaining, *speed)
        self.total_steps = int(max(self.steps_done, min(self.max_steps, total)))
        self.history.append({"steps_done": self.steps_done, "elapsed_s": self.elapsed_s, "remaining_s": remaining,
                             "seconds_per_step": None if speed is None else speed[0],
                             "overhead_s": None if speed is None else speed[1], "total_steps": self.total_steps})
        return self.total_steps

    def can_extend(self) -> bool:
        """Whether a limit above the current budget leaves room for another extension."""
        return self.limit_s is not None and self.budget_s < self.limit_s - 1e-9

    def extend(self, reason: str) -> Optional[int]:
        """Add ``EXTENSION_FRACTION`` of the original budget from now (the last epoch may have run
        past the budget), at most up to ``limit_s``, and re-fit the step count from the steady
        speed; returns the new total, or None (``refusal`` says why) when the limit leaves no room
        for a step or the plan's step count is exhausted: the run then ends as it is."""
        if self.steps_done >= self.max_steps:
            self.refusal = f"the plan's {self.max_steps} steps are done"
            return None
        if not self.can_extend() or self.elapsed_s >= (self.limit_s or 0.0):
            self.refusal = ("no time limit above the budget was given" if self.limit_s is None
                            else f"the time limit of {self.limit_s:.0f} s is reached")
            return None
        new_budget = min(max(self.budget_s, self.elapsed_s) + EXTENSION_FRACTION * self.original_budget_s,
                         self.limit_s)
        remaining = new_budget - self.elapsed_s
        speed = self.speed()
        added = self.steps_per_epoch if speed is None else self.steps_that_fit(remaining, *speed)
        total = int(min(self.max_steps, self.steps_done + added))
        if total <= self.steps_done:
            self.refusal = (f"the {remaining:.0f} s left before the time limit of {self.limit_s:.0f} s do not hold "
                            f"an epoch's validation and a step")
            self.budget_s = new_budget
            return None
        extra = new_budget - self.budget_s
        self.budget_s = new_budget
        self.total_steps = total
        self.extensions.append({"steps_done": self.steps_done, "elapsed_s": self.elapsed_s, "added_s": extra,
                                "budget_s": self.budget_s, "total_steps": total, "reason": reason})
        return total

    def steps_that_fit(self, remaining_s: float, step_s: float, overhead_s: float) -> int:
        """Steps that fit `remaining_s` when an epoch of k steps costs k*step_s + overhead_s:
        as many full epochs as fit, then a partial one if its steps and its overhead fit."""
        step_s = max(step_s, 1e-9)
        full_cost = self.steps_per_epoch * step_s + overhead_s
        n_full = int(math.floor(remaining_s / full_cost))
        left = remaining_s - n_full * full_cost
        partial = int(math.floor((left - overhead_s) / step_s)) if left > overhead_s else 0
        return n_full * self.steps_per_epoch + max(0, min(partial, self.steps_per_epoch - 1))

    def describe(self) -> str:
        speed = self.speed()
        rate = "no steady epoch yet" if speed is None else f"{speed[0]:.3f} s per step + {speed[1]:.1f} s per epoch"
        limit = "" if self.limit_s is None else f" (limit {self.limit_s:.0f} s)"
        return (f"time budget {self.budget_s:.0f} s{limit}, {self.elapsed_s:.0f} s used ({rate}): "
                f"{self.total_steps} steps in all (plan {self.max_steps})")
