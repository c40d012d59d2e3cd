"""Landmark-based rigid registration against exact answers and SimpleITK."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lmkreg.errors import InputError
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.registration.landmark_fit import register_landmarks

PROSTATE = np.array([[0.0, 5.0, -22.0], [0.0, -3.0, 20.0], [0.0, 18.0, 1.0]])  # apex, bladder neck, posterior


@pytest.mark.parametrize("seed", range(5))
def test_recovers_known_rigid_transform_exactly(seed):
    rng = np.random.default_rng(seed)
    rot = Rotation.from_euler("xyz", rng.uniform([-30, -10, -10], [30, 10, 10]), degrees=True).as_matrix()
    t = rng.uniform(-15, 15, 3)
    us = PROSTATE @ rot.T + t
    fit = fit_rigid(PROSTATE, us)
    np.testing.assert_allclose(fit.rotation, rot, atol=1e-10)
    np.testing.assert_allclose(fit.translation, t, atol=1e-9)


def test_agrees_with_simpleitk_landmark_initializer_on_noisy_points():
    rng = np.random.default_rng(7)
    mr = rng.uniform(-30, 30, (6, 3))
    rot = Rotation.from_euler("xyz", [20, -5, 8], degrees=True).as_matrix()
    us = mr @ rot.T + [3, -7, 11] + rng.normal(0, 1.5, mr.shape)
    fit = fit_rigid(mr, us)
    # SimpleITK's initializer returns the transform mapping fixed (US) points to moving (MR) points
    ref = sitk.LandmarkBasedTransformInitializer(sitk.VersorRigid3DTransform(), us.ravel().tolist(), mr.ravel().tolist())
    mapped_by_ref_inverse = np.array([ref.GetInverse().TransformPoint(tuple(p)) for p in mr])
    np.testing.assert_allclose(fit.apply(mr), mapped_by_ref_inverse, atol=1e-6)


def test_reflection_is_never_returned():
    mr = PROSTATE
    us = PROSTATE * np.array([-1.0, 1.0, 1.0])  # a mirror image: the best proper rotation, not the mirror
    fit = fit_rigid(mr, us)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0)


def test_weights_follow_the_trusted_landmark():
    us = PROSTATE + np.array([[5.0, 0, 0], [0, 0, 0], [0, 0, 0]])
    heavy = fit_rigid(PROSTATE, us, weights=[100.0, 1.0, 1.0])
    light = fit_rigid(PROSTATE, us, weights=[0.01, 1.0, 1.0])
    assert np.linalg.norm(heavy.apply(PROSTATE[0]) - us[0]) < np.linalg.norm(light.apply(PROSTATE[0]) - us[0])


@pytest.mark.parametrize("points,match", [
    (PROSTATE[:2], "at least 3"),
    (np.array([[0, 0, 0], [0, 0, 0.1], [10, 3, 0]], float), "coincide"),
    (np.array([[0, 0, 0], [5, 5, 5], [10, 10, 10.0]]), "collinear"),
])
def test_degenerate_landmarks_are_refused(points, match):
    with pytest.raises(InputError, match=match):
        fit_rigid(points, points)


def test_register_by_name_with_missing_and_reordered_landmarks():
    names = ["apex", "bladder_neck", "posterior_median", "extra"]
    mr_pts = np.vstack([PROSTATE, [[10.0, 10.0, 10.0]]])
    mr = LandmarkSet(dict(zip(names, mr_pts)))
    us = LandmarkSet({"posterior_median": PROSTATE[2] + 2, "apex": PROSTATE[0] + 2, "bladder_neck": PROSTATE[1] + 2,
                      "extra": None})
    reg = register_landmarks(mr, us)
    assert reg.names == ["apex", "bladder_neck", "posterior_median"]
    np.testing.assert_allclose(reg.transform.translation, [2, 2, 2], atol=1e-9)
    assert max(reg.residuals_mm.values()) < 1e-9
    with pytest.raises(InputError, match="only 2 landmark"):
        register_landmarks(mr, LandmarkSet({"apex": PROSTATE[0], "bladder_neck": PROSTATE[1], "posterior_median": None}))


# ---- transform files ---------------------------------------------------------------------

def test_tfm_applied_by_simpleitk_moves_points_as_documented(tmp_path):
    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.registration.transform_files import read_itk_transform, write_itk_transform

    mr_to_us = RigidTransform(Rotation.from_euler("xyz", [25, -6, 9], degrees=True).as_matrix(), np.array([4.0, -9.0, 13.0]))
    path = write_itk_transform(mr_to_us, tmp_path / "MR_to_US.tfm")
    tfm = sitk.ReadTransform(str(path))
    mr_point = np.array([12.0, -30.0, 55.0])
    us_point = mr_to_us.apply(mr_point)
    # resampling convention: the file maps the US point back to the MR point
    np.testing.assert_allclose(tfm.TransformPoint(tuple(us_point)), mr_point, atol=1e-6)
    np.testing.assert_allclose(read_itk_transform(path).matrix(), mr_to_us.matrix(), atol=1e-9)


def test_tfm_resamples_mr_into_us_space(tmp_path):
    """A bright voxel at an MR world point appears, after sitk.Resample with the .tfm, at the
    US world point our matrix maps it to."""
    from lmkreg.geometry import ImageGeometry, rotation_direction
    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.registration.transform_files import write_itk_transform

    mr_geom = ImageGeometry.create((40, 40, 40), (1.0, 1.0, 1.0), (-20, -20, -20), rotation_direction((10, 0, 5)))
    us_geom = ImageGeometry.create((40, 40, 40), (1.0, 1.0, 1.0), (-20, -20, -20))
    arr = np.zeros(mr_geom.shape_zyx, np.float32)
    arr[22, 17, 25] = 1000.0
    mr_point = mr_geom.index_to_world(np.array([22.0, 17.0, 25.0]))
    mr_to_us = RigidTransform(Rotation.from_euler("xyz", [8, 3, -4], degrees=True).as_matrix(), np.array([2.0, -3.0, 1.5]))
    write_itk_transform(mr_to_us, tmp_path / "t.tfm")
    out = sitk.Resample(mr_geom.make_image(arr), us_geom.make_image(np.zeros(us_geom.shape_zyx, np.float32)),
                        sitk.ReadTransform(str(tmp_path / "t.tfm")), sitk.sitkLinear, 0.0)
    res = sitk.GetArrayFromImage(out)
    idx = np.indices(res.shape).reshape(3, -1).T
    centroid = (idx * res.reshape(-1, 1)).sum(0) / res.sum()
    expected = us_geom.world_to_index(mr_to_us.apply(mr_point))
    np.testing.assert_allclose(centroid, expected, atol=0.05)
