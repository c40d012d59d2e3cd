"""Surfaces of binary masks as triangle meshes in world LPS mm, and points sampled on them.

Here, in geometry, because registration (surface refinement), evaluation (SRE, ICP reference)
and benchmarks all build the same meshes and none of them may import the others' packages for it.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import trimesh
from skimage.measure import marching_cubes

from lmkreg.geometry.spaces import ImageGeometry


def mask_to_mesh(mask: sitk.Image) -> trimesh.Trimesh:
    """Surface of a binary mask (marching cubes at 0.5) with vertices in world LPS mm."""
    arr = (sitk.GetArrayFromImage(mask) > 0).astype(np.float32)
    if not arr.any():
        raise ValueError("mask is empty: no surface to build")
    padded = np.pad(arr, 1)  # closes surfaces that touch the image border
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    geom = ImageGeometry.from_image(mask)
    world = geom.index_to_world(verts - 1.0)
    if np.linalg.det(geom.index_to_world_affine()[:3, :3]) < 0:  # a mirrored grid flips the winding
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(world, faces, process=True)
    return mesh


def surface_points(mesh: trimesh.Trimesh, count: int = 5000, seed: int = 0) -> np.ndarray:
    """Points spread evenly (by area) over the surface, reproducibly."""
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points)
