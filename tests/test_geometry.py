"""Geometry core against SimpleITK as the independent reference."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lmkreg.geometry import ImageGeometry, orientation_code, reorient_to_canonical, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.transform_json import read_rigid_transform
from lmkreg.io.transform_json import write_rigid_transform


def _sitk_image(geom: ImageGeometry, array: np.ndarray | None = None) -> sitk.Image:
    arr = np.zeros(geom.shape_zyx, np.float32) if array is None else array
    return geom.make_image(arr)


def test_index_to_world_matches_simpleitk_oblique_anisotropic(oblique_geometry, rng):
    image = _sitk_image(oblique_geometry)
    idx_zyx = rng.uniform(-2, 30, size=(200, 3))
    ours = oblique_geometry.index_to_world(idx_zyx)
    ref = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in p[::-1])) for p in idx_zyx])
    assert np.max(np.abs(ours - ref)) < 1e-6


def test_world_to_index_matches_simpleitk_oblique_anisotropic(oblique_geometry, rng):
    image = _sitk_image(oblique_geometry)
    world = rng.uniform(-60, 80, size=(200, 3))
    ours = oblique_geometry.world_to_index(world)
    ref = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p))[::-1] for p in world])
    # 1e-6 mm in world: compare after scaling the index difference by the spacing
    assert np.max(np.abs(ours - ref) * oblique_geometry.spacing_zyx) < 1e-6


def test_integer_index_picks_the_array_voxel(oblique_geometry, rng):
    """The (z, y, x) index order is the numpy order: the world point of voxel arr[k, j, i]
    is where SimpleITK's GetPixel((i, j, k)) lives."""
    arr = rng.normal(size=oblique_geometry.shape_zyx).astype(np.float32)
    image = _sitk_image(oblique_geometry, arr)
    for k, j, i in [(0, 0, 0), (3, 7, 11), (16, 22, 28)]:
        world = oblique_geometry.index_to_world(np.array([k, j, i], float))
        ii = image.TransformPhysicalPointToIndex(tuple(world))
        assert ii == (i, j, k)
        assert image.GetPixel(ii) == arr[k, j, i]


def test_geometry_round_trip_through_sitk(oblique_geometry):
    image = _sitk_image(oblique_geometry)
    back = ImageGeometry.from_image(image)
    assert back.shape_zyx == oblique_geometry.shape_zyx
    np.testing.assert_allclose(back.direction_matrix, oblique_geometry.direction_matrix, atol=1e-12)
    assert back.same_as(oblique_geometry, 1e-9)
    assert ImageGeometry.from_json(oblique_geometry.to_json()) == oblique_geometry


@pytest.mark.parametrize("bad", [dict(spacing_xyz=(1, 0, 1)), dict(spacing_xyz=(1, -2, 1)),
                                 dict(direction=np.diag([1.0, 2.0, 1.0])), dict(shape_zyx=(0, 3, 3))])
def test_invalid_geometries_are_rejected(bad):
    kwargs = dict(shape_zyx=(3, 3, 3), spacing_xyz=(1, 1, 1), direction=np.eye(3))
    kwargs.update(bad)
    with pytest.raises(ValueError):
        ImageGeometry.create(**kwargs)


def test_contains_world(oblique_geometry):
    centre = oblique_geometry.index_to_world((np.asarray(oblique_geometry.shape_zyx) - 1) / 2)
    far = centre + 1000
    assert oblique_geometry.contains_world(np.stack([centre, far])).tolist() == [True, False]


# ---- canonical orientation -------------------------------------------------------------

def _all_axis_permutations_and_flips():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, (row, s) in enumerate(zip(perm, signs)):
                d[row, col] = s
            yield d


@pytest.mark.parametrize("direction", list(_all_axis_permutations_and_flips())[::5])
def test_reorient_to_canonical_keeps_world_and_landmarks(direction, rng):
    # an orientation (permutation/flip) combined with a small obliquity, anisotropic spacing
    oblique = Rotation.from_euler("xyz", [8, -5, 12], degrees=True).as_matrix() @ direction
    geom = ImageGeometry.create((9, 11, 13), (0.6, 1.3, 2.2), (5.0, -7.0, 11.0), oblique)
    arr = rng.normal(size=geom.shape_zyx).astype(np.float32)
    image = geom.make_image(arr)
    canon = reorient_to_canonical(image)
    assert orientation_code(canon) == "LPS"
    cgeom = ImageGeometry.from_image(canon)
    # canonical direction is close to identity: each index axis points mostly along +L, +P, +S
    assert np.all(np.diag(cgeom.direction_matrix) > 0.9)
    # landmarks in world LPS -> canonical voxel -> world round trip
    landmarks_world = geom.index_to_world(rng.uniform(0, 8, size=(5, 3)))
    back = cgeom.index_to_world(cgeom.world_to_index(landmarks_world))
    assert np.max(np.linalg.norm(back - landmarks_world, axis=1)) < 1e-4
    # the voxel at a world point has the same value before and after (no resampling)
    carr = sitk.GetArrayFromImage(canon)
    for k, j, i in [(0, 0, 0), (4, 5, 6), (8, 10, 12)]:
        w = geom.index_to_world(np.array([k, j, i], float))
        ck, cj, ci = np.rint(cgeom.world_to_index(w)).astype(int)
        assert carr[ck, cj, ci] == arr[k, j, i]


# ---- rigid transforms -------------------------------------------------------------------

def test_rigid_transform_matches_sitk_euler(rng):
    rot = Rotation.from_euler("xyz", [25, -8, 4], degrees=True)
    t = np.array([3.0, -12.0, 7.5])
    ours = RigidTransform(rot.as_matrix(), t)
    ref = sitk.Euler3DTransform()
    ref.SetMatrix(tuple(rot.as_matrix().ravel()))
    ref.SetTranslation(tuple(t))
    pts = rng.uniform(-50, 50, size=(20, 3))
    expected = np.array([ref.TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(ours.apply(pts), expected, atol=1e-9)
    np.testing.assert_allclose(ours.inverse().apply(ours.apply(pts)), pts, atol=1e-9)
    assert ours.rotation_angle_deg() == pytest.approx(np.degrees(rot.magnitude()), abs=1e-9)


def test_rigid_transform_json_round_trip(tmp_path):
    tr = RigidTransform(rotation_direction((10, 20, 30)), np.array([1.0, 2.0, 3.0]))
    path = write_rigid_transform(tr, tmp_path / "t.json")
    back = read_rigid_transform(path)
    np.testing.assert_allclose(back.matrix(), tr.matrix(), atol=1e-12)
    assert (back.source, back.target) == ("MR", "US")


def test_rigid_transform_rejects_reflection():
    with pytest.raises(ValueError):
        RigidTransform(np.diag([1.0, 1.0, -1.0]), np.zeros(3))


def test_batched_rigid_fit_equals_one_fit_at_a_time_and_marks_what_fit_rigid_refuses():
    """fit_rigid_batch (the transform uncertainty's Monte Carlo) against fit_rigid, sample by sample,
    on oblique triangles, a reflection-prone one, and sets that fit_rigid refuses (coincident points,
    collinear points)."""
    from lmkreg.errors import InputError
    from lmkreg.geometry.rigid import fit_rigid, fit_rigid_batch

    rng = np.random.default_rng(4)
    base = np.array([[0.0, 0.0, -20.0], [0.0, 0.0, 20.0], [0.0, 15.0, 0.0]])
    p = base[None] + rng.normal(scale=3.0, size=(50, 3, 3))
    q = p @ rotation_direction((0.3, -0.2, 0.5)).T + [5.0, -2.0, 7.0] + rng.normal(scale=2.0, size=(50, 3, 3))
    q[3] = p[3] * [1, 1, -1]  # a mirrored triangle: the best proper rotation, not a reflection
    p[7, 1] = p[7, 0] + 0.1  # two points that coincide
    q[9] = [[0, 0, 0], [0, 0, 10], [0, 0, 20.0]]  # collinear
    r, t, valid = fit_rigid_batch(p, q)
    for k in range(len(p)):
        try:
            ref = fit_rigid(p[k], q[k])
        except InputError:
            assert not valid[k]
            continue
        assert valid[k]
        np.testing.assert_allclose(r[k], ref.rotation, atol=1e-10)
        np.testing.assert_allclose(t[k], ref.translation, atol=1e-9)
        assert np.linalg.det(r[k]) == pytest.approx(1.0)
    assert not valid[7] and not valid[9] and valid.sum() == 48
