"""Did the scan record anything where a landmark was placed?

A TRUS volume is exactly 0 outside its fan, and some exports pad MR with zeros.  A network
trained with the sweep cut (lmkreg.training.augmentation.SweepCut) places an apex that the sweep
missed from the gland's shape, beyond the fan; that may be right (case 009 of the demo's data
came within about 1 mm), but nobody can check it on the image, so the landmark file must say so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.flags import IMAGE, Flag, landmark_flag

# a landmark is "not imaged" when every voxel within this distance (world mm) is exactly 0: about
# two voxels of a TRUS volume, so the fan's interpolated border does not count as signal's absence
NO_SIGNAL_RADIUS_MM = 2.0


def without_signal(image: sitk.Image, points_lps: np.ndarray, radius_mm: float = NO_SIGNAL_RADIUS_MM) -> np.ndarray:
    """Per point (N,): True when every voxel of `image` whose centre lies within `radius_mm` of
    the world LPS point (the nearest voxel when none does) is exactly 0.

    A NaN point or one outside the image grid gives False: "outside the image" is its own flag.
    Multi-component images count a voxel as empty only when all its components are 0.
    """
    points = np.atleast_2d(np.asarray(points_lps, float))
    geom = ImageGeometry.from_image(image)
    array = sitk.GetArrayViewFromImage(image)
    if array.ndim == 4:  # (z, y, x, components)
        array = np.abs(array).max(axis=-1)
    shape = np.asarray(array.shape)
    spacing = geom.spacing_zyx
    half = np.ceil(radius_mm / spacing).astype(int)  # the direction is orthonormal: a ball spans r / spacing voxels
    out = np.zeros(len(points), bool)
    finite = np.isfinite(points).all(axis=1)
    inside = np.zeros(len(points), bool)
    if finite.any():
        inside[finite] = geom.contains_world(points[finite])
    for i in np.flatnonzero(inside):
        centre = geom.world_to_index(points[i][None])[0]
        nearest = np.clip(np.rint(centre).astype(int), 0, shape - 1)
        lo = np.maximum(nearest - half, 0)
        hi = np.minimum(nearest + half, shape - 1)
        axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        near = np.linalg.norm(geom.index_to_world(idx.astype(float)) - points[i], axis=1) <= radius_mm
        voxels = idx[near] if near.any() else nearest[None]
        out[i] = not np.any(array[voxels[:, 0], voxels[:, 1], voxels[:, 2]])
    return out


def not_imaged_flags(image: sitk.Image, landmarks: LandmarkSet, names: Sequence[str]) -> list[Flag]:
    """Flags on the landmark (which lmkreg_register reads to pick a suspect landmark) for the
    predicted landmarks (a LandmarkSet in world LPS mm) that lie where `image` is exactly 0."""
    present = [n for n in names if landmarks.points.get(n) is not None]
    if not present:
        return []
    empty = without_signal(image, landmarks.to_array(present))
    return [landmark_flag(IMAGE, n, "no_image_signal", f"no image signal within {NO_SIGNAL_RADIUS_MM:g} mm (beyond "
                          f"the ultrasound fan or in zero padding): placed from the anatomy around it, not seen",
                          limit=NO_SIGNAL_RADIUS_MM, unit="mm") for n, e in zip(present, empty) if e]
