"""Provenance of a prediction and the skip-if-done rule of ``lmkreg_predict`` (issue 25).

An existing ``NAME.json`` is reused only when its provenance record (lmkreg.io.provenance) says it
was predicted from the same image (content hash, DICOM series), as the same modality, by the
same model (checkpoint and plans hashes) with the same options.  Otherwise the case is predicted
again (the file is lmkreg's: ownership was checked before).  A reused output's flags count like
a new one's: the summary and --strict see them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import SimpleITK as sitk

from lmkreg.io.inputs import InputImage
from lmkreg.io.provenance import InputRecord, ModelRecord, Provenance, compare, read_provenance
from lmkreg.trust.flags import UNKNOWN, Flag, read_flags, scoped_flag
from lmkreg.io.dicom import choose_series


def _stages(predictor: Any) -> list[Any]:
    localizer = getattr(predictor, "localizer", None)
    refiner = getattr(predictor, "refiner", None)
    return [localizer, refiner] if localizer is not None and refiner is not None else [predictor]


def predictor_modality(predictor: Any) -> str:
    """The modality a predictor predicts ('MR'), not its configuration name ('MR_localizer')."""
    conf = getattr(predictor, "conf", None)
    return str(getattr(conf, "modality", None) or getattr(predictor, "modality", ""))


def model_provenance(predictor: Any) -> Provenance:
    """A record of the predictor's model and options, without an input (see ``for_input``)."""
    stages = _stages(predictor)
    checkpoint = getattr(stages[-1], "checkpoint", "final")
    model = None
    if all(hasattr(s, "model_folder") for s in stages):
        model = ModelRecord.of([(s.model_folder, list(getattr(s, "folds", []))) for s in stages], checkpoint)
    last = stages[-1]
    options = {"tta": bool(getattr(last, "mirror_tta", False)), "folds": list(getattr(last, "folds", []) or []),
               "cascade": len(stages) == 2, "checkpoint": checkpoint,
               "max_radius_mm": getattr(last, "max_radius_mm", None),
               # a single-stage model's second pass on an off-centre answer changes answers: an output
               # predicted without it is predicted again
               "recentre": len(stages) == 1 and bool(getattr(last, "recentre", False))}
    return Provenance(predictor_modality(predictor), None, model, options)


def for_input(model: Provenance, image: InputImage, read: sitk.Image) -> Provenance:
    """`model`'s record completed with the input `image` (as given) read as `read`."""
    return Provenance(model.modality, InputRecord.of(read, image.path, image.dicom_files()), model.model,
                      dict(model.options), model.lmkreg_version)


def reuse_decision(json_path: Path, wanted: Provenance) -> tuple[bool, str]:
    """(reuse?, why not): reuse `json_path` only when its record matches `wanted` exactly."""
    found = read_provenance(json_path)
    if found is None:
        return False, "it has no provenance record (written by an older lmkreg or edited)"
    diffs = compare(found, wanted)
    return (not diffs), "; ".join(diffs)


def recorded_flags(json_path: Path) -> list[Flag]:
    """The flags of an existing lmkreg landmark JSON (``extras.flags`` / ``flag_details``; one
    case flag when it says ``reliable: false`` without flags): a reused output is as unreliable as
    when it was written."""
    try:
        doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    extras = doc.get("extras", {}) if isinstance(doc, dict) else {}
    names = list(doc.get("landmarks", {})) if isinstance(doc.get("landmarks"), dict) else []
    flags = read_flags(extras, names)
    if extras.get("reliable") is False and not flags:
        flags = [scoped_flag(UNKNOWN, "case", UNKNOWN, "marked unreliable when predicted")]
    return flags



def one_shot_provenance(predictor: Any, image: Path, read: sitk.Image, series: Optional[str] = None) -> Provenance:
    """The record of one image (a file or a DICOM series folder) predicted outside a folder run
    (``lmkreg_register`` one shot)."""

    files = choose_series(image, series).files if Path(image).is_dir() else ()
    model = model_provenance(predictor)
    return Provenance(model.modality, InputRecord.of(read, image, files), model.model, model.options)
