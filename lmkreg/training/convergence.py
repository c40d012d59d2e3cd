"""Did a training run stop too early?  A verdict in numbers a user can check.

A model cut short by a busy machine looks like any other model: it loads, it predicts, and its
landmarks can be 40 mm off.  Two signs show it from the run itself, without test data:

* it ran fewer optimiser steps than the plan's minimum (``training.min_steps``);
* its validation MRE was still falling fast at the end: the best MRE of the last quarter of the
  steps is more than ``FALLING_FAST`` (10 %) below the best MRE before it.  A converged run
  improves by a few per cent over its last quarter, within the noise of a handful of validation
  cases.

and one more when the plan states the accuracy it expects (``training.expected_val_mre_mm``):
the final validation MRE is above it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence


FALLING_FAST = 0.10  # relative drop of the best validation MRE over the last quarter of the steps
TAIL_FRACTION = 0.25
MIN_VALIDATIONS = 3  # fewer validations cannot show a trend


@dataclass
class TrainingVerdict:
    """Whether a run's model is fit for use, and why not."""

    fit_for_use: bool
    reasons: list[str] = field(default_factory=list)
    steps: int = 0
    min_steps: int = 0
    recent_drop: Optional[float] = None  # relative drop of the best MRE over the last quarter (0.3 = 30 %)
    final_mre_mm: Optional[float] = None
    expected_mre_mm: Optional[float] = None

    def to_json(self) -> dict:
        return {"fit_for_use": self.fit_for_use, "reasons": list(self.reasons), "steps": self.steps,
                "min_steps": self.min_steps, "recent_mre_drop": self.recent_drop,
                "final_val_mre_mm": self.final_mre_mm, "expected_val_mre_mm": self.expected_mre_mm}


def recent_drop(steps: Sequence[float], mre: Sequence[float], tail_fraction: float = TAIL_FRACTION) -> Optional[float]:
    """(best MRE before the last `tail_fraction` of the steps - best MRE within it) / best before;
    None when the history is too short to tell or has no finite MRE on one side."""
    pairs = [(float(s), float(m)) for s, m in zip(steps, mre) if math.isfinite(float(m))]
    if len(pairs) < MIN_VALIDATIONS:
        return None
    cut = (1.0 - tail_fraction) * pairs[-1][0]
    before = [m for s, m in pairs if s <= cut]
    tail = [m for s, m in pairs if s > cut]
    if not before or not tail or min(before) <= 0:
        return None
    return (min(before) - min(tail)) / min(before)


def judge_training(steps_done: int, min_steps: int, val_steps: Sequence[float], val_mre: Sequence[float],
                   expected_mre_mm: Optional[float] = None, falling_fast: float = FALLING_FAST) -> TrainingVerdict:
    """The verdict of a finished run from its step count and validation history."""
    reasons = []
    if steps_done < min_steps:
        reasons.append(f"ran {steps_done} optimiser steps, fewer than the plan's minimum of {min_steps}")
    drop = recent_drop(val_steps, val_mre)
    finite = [float(m) for m in val_mre if math.isfinite(float(m))]
    final = finite[-1] if finite else None
    if drop is None:
        reasons.append(f"only {len(finite)} validation(s): too few to show that the validation MRE stopped falling")
    elif drop > falling_fast:
        reasons.append(f"validation MRE still falling fast: {100 * drop:.0f} % lower over the last "
                       f"{100 * TAIL_FRACTION:.0f} % of the steps (more than {100 * falling_fast:.0f} %)")
    if expected_mre_mm is not None and (final is None or final > expected_mre_mm):
        shown = "not measured" if final is None else f"{final:.2f} mm"
        reasons.append(f"final validation MRE {shown} is above the {expected_mre_mm:g} mm the plan expects")
    return TrainingVerdict(not reasons, reasons, int(steps_done), int(min_steps), drop, final, expected_mre_mm)


ADVICE = ("train longer (lmkreg_train --time-budget MINUTES or --epochs N; lmkreg_demo --train-minutes N), "
          "with fewer other programs using the CPU, or on a GPU (--device cuda)")
