"""What training stores with the model for trust: the training distribution
(``training_statistics.json``) and the fold's calibration cases pooled into ``calibration.json``."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

from lmkreg.errors import LmkregError


def store_trust_data(trainer, model_folder: Path, dataset, preprocessed: Path, modality: str,
                     trainer_modules: Sequence[str] = (), device: Optional[str] = None) -> None:
    """Called once a fold has finished (main process only): statistics of every training case
    of the modality, then the fold's validation cases as calibration cases (none for 'all').
    A failure here warns and leaves the trained model as it is."""
    if not getattr(getattr(trainer, "ddp", None), "is_main", True):
        return
    try:
        _store(trainer, model_folder, dataset, preprocessed, modality, trainer_modules, device)
    except (LmkregError, OSError, ValueError, KeyError) as exc:  # the trained model itself is kept either way
        warnings.warn(f"{model_folder.name} fold {trainer.fold}: calibration / training statistics not written "
                      f"({exc}); predictions will have no error radius or plausibility checks", RuntimeWarning)


def _store(trainer, model_folder: Path, dataset, preprocessed: Path, modality: str,
           trainer_modules: Sequence[str], device: Optional[str]) -> None:
    from lmkreg.trust.calibration import calibrate_fold
    from lmkreg.trust.plausibility import write_training_statistics

    conf = trainer.plans.configuration(modality)
    names = list(trainer.plans.landmarks)
    write_training_statistics(model_folder, dataset, modality, Path(preprocessed) / conf.data_identifier, names,
                              dataset.cases("Tr", modality))
    val = list(getattr(trainer, "val_cases", []) or [])
    if val:
        calibrate_fold(model_folder, str(trainer.fold), dataset, modality, val, trainer_modules, device)
