"""Helpers on binary masks and crop offsets that prediction, registration and evaluation share.

One home each, low in the layers, so that every user imports the same definition: the
predicted prostate mask (lmkreg.inference.segmentation), the gland surfaces of a registration
(lmkreg.registration.surface) and the mask volumes of evaluation and register
(lmkreg.evaluation.segmentation, lmkreg.registration.predicted_masks) used to hold their own copies.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk


def largest_component(mask: sitk.Image) -> tuple[sitk.Image, int]:
    """(the largest 26-connected foreground component of `mask` (any value > 0 is foreground) as
    a uint8 0/1 image with the mask's geometry, the number of foreground voxels dropped).
    Of two equally large components the first in raster order (z, y, x) is kept; an empty mask
    stays empty."""
    foreground = sitk.Cast(mask > 0, sitk.sitkUInt8)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(foreground, True), sortByObjectSize=True)
    kept = sitk.Cast(labels == 1, sitk.sitkUInt8)
    kept.CopyInformation(mask)
    total = int(np.count_nonzero(sitk.GetArrayViewFromImage(foreground)))
    return kept, total - int(np.count_nonzero(sitk.GetArrayViewFromImage(kept)))


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume (mL) of a mask: its voxels > 0 times the voxel volume (mm^3) / 1000."""
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask) > 0))
    return count * float(np.prod(mask.GetSpacing())) / 1000.0


def crop_offset_limit_mm(crop_jitter_mm: float) -> float:
    """The largest distance between a refine crop's centre and its anchor when the centre is
    offset by up to `crop_jitter_mm` along each axis: the cube's half diagonal, jitter x sqrt 3."""
    return float(crop_jitter_mm) * math.sqrt(3.0)


__all__ = ["crop_offset_limit_mm", "largest_component", "mask_volume_ml"]
