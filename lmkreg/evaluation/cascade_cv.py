"""Cross-validation predictions of a trained cascade, for model selection (single stage vs
cascade).

The refine stage's own validation predictions (``fold_F/validation``) start from a crop
centred on the *true* landmarks, so they would flatter the cascade.  Here each fold's
localizer and refine networks predict that fold's validation images from the raw files, as
``lmkreg_predict`` does, so the localizer's errors count.  The predictions are written once
to ``TRAINER__MOD_refine/fold_F/cascade_validation/`` and reused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from lmkreg.dataset.layout import Dataset
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import write_lmkreg_json
from lmkreg.inference.cascade import CascadePredictor, cascade_folders
from lmkreg.inference.predictor import LandmarkPredictor, available_folds

CASCADE_SUFFIX = "+cascade"


class IncompleteTrainer(Exception):
    """A trainer's cross-validation cannot be used; the message says why."""


def cascade_cross_validation(dataset: Dataset, results_folder: Path, trainer: str, modality: str,
                             folds: Sequence[int], splits: Optional[list[dict]]) -> Optional[Path]:
    """The refine model folder, with ``cascade_validation`` predictions for every fold in
    `folds` (made now where missing); None when `trainer` has no trained cascade for
    `modality`.  IncompleteTrainer when a fold of either stage is missing or there are no splits."""

    found = cascade_folders(results_folder, trainer, modality)
    if found is None:
        return None
    localizer, refine = found
    if splits is None:
        raise IncompleteTrainer("no splits_final.json: cannot tell which cases each fold of the cascade validates")
    for fold in folds:
        out = refine / f"fold_{fold}" / "cascade_validation"
        if (out / "summary.json").is_file():
            continue
        for folder in (localizer, refine):
            if str(fold) not in available_folds(folder, "final"):
                raise IncompleteTrainer(f"fold {fold} of {folder.name} not trained")
        if int(fold) >= len(splits):
            raise IncompleteTrainer(f"fold {fold} is not in splits_final.json ({len(splits)} folds)")
        predictor = CascadePredictor(LandmarkPredictor(localizer, [str(fold)], optimize=False),
                                     LandmarkPredictor(refine, [str(fold)], optimize=False))
        cases = list(splits[int(fold)]["val"])
        for case in cases:
            pred = predictor.predict(read_image(dataset.image_path(case, modality, "Tr")))
            write_lmkreg_json(pred.with_extras(), out / f"{case}.json")
        atomic_write_json(out / "summary.json", {"trainer": trainer, "modality": modality, "fold": str(fold),
                                                 "num_cases": len(cases),
                                                 "what": "cascade predictions of the fold's validation images"})
    return refine
