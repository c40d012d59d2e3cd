"""The one interface of lmkreg's predictors, and the one finishing step of their predictions.

``LandmarkPredictor`` (one trained configuration) and ``CascadePredictor`` (localizer + refine)
answer the same questions, so ``predict_folder`` and one-shot ``lmkreg_register`` run either
without asking which one they hold.  ``Predictor`` is that contract, written as a
``typing.Protocol``: a predictor satisfies it by shape, not by inheritance, and
``isinstance(p, Predictor)`` checks the members at run time (tests/test_predictor_interface.py).

Why a finishing step apart from ``predict_array``: the array a predictor runs on is already
preprocessed (a background thread reads and preprocesses the next image while the networks run),
so it no longer knows the source image.  The checks that need the source image (a landmark
outside it or where it recorded nothing, its extent against training) and the prostate mask on
its grid are done afterwards by ``finish_prediction``, the same way for every predictor.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import SimpleITK as sitk

from lmkreg.geometry import ImageGeometry
from lmkreg.inference.prediction import Prediction
from lmkreg.inference.segmentation import mask_on_image


@runtime_checkable
class Predictor(Protocol):
    """What ``predict_folder`` and one-shot ``lmkreg_register`` use of a predictor.

    ``names``: the landmarks in output order; ``modality``: the name the progress bar shows;
    ``folds``: the folds ensembled; ``mirror_tta``: mirrored passes on (the calibrated radii need
    them); ``has_segmentation``: the predictions carry a prostate mask (``NAME_prostate.nii.gz``)."""

    names: list[str]
    modality: str
    has_segmentation: bool

    @property
    def folds(self) -> list[str]:
        """The folds whose networks are ensembled."""
        ...

    @property
    def mirror_tta(self) -> bool:
        """True when the mirrored passes run (test-time augmentation)."""
        ...

    @property
    def description(self) -> str:
        """The model(s) in words, e.g. ``HeatmapMatchingTrainer__MR`` or ``A + B`` for a cascade."""
        ...

    def preprocess(self, image: sitk.Image) -> tuple[Any, ImageGeometry]:
        """(what ``predict_array`` takes, the grid it lies on) for one source image."""
        ...

    def predict_array(self, array: Any, grid: ImageGeometry, image: Optional[sitk.Image] = None) -> Prediction:
        """The prediction for a preprocessed input, before the source image checks; `image`, the
        source image, lets a single-stage model predict again on a re-centred crop."""
        ...

    def check_image(self, pred: Prediction, image_geometry: ImageGeometry,
                    image: Optional[sitk.Image] = None) -> None:
        """Add the flags that need the source image (its grid, and given it, its voxels)."""
        ...

    def predict(self, image: sitk.Image) -> Prediction:
        """Preprocess, predict and finish one image."""
        ...

    def trust_notes(self) -> list[str]:
        """What a run cannot check (no calibration, no statistics, no mirroring), said once per run."""
        ...


def finish_prediction(predictor: Predictor, pred: Prediction, image_geometry: ImageGeometry,
                      image: Optional[sitk.Image] = None) -> Prediction:
    """The finishing step every prediction goes through once its source image is known: the
    predictor's image checks (flags), then, for a model with a segmentation head, the prostate
    mask on the source image's grid (``pred.mask``, ``pred.volume_ml``).  Returns `pred`."""
    predictor.check_image(pred, image_geometry, image)
    if pred.seg_layers or pred.seg_fallback is not None:
        pred.mask, pred.volume_ml = mask_on_image(pred.seg_layers, pred.seg_fallback, image_geometry)
    return pred


__all__ = ["Predictor", "finish_prediction"]
