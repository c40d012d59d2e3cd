"""MRE, SRE, Dice, meshes and ICP on hand-built cases."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from scipy.spatial.transform import Rotation

from lmkreg.evaluation.metrics import (dice, icp_rigid, radial_errors, registration_dice, residual_rotation_deg,
                                       success_rates, surface_registration_error)
from lmkreg.geometry.mesh import mask_to_mesh, surface_points
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet


def test_radial_errors_and_success_rates_by_hand():
    names = ["a", "b", "c"]
    truth = LandmarkSet({"a": [0, 0, 0], "b": [10, 0, 0], "c": [0, 5, 5]})
    pred = LandmarkSet({"c": [0, 5, 8], "a": [3, 4, 0], "b": None})
    e = radial_errors(pred, truth, names)
    assert e[0] == pytest.approx(5.0) and np.isnan(e[1]) and e[2] == pytest.approx(3.0)
    assert success_rates(e) == {"sdr_2mm": 0.0, "sdr_4mm": 0.5, "sdr_8mm": 1.0}


def test_sre_of_a_pure_translation_is_its_length():
    pts = np.random.default_rng(0).normal(size=(100, 3)) * 20
    ref = RigidTransform(rotation_direction((10, 5, -3)), np.array([1.0, 2.0, 3.0]))
    pred = RigidTransform(ref.rotation, ref.translation + [0.0, 1.2, -1.6])
    assert surface_registration_error(pts, ref, pred) == pytest.approx(2.0)
    assert residual_rotation_deg(ref, pred) == pytest.approx(0.0, abs=1e-6)


def test_residual_rotation_angle():
    ref = RigidTransform(rotation_direction((0, 0, 0)), np.zeros(3))
    pred = RigidTransform(Rotation.from_rotvec([0, 0, np.radians(7.5)]).as_matrix(), np.zeros(3))
    assert residual_rotation_deg(ref, pred) == pytest.approx(7.5)


def test_dice_hand_built():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4] = True  # 400 voxels
    b[2:8] = True  # 600 voxels, overlap 200
    assert dice(a, b) == pytest.approx(2 * 200 / 1000)


def _ellipsoid_mask(geom: ImageGeometry, centre, radii) -> sitk.Image:
    w = geom.voxel_centres_world()
    inside = (((w - centre) / radii) ** 2).sum(-1) <= 1.0
    return geom.make_image(inside.astype(np.uint8))


def test_mesh_is_in_world_coordinates_on_an_oblique_anisotropic_grid():
    centre, radii = np.array([2.0, -1.0, 3.0]), np.array([18.0, 13.0, 15.0])
    geom = ImageGeometry.create((40, 44, 48), (0.9, 1.1, 1.4), (0, 0, 0), rotation_direction((20, -10, 15)))
    shift = centre - geom.index_to_world((np.array(geom.shape_zyx) - 1) / 2)  # centre the grid on the ellipsoid
    geom = ImageGeometry.create(geom.shape_zyx, geom.spacing_xyz, shift, geom.direction_matrix)
    mesh = mask_to_mesh(_ellipsoid_mask(geom, centre, radii))
    assert np.linalg.norm(mesh.centroid - centre) < 0.5
    # vertices lie on the ellipsoid surface within about one voxel
    r = np.sqrt((((mesh.vertices - centre) / radii) ** 2).sum(-1))
    assert np.all(np.abs(r - 1) * radii.min() < 1.5)
    expected_volume = 4 / 3 * np.pi * np.prod(radii)
    assert mesh.is_watertight and abs(mesh.volume) == pytest.approx(expected_volume, rel=0.05)


def test_icp_recovers_a_small_rigid_transform():
    mr = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mr.apply_scale([22.0, 16.0, 19.0])
    bump = trimesh.creation.icosphere(subdivisions=3, radius=6.0)
    bump.apply_translation([18.0, 8.0, 6.0])
    mr = trimesh.util.concatenate([mr, bump])  # break the ellipsoid's symmetries
    truth = RigidTransform(Rotation.from_euler("xyz", [4, -3, 5], degrees=True).as_matrix(), np.array([2.0, -1.5, 1.0]))
    us = mr.copy()
    us.apply_transform(truth.matrix())
    found = icp_rigid(mr, us, samples=4000)
    pts = surface_points(mr, 2000, seed=1)
    assert surface_registration_error(pts, truth, found) < 0.1


def test_registration_dice_perfect_and_shifted():
    mr_geom = ImageGeometry.create((40, 40, 40), (1.0, 1.0, 1.0), (-20, -20, -20), rotation_direction((12, 0, -7)))
    us_geom = ImageGeometry.create((50, 50, 50), (0.8, 0.8, 0.8), (-20, -20, -20))
    truth = RigidTransform(rotation_direction((15, 3, 0)), np.array([1.0, 2.0, -1.0]))
    radii = np.array([12.0, 9.0, 10.0])
    mr_mask = _ellipsoid_mask(mr_geom, np.zeros(3), radii)
    # the US mask is the same ellipsoid moved by the true map (rotated axes)
    w = us_geom.voxel_centres_world()
    back = truth.inverse().apply(w)
    us_mask = us_geom.make_image((((back / radii) ** 2).sum(-1) <= 1.0).astype(np.uint8))
    assert registration_dice(mr_mask, us_mask, truth) > 0.95
    off = RigidTransform(truth.rotation, truth.translation + [5.0, 0, 0])
    assert registration_dice(mr_mask, us_mask, off) < registration_dice(mr_mask, us_mask, truth) - 0.1
