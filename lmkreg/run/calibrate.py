"""What training stores with the model for trust: the training distribution
(``training_statistics.json``) and the fold's calibration cases pooled into ``calibration.json``.

Every configuration gets its own, cascade stages included: the model folder
``TRAINER__MR_refine`` is calibrated on what the refine stage predicts at inference (its crop
placed by the localizer, see lmkreg.trust.calibration), ``TRAINER__MR_localizer`` on the
localizer's whole-image predictions.  The dataset's files are looked up by the
configuration's modality (``MR``), never by the configuration's name (``MR_refine``).

This is the run layer's part of trust: it reads the files and runs the predictors; the maths
(conformal quantiles, the statistics' document) is lmkreg.trust, which imports none of this.
"""
from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from lmkreg.config.plans import Stage
from lmkreg.errors import LmkregError
from lmkreg.geometry import ImageGeometry
from lmkreg.geometry.masks import crop_offset_limit_mm
from lmkreg.inference.cascade import CascadePredictor
from lmkreg.inference.predictor import LandmarkPredictor
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.images import read_image
from lmkreg.io.landmark_files import read_landmarks
from lmkreg.preprocessing.preprocessor import landmark_anchor
from lmkreg.preprocessing.storage import load_array
from lmkreg.registration.landmark_fit import register_landmarks
from lmkreg.registration.two_landmarks import RotationPrior
from lmkreg.trust.calibration import FOLD_CASES_FILE, SIGNAL_DEFINITION, Calibration, pool_calibration
from lmkreg.trust.plausibility import STATISTICS_FILE, padding_statistics, training_statistics


def store_trust_data(trainer, model_folder: Path, dataset, preprocessed: Path, configuration: str,
                     trainer_modules: Sequence[str] = (), device: Optional[str] = None) -> None:
    """Called once a fold has finished (main process only): statistics of every training case
    of the modality, then the fold's validation cases as calibration cases (none for 'all',
    whose validation cases are its training cases).  `configuration`: the configuration's name (MR,
    MR_localizer, MR_refine).  A failure here warns and leaves the trained model as it is."""
    if not getattr(getattr(trainer, "ddp", None), "is_main", True):
        return
    try:
        _store(trainer, model_folder, dataset, preprocessed, configuration, trainer_modules, device)
    except (LmkregError, OSError, ValueError, KeyError) as exc:  # the trained model itself is kept either way
        warnings.warn(f"{model_folder.name} fold {trainer.fold}: calibration / training statistics not written "
                      f"({exc}); predictions will have no error radius or plausibility checks", RuntimeWarning)


def _store(trainer, model_folder: Path, dataset, preprocessed: Path, configuration: str,
           trainer_modules: Sequence[str], device: Optional[str]) -> None:
    conf = trainer.plans.configuration(configuration)
    modality = conf.modality  # the dataset's files are named by modality
    names = list(trainer.plans.landmarks)
    path = write_training_statistics(model_folder, dataset, modality, Path(preprocessed) / conf.data_identifier,
                                     names, dataset.cases("Tr", modality))
    if getattr(conf, "stage", Stage.SINGLE) == Stage.REFINE:
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
        extra = crop_offset_limit_mm(conf.crop_jitter_mm)
        how = f"planned: crop centre up to {conf.crop_jitter_mm:.1f} mm off per axis"
    off["max_distance_truth_centred_mm"] = off["max_distance_mm"]
    off["max_distance_mm"] = float(off["max_distance_mm"] + extra)
    off["refine_crop_offsets"] = how
    atomic_write_json(path, doc)


def _training_records(preprocessed_data: Path, cases: Sequence[str]) -> tuple[list[tuple[dict, np.ndarray]], list[str]]:
    """(metadata, stored array) of every case preprocessed in `preprocessed_data` (``CASE.json``
    and ``CASE.b2nd``), and the cases found; cases without files are skipped."""
    records, used = [], []
    for case in cases:
        meta_path = Path(preprocessed_data) / f"{case}.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        records.append((meta, load_array(Path(preprocessed_data) / f"{case}.b2nd")))
        used.append(case)
    return records, used


def write_training_statistics(model_folder: Path, dataset, modality: str, preprocessed_data: Path,
                              names: Sequence[str], cases: Sequence[str]) -> Path:
    """Write ``training_statistics.json`` of `cases` (training cases of `modality`): their
    preprocessed files (``CASE.json`` and ``CASE.b2nd`` in `preprocessed_data`) and, for the
    pair statistics, the rigid fit of each case's landmarks onto the first other modality's."""
    records, used = _training_records(preprocessed_data, cases)
    pair_rms, pair_rotvecs = [], []
    others = [m for m in dataset.spec.modalities if m != modality]
    for case in used:
        for other in others[:1]:
            try:
                a = read_landmarks(dataset.landmarks_path(case, modality))
                b = read_landmarks(dataset.landmarks_path(case, other))
                fit = register_landmarks(a, b, names)
            except Exception:  # a case without a usable pair says nothing about pairs
                continue
            pair_rms.append(fit.rms_mm)
            pair_rotvecs.append(Rotation.from_matrix(fit.transform.rotation).as_rotvec())
    # the orientation prior of a two-landmark registration (lmkreg.registration.two_landmarks)
    rotation_doc = RotationPrior(np.asarray(pair_rotvecs)).to_json(modality, others[0]) if len(pair_rotvecs) >= 2 else None
    path = Path(model_folder) / STATISTICS_FILE
    atomic_write_json(path, training_statistics(modality, names, records, pair_rms, rotation_doc))
    return path


def refresh_image_statistics(model_folder: Path, preprocessed_data: Path, cases: Sequence[str]) -> Optional[Path]:
    """Add the padding ranges (``image.padding``: zeros near the true landmarks and inside the
    image, see lmkreg.trust.plausibility.padding_statistics) to a ``training_statistics.json``
    written before they existed, from the same preprocessed training cases, and leave every other
    entry as it is (a refine stage's widened offsets came from its training run).  Without them the
    whole-crop padding check flags as before.  Returns the file, or None when the model has none."""
    path = Path(model_folder) / STATISTICS_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("image", {})["padding"] = padding_statistics(_training_records(preprocessed_data, cases)[0])
    atomic_write_json(path, doc)
    return path


def calibrate_fold(model_folder: Path, fold: str, dataset, modality: str, cases: Sequence[str],
                   trainer_modules: Sequence[str] = (), device: Optional[str] = None) -> Calibration:
    """Predict `cases` (a fold's validation cases, with ground truth in `dataset`; `modality`
    names the dataset's files, e.g. MR for MR_refine) with that fold's final model and mirror
    TTA, as the configuration predicts at inference (a refine stage: see the module docstring),
    store each landmark's error and signal scale in ``fold_F/calibration_cases.json``, and pool
    all folds into ``calibration.json``."""
    model_folder = Path(model_folder)
    predictor = LandmarkPredictor(model_folder, folds=[str(fold)], device=device, mirror_tta=True,
                                  trainer_modules=trainer_modules, optimize=False)
    predict, placement = stage_prediction(predictor, str(fold), trainer_modules, device)
    rows = []
    for case in cases:
        truth = read_landmarks(dataset.landmarks_path(case, modality))
        pred = predict(read_image(dataset.image_path(case, modality)), truth.to_array(predictor.names), case)
        lm = {}
        for n in predictor.names:
            p, t = pred.landmarks.points.get(n), truth.points.get(n)
            err = None if p is None or t is None else float(np.linalg.norm(p - t))
            sig = pred.signals.get(n, {})
            lm[n] = {"error_mm": err, "scale_mm": sig.get("scale_mm"), "mirror_gap_mm": sig.get("mirror_gap_mm"),
                     "heatmap_spread_mm": sig.get("heatmap_spread_mm")}
        rows.append({"case": case, "landmarks": lm})
    atomic_write_json(model_folder / f"fold_{fold}" / FOLD_CASES_FILE,
                      {"fold": str(fold), "modality": modality, "signal": SIGNAL_DEFINITION,
                       **({"crop_placement": placement} if placement else {}), "cases": rows})
    return pool_calibration(model_folder, predictor.names)


def stage_prediction(predictor, fold: str, trainer_modules: Sequence[str] = (), device: Optional[str] = None):
    """(predict(image, truth (L, 3) world LPS, case) -> Prediction, crop placement or None):
    how `predictor`'s configuration predicts at inference.  Single stage and localizer: the
    image as it is.  Refine: after the localizer's fold `fold` when it is trained (out of fold
    for that fold's validation cases), else a crop centred on the true centroid plus a random
    offset of up to the planned ``crop_jitter_mm`` per axis (seeded by the case name)."""
    conf = predictor.conf
    if getattr(conf, "stage", Stage.SINGLE) != Stage.REFINE:
        return (lambda image, truth, case: predictor.predict(image)), None
    trainer = predictor.model_folder.name.partition("__")[0]
    loc = predictor.model_folder.parent / f"{trainer}__{conf.previous_stage}"
    if fold != "all" and (loc / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        cascade = CascadePredictor(LandmarkPredictor(loc, folds=[fold], device=device, mirror_tta=True,
                                                     trainer_modules=trainer_modules, optimize=False), predictor)
        return ((lambda image, truth, case: cascade.predict(image)),
                f"localizer: the crop placed by {loc.name} fold {fold} (which did not train on these cases), "
                f"as lmkreg_predict chains the stages")
    jitter = float(conf.crop_jitter_mm)

    def jittered(image, truth, case):
        rng = np.random.default_rng(zlib.crc32(case.encode("utf-8")))
        geometry = ImageGeometry.from_image(image)
        anchor = landmark_anchor(truth)
        if anchor is None:
            anchor = geometry.index_to_world((np.asarray(geometry.shape_zyx, float) - 1) / 2)
        array, grid = predictor.preprocess(image, anchor + rng.uniform(-jitter, jitter, 3))
        return predictor.predict_array(array, grid, image_geometry=geometry)

    return jittered, (f"planned jitter: the crop centred on the true landmark centroid offset by a random "
                      f"+-{jitter:.1f} mm per axis ({loc.name} has no trained fold {fold}); the radius does not "
                      f"include the effect of the real localizer")
