"""What training stores with the model for trust: the training distribution
(``training_statistics.json``) and the fold's calibration cases pooled into ``calibration.json``.

Every configuration gets its own, cascade stages included: the model folder
``TRAINER__MR_refine`` is calibrated on what the refine stage predicts at inference (its crop
placed by the localizer, see lmkreg.trust.calibration), ``TRAINER__MR_localizer`` on the
localizer's whole-image predictions.  The dataset's files are looked up by the
configuration's modality (``MR``), never by the configuration's name (``MR_refine``).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lmkreg.errors import LmkregError


def store_trust_data(trainer, model_folder: Path, dataset, preprocessed: Path, modality: str,
                     trainer_modules: Sequence[str] = (), device: Optional[str] = None) -> None:
    """Called once a fold has finished (main process only): statistics of every training case
    of the modality, then the fold's validation cases as calibration cases (none for 'all',
    whose validation cases are its training cases).  `modality`: the configuration's name (MR,
    MR_localizer, MR_refine).  A failure here warns and leaves the trained model as it is."""
    if not getattr(getattr(trainer, "ddp", None), "is_main", True):
        return
    try:
        _store(trainer, model_folder, dataset, preprocessed, modality, trainer_modules, device)
    except (LmkregError, OSError, ValueError, KeyError) as exc:  # the trained model itself is kept either way
        warnings.warn(f"{model_folder.name} fold {trainer.fold}: calibration / training statistics not written "
                      f"({exc}); predictions will have no error radius or plausibility checks", RuntimeWarning)


def _store(trainer, model_folder: Path, dataset, preprocessed: Path, configuration: str,
           trainer_modules: Sequence[str], device: Optional[str]) -> None:
    from lmkreg.trust.calibration import calibrate_fold
    from lmkreg.trust.plausibility import write_training_statistics

    conf = trainer.plans.configuration(configuration)
    modality = conf.modality  # the dataset's files are named by modality
    names = list(trainer.plans.landmarks)
    path = write_training_statistics(model_folder, dataset, modality, Path(preprocessed) / conf.data_identifier,
                                     names, dataset.cases("Tr", modality))
    if getattr(conf, "stage", "single") == "refine":
        widen_refine_offsets(path, conf, getattr(trainer, "refine_crop_offsets", None))
    val = list(getattr(trainer, "val_cases", []) or [])
    if val and str(trainer.fold) != "all":
        calibrate_fold(model_folder, str(trainer.fold), dataset, modality, val, trainer_modules, device)


def widen_refine_offsets(path: Path, conf, offsets) -> None:
    """A refine stage meets its landmarks off the crop centre by the localizer's error, not at
    the truth-centred position of its stored training boxes: the statistics' "landmarks' centre
    relative to the crop centre" is widened to the offsets its training crops had (measured:
    each case's out-of-fold localizer error; planned: up to ``crop_jitter_mm`` per axis), so the
    plausibility check flags only what lies beyond them."""
    from lmkreg.io.atomic import atomic_write_json

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    off = doc.get("landmarks", {}).get("offset")
    if not off:
        return
    measured = ([c.error_world for c in offsets.measured()]
                if offsets is not None and offsets.source == "measured" else [])
    if measured:
        extra = float(max(np.linalg.norm(e) for e in measured))
        how = (f"measured: the out-of-fold error of {offsets.localizer} (largest {extra:.1f} mm, "
               f"{len(measured)} cases)")
    else:
        from lmkreg.geometry.masks import crop_offset_limit_mm

        extra = crop_offset_limit_mm(conf.crop_jitter_mm)
        how = f"planned: crop centre up to {conf.crop_jitter_mm:.1f} mm off per axis"
    off["max_distance_truth_centred_mm"] = off["max_distance_mm"]
    off["max_distance_mm"] = float(off["max_distance_mm"] + extra)
    off["refine_crop_offsets"] = how
    atomic_write_json(path, doc)
