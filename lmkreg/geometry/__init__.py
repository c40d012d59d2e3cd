"""Geometry core: one coordinate convention (world LPS mm; voxel (z, y, x)) for all of lmkreg."""
from lmkreg.geometry.canonical import (CANONICAL_ORIENTATION, orientation_code,
                                       reorient_to_canonical, residual_obliquity_deg)
from lmkreg.geometry.spaces import ImageGeometry, apply_affine, rotation_direction

__all__ = ["ImageGeometry", "apply_affine", "rotation_direction", "CANONICAL_ORIENTATION",
           "orientation_code", "reorient_to_canonical", "residual_obliquity_deg"]
