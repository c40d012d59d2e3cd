"""Predicted prostate masks next to predicted landmarks (issue 17).

A model with a segmentation head makes ``lmkreg_predict`` write ``STEM_prostate.nii.gz`` (uint8
0/1 on the input image's grid) beside ``STEM.json`` and ``STEM.mrk.json``, and the JSON gains a
top-level ``"prostate": {"mask_file": "STEM_prostate.nii.gz", "volume_ml": V}`` (the file name
relative to the JSON).  Register and evaluate find a case's predicted mask through that key, so
a mask always belongs to the landmarks it was predicted with.

The reader says *why* there is no mask (no key: a model without a segmentation head; a key whose
file is gone) so a caller can keep the landmark transform and record the reason instead of
failing the case.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import SimpleITK as sitk

from lmkreg.geometry.masks import mask_volume_ml
from lmkreg.io.atomic import atomic_write_json, split_suffix
from lmkreg.io.images import write_image

MASK_KEY = "prostate"
MASK_SUFFIX = "_prostate.nii.gz"


def _lmkreg_json_of(landmark_file: Path) -> Optional[Path]:
    """The lmkreg JSON holding the ``prostate`` key of a landmark file: itself, or for predict's
    ``STEM.mrk.json`` / ``STEM.fcsv`` the twin ``STEM.json`` beside it."""
    p = Path(landmark_file)
    stem, suffix = split_suffix(p)
    if suffix == ".json":
        return p
    twin = p.with_name(f"{stem}.json")
    return twin if twin.is_file() else None


def find_predicted_mask(landmark_file: Union[str, Path]) -> tuple[Optional[Path], Optional[str]]:
    """(mask file, None) for a predicted landmark file whose JSON names an existing mask, else
    (None, why not) in words that name the file."""
    p = Path(landmark_file)
    doc_path = _lmkreg_json_of(p)
    if doc_path is None:
        return None, f"{p.name} is not an lmkreg landmark JSON and has no STEM.json twin: no predicted mask"
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{doc_path}: cannot read the landmark JSON ({exc})"
    entry = doc.get(MASK_KEY) if isinstance(doc, dict) else None
    if entry is None:
        return None, (f"{doc_path.name} has no predicted prostate mask (no '{MASK_KEY}' entry: predicted by a "
                      f"model without a segmentation head?)")
    name = entry.get("mask_file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        return None, f"{doc_path.name}: '{MASK_KEY}' must hold a 'mask_file' name, got {entry!r}"
    mask = doc_path.parent / name
    if not mask.is_file():
        return None, f"{doc_path.name} names the prostate mask {name}, which is not in {doc_path.parent}"
    return mask, None


def attach_mask(landmark_json: Union[str, Path], mask: sitk.Image) -> Path:
    """Write `mask` as ``STEM_prostate.nii.gz`` beside the lmkreg landmark JSON ``STEM.json``
    and give the JSON its ``prostate`` entry, in lmkreg_predict's form.  For callers that
    predict themselves (one-shot register, the benchmarks, tests); lmkreg_predict writes the
    same files on its own."""

    path = Path(landmark_json)
    stem, _ = split_suffix(path)
    out = path.with_name(f"{stem}{MASK_SUFFIX}")
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    binary.CopyInformation(mask)
    write_image(binary, out)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc[MASK_KEY] = {"mask_file": out.name, "volume_ml": round(mask_volume_ml(binary), 3)}
    atomic_write_json(path, doc)
    return out
