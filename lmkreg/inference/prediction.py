"""What a predictor returns for one image: landmarks in world LPS mm with their confidence, flags and
(for models with a segmentation head) the prostate mask.  Plain data in its own module so that the
predictors (lmkreg.inference.predictor, lmkreg.inference.cascade), the predictor interface and the
run layer share it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import SimpleITK as sitk

from lmkreg.io.json_values import finite_or_none
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import Flag, flag_details, flag_texts


@dataclass
class Prediction:
    """Landmarks in world LPS mm with per-landmark confidence measures (mm).

    ``signals`` per landmark: mirror_gap_mm (half the plain-vs-mirrored distance, RMS over
    folds), heatmap_spread_mm, between_folds_mm (RMS distance of the fold means from the
    ensemble) and scale_mm (the calibrated signal).  ``radius_mm``: the calibrated error radius
    at ``coverage`` (None, with ``radius_note`` saying why, when there is none).
    ``validation_median_mm``: the model's pooled median validation error per landmark,
    uncalibrated, which the pair check counts when there is no radius.  ``flags``: every
    reason not to trust the case (lmkreg.trust.flags.Flag); a flag naming a landmark concerns that
    landmark, the others ("case: ...", "image: ...") the whole case."""

    landmarks: LandmarkSet
    spread_mm: dict[str, float]
    fold_disagreement_mm: dict[str, float]
    flags: list[Flag] = field(default_factory=list)
    signals: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    radius_mm: dict[str, Optional[float]] = field(default_factory=dict)
    radius_note: dict[str, str] = field(default_factory=dict)
    coverage: Optional[float] = None
    training_pair_rms_mm: Optional[dict] = None
    training_pair_rotation: Optional[dict] = None  # orientation prior of two-landmark registrations
    validation_median_mm: dict[str, Optional[float]] = field(default_factory=dict)
    # the input's padding figures the image check judged (lmkreg.trust.plausibility: whole crop and
    # near the landmarks), written as trust.image so a user can check a cleared or fired check
    image_signals: dict[str, Optional[float]] = field(default_factory=dict)
    # where the error estimate comes from (lmkreg.trust.error_estimate.ErrorEstimate.to_json)
    error_estimate: Optional[dict] = None
    # a single-stage model's second pass on a crop re-centred on its first answer (what it moved;
    # lmkreg.inference.predictor.LandmarkPredictor._recentred), written as trust.recentred
    recentring: Optional[dict] = None
    # models with a segmentation head (lmkreg.inference.segmentation): the prostate mask on the
    # input image's grid (uint8 0/1) and its volume, from the probability layers on the network grids
    mask: Optional[sitk.Image] = None
    volume_ml: Optional[float] = None
    seg_layers: list = field(default_factory=list, repr=False)
    seg_fallback: Optional[object] = field(default=None, repr=False)

    @property
    def reliable(self) -> bool:
        return not self.flags

    def landmark_flagged(self, name: str) -> bool:
        """True when a flag names this landmark or concerns the whole case."""
        return any(f.concerns(name) for f in self.flags)

    def trust_document(self) -> dict:
        """The ``trust`` extras block of the lmkreg JSON (see documentation/inference.md)."""
        lm = {}
        for n in self.landmarks.names:
            sig = {k: finite_or_none(v) for k, v in self.signals.get(n, {}).items()}
            lm[n] = {"radius_mm": finite_or_none(self.radius_mm.get(n)), "flagged": self.landmark_flagged(n), **sig}
            if self.validation_median_mm.get(n) is not None:
                lm[n]["validation_median_error_mm"] = finite_or_none(self.validation_median_mm[n])
            if self.radius_mm.get(n) is None and self.radius_note.get(n):
                lm[n]["radius_unavailable"] = self.radius_note[n]
        return {"coverage": self.coverage, **(self.error_estimate or {}), "landmarks": lm,
                "training_pair_rms_mm": self.training_pair_rms_mm,
                **({"training_pair_rotation": self.training_pair_rotation} if self.training_pair_rotation else {}),
                **({"image": {k: finite_or_none(v) for k, v in self.image_signals.items()}}
                   if self.image_signals else {}),
                **({"recentred": self.recentring} if self.recentring else {})}

    def describe(self, name: str) -> str:
        """One line for a landmark (the Slicer control point description)."""
        r = self.radius_mm.get(name)
        text = (f"within {r:.1f} mm at {self.coverage:.0%}" if r is not None and self.coverage
                else f"error radius unavailable: {self.radius_note.get(name, 'no calibration')}")
        return text + ("; UNRELIABLE" if self.landmark_flagged(name) else "")

    def with_extras(self) -> LandmarkSet:
        """The landmark set carrying its confidence as extras (for the lmkreg JSON)."""
        extras = {"confidence": {n: {"heatmap_spread_mm": finite_or_none(self.spread_mm.get(n)),
                                     "fold_disagreement_mm": finite_or_none(self.fold_disagreement_mm.get(n))}
                                 for n in self.landmarks.names},
                  "reliable": self.reliable, "flags": flag_texts(self.flags), "flag_details": flag_details(self.flags),
                  "trust": self.trust_document()}
        return LandmarkSet(dict(self.landmarks.points), extras)
