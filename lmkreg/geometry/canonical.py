"""Canonical orientation: every image is seen by the networks the same way round.

The canonical orientation is LPS: array axis x points to patient Left, y to Posterior,
z to Superior (direction matrix closest to identity).  Reorientation only permutes and
flips array axes, so it is lossless and world coordinates of every voxel are unchanged;
landmarks (kept in world LPS) therefore follow exactly, and their canonical voxel
coordinates are ``ImageGeometry.from_image(canonical).world_to_index(points)``.

An oblique image keeps its residual obliquity (a rotation of less than 45 degrees per
axis); removing it needs resampling, which preprocessing does.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

CANONICAL_ORIENTATION = "LPS"


def orientation_code(image: sitk.Image) -> str:
    """Three-letter code of the closest orientation, e.g. 'LPS' or 'RAI' (ITK convention:
    the letter names the direction each array axis x, y, z points to)."""
    return orientation_code_from_direction(image.GetDirection())


def orientation_code_from_direction(direction) -> str:
    """orientation_code of a direction matrix (9 values, row-major, or 3x3)."""
    d = tuple(float(v) for v in np.asarray(direction, dtype=float).ravel())
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(d)


def canonical_axis_order(direction) -> np.ndarray:
    """Array axis (x=0, y=1, z=2) that becomes each world axis L, P, S in ``reorient_to_canonical``.

    Taken from ITK's orientation code, the assignment ``DICOMOrient`` makes, so it is a
    permutation even for strongly oblique grids, where the largest direction cosine of two
    world axes can lie in the same array axis."""
    code = orientation_code_from_direction(direction)
    world_of_array = [("LPS".find(c) if c in "LPS" else "RAI".find(c)) for c in code]
    if sorted(world_of_array) != [0, 1, 2]:  # pragma: no cover - ITK always returns a permutation
        raise ValueError(f"orientation code {code!r} is not a permutation of the world axes")
    return np.argsort(world_of_array)


def reorient_to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip array axes so the image is closest to LPS.  Voxel values are not resampled."""
    if orientation_code(image) == CANONICAL_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def residual_obliquity_deg(image: sitk.Image) -> float:
    """Angle (degrees) between the image's direction matrix and the identity."""
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    cos = np.clip((np.trace(d) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))
