"""lmkreg.trust.image_support: a landmark where the scan recorded nothing (beyond a TRUS fan).

Reference: every voxel centre's world position from SimpleITK itself
(TransformIndexToPhysicalPoint), on an oblique, anisotropic image whose non-zero part ends at
a world plane, as a TRUS sweep ends."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lmkreg.geometry.spaces import ImageGeometry, rotation_direction
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.trust.image_support import NO_SIGNAL_RADIUS_MM, not_imaged_flags, without_signal


def _cut_image() -> tuple[sitk.Image, np.ndarray, np.ndarray, float]:
    geom = ImageGeometry.create((14, 22, 26), (0.9, 1.3, 2.6), (-12.0, 30.0, 7.0), rotation_direction((20.0, -15.0, 35.0)))
    image = geom.make_image(np.zeros(geom.shape_zyx, np.float32))
    size = image.GetSize()
    centres = np.array([image.TransformIndexToPhysicalPoint((i, j, k))
                        for k in range(size[2]) for j in range(size[1]) for i in range(size[0])])  # x fastest: (z, y, x) order
    normal = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    level = float(np.median(centres @ normal))
    values = np.where(centres @ normal < level, 50.0, 0.0).reshape(geom.shape_zyx).astype(np.float32)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out, centres, normal, level


def _reference(values: np.ndarray, centres: np.ndarray, p: np.ndarray, r: float) -> bool:
    d = np.linalg.norm(centres - p, axis=1)
    near = d <= r
    return not np.any(values[near] if near.any() else values[[np.argmin(d)]])


def test_points_beyond_the_end_of_the_signal_match_a_brute_force_reference():
    image, centres, normal, level = _cut_image()
    values = sitk.GetArrayFromImage(image).ravel()
    rng = np.random.default_rng(3)
    inside = centres[rng.choice(len(centres), 400, replace=False)]
    offsets = rng.uniform(-5.0, 5.0, len(inside))  # move each point to a signed distance from the cut plane
    points = inside + (level + offsets - inside @ normal)[:, None] * normal
    geom = ImageGeometry.from_image(image)
    points = points[geom.contains_world(points)]
    got = without_signal(image, points, NO_SIGNAL_RADIUS_MM)
    want = np.array([_reference(values, centres, p, NO_SIGNAL_RADIUS_MM) for p in points])
    np.testing.assert_array_equal(got, want)
    assert 20 < want.sum() < len(want) - 20  # both kinds occur
    # plausibility of the reference itself: more than the radius beyond the plane is always empty,
    # and more than the radius before it never is
    depth = points @ normal - level
    assert got[depth > NO_SIGNAL_RADIUS_MM + 1.5].all() and not got[depth < -NO_SIGNAL_RADIUS_MM].any()


def test_points_outside_the_grid_or_missing_are_not_called_empty():
    image, centres, normal, level = _cut_image()
    far = centres.max(0) + 100.0
    beyond = centres[np.argmax(centres @ normal)]  # an empty corner voxel
    got = without_signal(image, np.array([far, [np.nan] * 3, beyond]))
    np.testing.assert_array_equal(got, [False, False, True])


def test_flags_name_the_landmark_and_skip_missing_ones():
    image, centres, normal, level = _cut_image()
    lit = centres[np.argmin(centres @ normal)]
    dark = centres[np.argmax(centres @ normal)]
    flags = not_imaged_flags(image, LandmarkSet({"apex": dark, "bladder_neck": lit, "posterior_median": None}),
                             ["apex", "bladder_neck", "posterior_median"])
    assert len(flags) == 1 and flags[0].text.startswith("apex: no image signal within 2 mm")
    assert (flags[0].landmark, flags[0].signal, flags[0].limit) == ("apex", "no_image_signal", NO_SIGNAL_RADIUS_MM)
