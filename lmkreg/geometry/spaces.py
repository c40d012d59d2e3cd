"""The index <-> world mapping of a 3D image.

Convention (documentation/coordinates.md):

* world points are physical LPS millimetres, ordered (x, y, z) = (L, P, S), exactly the
  physical space of ITK / SimpleITK;
* voxel points are *continuous* indices into numpy arrays, ordered (z, y, x) like the
  array axes, with voxel centres at integer values;
* ``world = origin + D @ diag(spacing) @ (i, j, k)`` where (i, j, k) = (x, y, z) index,
  D's columns are the world directions of the array's x, y, z axes (ITK's direction).

Every function here is vectorised over leading dimensions: points have shape (..., 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

ORTHONORMAL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ImageGeometry:
    """Grid of a 3D image: array shape (z, y, x), spacing/origin in (x, y, z), direction 3x3."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, ITK order

    @staticmethod
    def create(shape_zyx: Sequence[int], spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
               origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
               direction: Sequence[float] | np.ndarray = np.eye(3)) -> "ImageGeometry":
        """Build a geometry from loose sequences, checking it is a valid 3D grid."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        geom = ImageGeometry(tuple(int(s) for s in shape_zyx),
                             tuple(float(s) for s in spacing_xyz),
                             tuple(float(o) for o in origin_xyz),
                             tuple(float(v) for v in d.ravel()))
        problem = geom.problem()
        if problem:
            raise ValueError(problem)
        return geom

    @staticmethod
    def from_image(image: sitk.Image) -> "ImageGeometry":
        """Geometry of a SimpleITK image (which must be 3D)."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return ImageGeometry(tuple(int(s) for s in reversed(image.GetSize())),
                             tuple(float(s) for s in image.GetSpacing()),
                             tuple(float(o) for o in image.GetOrigin()),
                             tuple(float(v) for v in image.GetDirection()))

    def problem(self) -> str | None:
        """Why this grid is unusable, or None: positive sizes, spacing, orthonormal direction."""
        if len(self.shape_zyx) != 3 or min(self.shape_zyx) < 1:
            return f"image size {tuple(reversed(self.shape_zyx))} is not a 3D grid"
        sp = np.asarray(self.spacing_xyz)
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            return f"voxel spacing {tuple(sp)} must be positive"
        if not np.all(np.isfinite(self.origin_xyz)):
            return f"origin {self.origin_xyz} is not finite"
        d = self.direction_matrix
        if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
            return "direction matrix is not orthonormal"
        return None

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.spacing_xyz[::-1], dtype=float)

    def index_to_world_affine(self) -> np.ndarray:
        """4x4 matrix taking homogeneous voxel (z, y, x, 1) to world LPS (x, y, z, 1)."""
        m = np.eye(4)
        # columns for index (x, y, z) are D * spacing; reorder columns for (z, y, x) input
        cols_xyz = self.direction_matrix * np.asarray(self.spacing_xyz)[None, :]
        m[:3, :3] = cols_xyz[:, ::-1]
        m[:3, 3] = self.origin_xyz
        return m

    def world_to_index_affine(self) -> np.ndarray:
        """4x4 matrix taking world LPS (x, y, z, 1) to voxel (z, y, x, 1)."""
        return np.linalg.inv(self.index_to_world_affine())

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (z, y, x), shape (..., 3) -> world LPS mm (..., 3)."""
        return apply_affine(self.index_to_world_affine(), index_zyx)

    def world_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """World LPS mm (..., 3) -> continuous voxel indices (z, y, x), shape (..., 3)."""
        return apply_affine(self.world_to_index_affine(), points_lps)

    def contains_index(self, index_zyx: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """True where a continuous index lies inside the grid (voxel centres -margin .. n-1+margin)."""
        idx = np.asarray(index_zyx, dtype=float)
        hi = np.asarray(self.shape_zyx, dtype=float) - 1 + margin
        return np.all((idx >= -margin) & (idx <= hi), axis=-1)

    def contains_world(self, points_lps: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """True where a world point lies inside the image's extent (margin in voxels)."""
        return self.contains_index(self.world_to_index(points_lps), margin)

    def voxel_centres_world(self) -> np.ndarray:
        """World LPS coordinates of every voxel centre, shape (*shape_zyx, 3).  Memory-heavy."""
        grids = np.meshgrid(*[np.arange(n, dtype=float) for n in self.shape_zyx], indexing="ij")
        return self.index_to_world(np.stack(grids, axis=-1))

    def make_image(self, array_zyx: np.ndarray) -> sitk.Image:
        """SimpleITK image with this geometry holding `array_zyx` (shape must match)."""
        arr = np.asarray(array_zyx)
        if tuple(arr.shape) != tuple(self.shape_zyx):
            raise ValueError(f"array shape {arr.shape} != geometry shape {self.shape_zyx}")
        image = sitk.GetImageFromArray(arr)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        """Copy spacing, origin and direction onto `image` (in place)."""
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)

    def same_as(self, other: "ImageGeometry", tolerance_mm: float = 1e-3) -> bool:
        """Same grid: same shape, and every corner maps to the same world point within tolerance."""
        if tuple(self.shape_zyx) != tuple(other.shape_zyx):
            return False
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.shape_zyx], indexing="ij")).reshape(3, -1).T
        diff = self.index_to_world(corners) - other.index_to_world(corners)
        return bool(np.max(np.abs(diff)) <= tolerance_mm)

    def to_json(self) -> dict:
        return {"shape_zyx": list(self.shape_zyx), "spacing_xyz": list(self.spacing_xyz),
                "origin_xyz": list(self.origin_xyz), "direction": list(self.direction)}

    @staticmethod
    def from_json(d: dict) -> "ImageGeometry":
        return ImageGeometry.create(d["shape_zyx"], d["spacing_xyz"], d["origin_xyz"], d["direction"])


def image_centre_world(geometry: ImageGeometry) -> np.ndarray:
    """World LPS point at the centre of the voxel grid (the anchor of single-stage and localizer
    grids: planning measures landmark offsets from it, preprocessing centres the grid on it)."""
    return geometry.index_to_world((np.asarray(geometry.shape_zyx, float) - 1) / 2)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to points of shape (..., 3)."""
    pts = np.asarray(points, dtype=float)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def rotation_direction(angles_deg_xyz: Sequence[float]) -> np.ndarray:
    """Direction matrix of an oblique grid: rotation by Euler angles (degrees) about L, P, S."""

    return Rotation.from_euler("xyz", angles_deg_xyz, degrees=True).as_matrix()
