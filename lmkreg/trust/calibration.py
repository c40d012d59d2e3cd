"""Split-conformal error radii per landmark.

Why conformal: the networks' own uncertainty signals (mirror spread, heatmap spread) are not
in mm of error; a conformal quantile turns them into a radius with a stated coverage without
assuming a distribution.  Normalised form: the nonconformity score of a calibration landmark
is ``error / scale`` where ``scale`` is the signal (``signal_scale``); the radius of a new
landmark is ``q * scale`` with ``q`` the ceil((n+1) c)-th smallest of the n calibration scores
(c the coverage).  If the calibration cases are exchangeable with the new case, the true point
lies within the radius with probability >= c.

Why no radius from fewer than 9 cases: the largest of n scores is a conformal radius of
coverage n/(n+1), but with the demo's 8 validation cases one failed case (a US apex 31 mm off)
made it 20 mm for every case, and the >5 mm radius rule flagged all 10 test pairs
(benchmarks/results/demo_flags_small_sample_radius.json).  So a radius needs
``minimum_cases`` scores.  The pooled median validation error (``median_error_mm``,
uncalibrated, robust to such a failure) is stored for every landmark instead, so that the pair
check can still count the landmarks' typical error (lmkreg.trust.pair).

Calibration cases are each fold's validation cases, predicted by that fold's final model with
mirror test-time augmentation when the fold finishes training (``lmkreg.run.calibrate.calibrate_fold``,
which runs the predictors; this module holds only the maths and the files); they are
kept per fold (``fold_F/calibration_cases.json``) and pooled over every numeric fold trained so
far into ``calibration.json`` in the model folder, one quantile per landmark (fold 'all' has no
held-out cases and is never pooled).

Cascade stages are calibrated on what they predict at inference.  A localizer predicts the
whole image.  A refine stage predicts a crop placed by the localizer: when the localizer's
fold F exists (it did not train on fold F's validation cases), the refine fold F is
calibrated on the whole cascade, localizer fold F then refine fold F, as ``lmkreg_predict``
chains them, so its radius includes the effect of an imperfect localizer.  Otherwise the crop
is centred on the true landmark centroid offset by a random amount of up to the planned
``crop_jitter_mm`` per axis (the jittered crop it was trained with).  ``calibration.json``
says which, per fold (``crop_placement``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lmkreg.io.atomic import atomic_write_json

COVERAGE = 0.9
CALIBRATION_FILE = "calibration.json"
FOLD_CASES_FILE = "calibration_cases.json"
# added in quadrature to the signals: keeps the score finite when the signals vanish, and
# makes the radius at least q mm
SCALE_FLOOR_MM = 1.0
SIGNAL_DEFINITION = ("scale = sqrt(1 mm^2 + mirror_gap^2 + heatmap_spread^2) per fold, RMS over folds; "
                     "mirror_gap = half the distance between the plain and the left-right mirrored prediction")


def signal_scale(mirror_gap_mm: float, spread_mm: float) -> float:
    """The normalising scale of one fold's prediction of one landmark (mm); a NaN spread (a
    regression network has none) counts as 0."""
    spread = spread_mm if math.isfinite(spread_mm) else 0.0
    return math.sqrt(SCALE_FLOOR_MM ** 2 + mirror_gap_mm ** 2 + spread ** 2)


def minimum_cases(coverage: float) -> int:
    """Fewest calibration cases for which the conformal quantile at `coverage` exists."""
    n = 1
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


def conformal_quantile(scores: Sequence[float], coverage: float = COVERAGE) -> tuple[Optional[float], str]:
    """(q, "") or (None, reason): the ceil((n+1) c)-th smallest finite score."""
    s = np.sort(np.asarray([v for v in scores if v is not None and math.isfinite(v)], float))
    n = len(s)
    k = math.ceil((n + 1) * coverage)
    if k > n:
        return None, (f"{n} calibration case(s); a {coverage:.0%} radius needs at least {minimum_cases(coverage)} "
                      f"(train more folds or use more training cases)")
    return float(s[k - 1]), ""


@dataclass
class Calibration:
    """Per landmark: the conformal quantile ``q`` (None with a reason when there are too few cases)."""

    coverage: float
    quantiles: dict[str, Optional[float]]
    num_cases: dict[str, int]
    reasons: dict[str, str] = field(default_factory=dict)
    folds: list[str] = field(default_factory=list)
    crop_placement: dict[str, str] = field(default_factory=dict)  # refine stage: fold -> how its crops were placed
    median_error_mm: dict[str, Optional[float]] = field(default_factory=dict)  # pooled validation error, uncalibrated

    def radius(self, name: str, scale: Optional[float]) -> tuple[Optional[float], str]:
        """(radius mm, "") or (None, why there is none)."""
        if name not in self.quantiles:
            return None, f"no calibration for landmark {name!r}"
        q = self.quantiles[name]
        if q is None:
            return None, self.reasons.get(name, "not calibrated")
        if scale is None or not math.isfinite(scale):
            return None, "the calibrated signal needs mirror test-time augmentation, which was off"
        return float(q * scale), ""

    def to_json(self) -> dict:
        return {"coverage": self.coverage, "signal": SIGNAL_DEFINITION, "folds": self.folds,
                **({"crop_placement": self.crop_placement} if self.crop_placement else {}),
                "landmarks": {n: {"q": self.quantiles[n], "num_cases": self.num_cases[n],
                                  "median_error_mm": self.median_error_mm.get(n),
                                  **({"reason": self.reasons[n]} if self.reasons.get(n) else {})}
                              for n in self.quantiles}}

    @staticmethod
    def from_json(d: dict) -> "Calibration":
        lm = d["landmarks"]
        return Calibration(float(d["coverage"]), {n: v.get("q") for n, v in lm.items()},
                           {n: int(v.get("num_cases", 0)) for n, v in lm.items()},
                           {n: v["reason"] for n, v in lm.items() if v.get("reason")}, list(d.get("folds", [])),
                           dict(d.get("crop_placement", {})), {n: v.get("median_error_mm") for n, v in lm.items()})

    @staticmethod
    def load(model_folder: Path) -> Optional["Calibration"]:
        path = Path(model_folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        return Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))


def pool_calibration(model_folder: Path, names: Sequence[str], coverage: float = COVERAGE) -> Calibration:
    """Pool every fold's calibration cases into ``calibration.json`` (written) and return it."""
    model_folder = Path(model_folder)
    scores: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, list[float]] = {n: [] for n in names}
    folds, placement = [], {}
    for f in sorted(model_folder.glob(f"fold_*/{FOLD_CASES_FILE}")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        fold = str(doc.get("fold", f.parent.name.removeprefix("fold_")))
        if fold == "all":  # its 'validation' cases are its training cases: not held out
            continue
        folds.append(fold)
        if doc.get("crop_placement"):
            placement[fold] = doc["crop_placement"]
        for case in doc["cases"]:
            for n, v in case["landmarks"].items():
                if n in scores and v.get("error_mm") is not None and v.get("scale_mm"):
                    scores[n].append(v["error_mm"] / v["scale_mm"])
                if n in errors and v.get("error_mm") is not None:
                    errors[n].append(float(v["error_mm"]))
    quantiles, reasons = {}, {}
    for n in names:
        quantiles[n], reasons[n] = conformal_quantile(scores[n], coverage)
    medians = {n: float(np.median(e)) if e else None for n, e in errors.items()}
    cal = Calibration(coverage, quantiles, {n: len(scores[n]) for n in names}, {n: r for n, r in reasons.items() if r},
                      folds, placement, medians)
    atomic_write_json(model_folder / CALIBRATION_FILE, cal.to_json())
    return cal
