"""The predicted prostate mask on the input image's grid (models of a ``<Trainer>_Seg``).

The predictor averages the prostate probability (sigmoid of the segmentation logit) over the
folds and, with mirror test-time augmentation, over the plain and the mirrored pass (flipped
back) on its preprocessed grid: a ``SegLayer``.  ``mask_on_image`` brings it to the input
image's grid: the probability is resampled with linear interpolation by SimpleITK onto a grid
with exactly the input's size, origin, spacing and direction, thresholded at 0.5 (uint8 0/1),
and only the largest connected component is kept.

A cascade's mask is its refine stage's: the probabilities of the (up to 8) blended refine
crops, weighted like their landmarks, wherever a crop covers the voxel; outside every refine
crop the localizer's probability is used (the ``fallback`` layer).  A single stage gives 0
outside its planned grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from lmkreg.geometry import ImageGeometry
from lmkreg.geometry.masks import largest_component, mask_volume_ml
from lmkreg.io.ownership import LMKREG_MASK_NOTE
from lmkreg.training.segmentation import split_outputs
import json

THRESHOLD = 0.5
MASK_SUFFIX = "_prostate.nii.gz"


@dataclass
class SegLayer:
    """Prostate probability (Z, Y, X) on a preprocessed grid, with its blending weight."""

    probability: np.ndarray
    grid: ImageGeometry
    weight: float = 1.0


def has_segmentation(trainer: type) -> bool:
    """True when the trainer's networks carry the prostate head (lmkreg.training.segmentation)."""
    return bool(getattr(trainer, "has_segmentation", False))


def split(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(landmark channels, prostate probability (Z, Y, X)) of one multi-task output of batch 1."""

    landmarks, logits = split_outputs(outputs)
    return landmarks, torch.sigmoid(logits.float())[0, 0]


def _resample(array: np.ndarray, grid: ImageGeometry, reference: sitk.Image) -> np.ndarray:
    image = grid.make_image(np.asarray(array, np.float32))
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def probability_on_image(layers: Sequence[SegLayer], fallback: Optional[SegLayer],
                         image_geometry: ImageGeometry) -> np.ndarray:
    """Prostate probability (Z, Y, X) on the input grid: the weighted mean of the layers that
    cover each voxel, else the fallback's value (else 0)."""
    reference = image_geometry.make_image(np.zeros(image_geometry.shape_zyx, np.uint8))
    shape = tuple(image_geometry.shape_zyx)
    num, den = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for layer in layers:
        num += np.float32(layer.weight) * _resample(layer.probability, layer.grid, reference)
        den += np.float32(layer.weight) * _resample(np.ones(layer.probability.shape, np.float32), layer.grid,
                                                    reference)
    out = (_resample(fallback.probability, fallback.grid, reference) if fallback is not None
           else np.zeros(shape, np.float32))
    covered = den > 1e-6
    out[covered] = num[covered] / den[covered]
    return out


def mask_on_image(layers: Sequence[SegLayer], fallback: Optional[SegLayer],
                  image_geometry: ImageGeometry) -> tuple[sitk.Image, float]:
    """(uint8 0/1 mask with the input image's exact geometry, its volume in mL)."""
    prob = probability_on_image(layers, fallback, image_geometry)
    binary = image_geometry.make_image((prob > THRESHOLD).astype(np.uint8))
    mask, _ = largest_component(binary)
    image_geometry.apply_to(mask)  # the filters keep it; set it again from the one source of truth
    return mask, mask_volume_ml(mask)


def mask_path_for(json_path: Path) -> Path:
    """``<stem>_prostate.nii.gz`` beside ``<stem>.json``."""
    return json_path.with_name(json_path.name[: -len(".json")] + MASK_SUFFIX)


def write_mask(mask: sitk.Image, path: Union[str, Path]) -> None:
    """Write the mask (compressed NIfTI) marked as lmkreg's in its header description, so a
    later run knows it may replace it (lmkreg.io.ownership)."""
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.SetMetaData("ITK_FileNotes", LMKREG_MASK_NOTE)
    sitk.WriteImage(mask, str(path), True)


def prostate_record(json_path: Path, volume_ml: Optional[float]) -> dict:
    """The ``prostate`` entry of ``<stem>.json``: the mask's file name (relative) and volume."""
    return {"mask_file": mask_path_for(json_path).name,
            "volume_ml": None if volume_ml is None else float(volume_ml)}


def read_prostate_record(json_path: Union[str, Path]) -> Optional[dict]:
    """``{"mask_file": absolute Path, "volume_ml": float}`` of a prediction JSON, or None."""

    p = Path(json_path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    rec = doc.get("prostate") if isinstance(doc, dict) else None
    if not isinstance(rec, dict) or "mask_file" not in rec:
        return None
    return {"mask_file": p.parent / rec["mask_file"], "volume_ml": rec.get("volume_ml")}


__all__ = ["SegLayer", "has_segmentation", "split", "probability_on_image", "mask_on_image",
           "mask_path_for", "write_mask", "prostate_record",
           "read_prostate_record", "MASK_SUFFIX", "THRESHOLD"]
