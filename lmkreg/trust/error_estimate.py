"""Which error estimate a configuration's predictions carry, said in words a user can act on.

Every trained configuration gets one of three answers (issue 26):

* ``calibrated``: the predicting folds are numeric folds whose validation cases were pooled into
  ``calibration.json`` (split-conformal radii, lmkreg.trust.calibration);
* ``calibrated`` with ``borrowed``: fold ``all`` (no held-out cases of its own) uses the pooled
  calibration of the cross-validation folds 0-4 of the same model folder, i.e. the same plans
  and trainer.  Fold ``all`` trained on those validation cases too, and a model trained on more
  cases is not less accurate, so the borrowed radii are, if anything, conservative;
* ``uncalibrated``: no calibration exists for these folds (fold ``all`` alone, a model trained
  before calibration), or the calibrated signal needs mirror test-time augmentation and it was
  off.  The pair check then counts a documented literature default for the landmark error
  (lmkreg.trust.pair_checks) and says so, never a number it does not have.

Pure function of plain data: the calibration's fold list, the folds that predict, whether the
mirror TTA ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


def fold_range(folds: Sequence[str]) -> str:
    """"0-4" for consecutive numeric folds, else "0, 2, 3"."""
    nums = sorted(int(f) for f in folds if str(f).isdigit())
    if len(nums) > 1 and nums == list(range(nums[0], nums[-1] + 1)):
        return f"{nums[0]}-{nums[-1]}"
    return ", ".join(str(n) for n in nums)


@dataclass(frozen=True)
class ErrorEstimate:
    """``kind`` "calibrated" or "uncalibrated"; ``source``: one sentence naming where the
    estimate comes from (written into the landmark file's trust block); ``borrowed``: fold
    ``all`` uses the CV folds' calibration."""

    kind: str
    source: str
    borrowed: bool = False

    def to_json(self) -> dict:
        return {"error_estimate": self.kind, "calibration_source": self.source, "calibration_borrowed": self.borrowed}


def error_estimate(calibration_folds: Optional[Sequence[str]], predicting_folds: Sequence[str],
                   mirror_tta: bool, has_quantiles: bool = True) -> ErrorEstimate:
    """The estimate a prediction by `predicting_folds` gets from a calibration pooled over
    `calibration_folds` (None: the model folder has no calibration.json)."""
    folds = [str(f) for f in predicting_folds]
    cal = [str(f) for f in (calibration_folds or [])]
    if calibration_folds is None or not cal:
        if "all" in folds:
            return ErrorEstimate("uncalibrated", "uncalibrated: fold all has no held-out cases and no cross-validation "
                                                 "folds were trained beside it (train folds 0-4 of the same plans and "
                                                 "trainer to calibrate it)")
        return ErrorEstimate("uncalibrated", "uncalibrated: the model folder has no calibration.json (trained before "
                                             "calibration existed)")
    if not has_quantiles:
        return ErrorEstimate("uncalibrated", f"uncalibrated: folds {fold_range(cal)} hold too few validation cases "
                                             f"for a 90 % radius; the median validation error is counted instead")
    if not mirror_tta:
        return ErrorEstimate("uncalibrated", f"uncalibrated: the radii calibrated on folds {fold_range(cal)} need "
                                             f"mirror test-time augmentation, which was off; the median validation "
                                             f"error is counted instead")
    if "all" in folds:
        return ErrorEstimate("calibrated", f"calibration borrowed from folds {fold_range(cal)} (same plans and "
                                           f"trainer; fold all has no held-out cases of its own)", borrowed=True)
    return ErrorEstimate("calibrated", f"calibrated on the validation cases of folds {fold_range(cal)}")


def fold_all_trust_message(calibration_folds: Optional[Sequence[str]]) -> str:
    """What ``lmkreg_train -f all`` prints about the trust its model will have."""
    if calibration_folds:
        return (f"fold all: its predictions will carry error radii borrowed from the calibration of folds "
                f"{fold_range(calibration_folds)} (same plans and trainer)")
    return ("fold all: no cross-validation folds are trained beside it, so its predictions will be UNCALIBRATED "
            "(no error radius; pair checks count a literature default for the landmark error). Train folds 0-4 "
            "(lmkreg_train ... -f 0 1 2 3 4) to calibrate it.")
