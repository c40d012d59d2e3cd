"""normalized_on_grid (what training and prediction feed the network) equals the plain
reference: normalise every voxel with numpy, then resample with SimpleITK (linear, 0 outside),
on oblique, anisotropic images, for grids inside, across the border of and outside the image."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.config.plans import Normalization
from lmkreg.geometry import ImageGeometry
from lmkreg.preprocessing.preprocessor import crop_to_grid, normalized_on_grid

SCHEMES = {"zscore": Normalization("zscore"), "percentile_clip": Normalization("percentile_clip", 20.0, 180.0)}


def _reference(image: sitk.Image, target: ImageGeometry, norm: Normalization) -> np.ndarray:
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    if norm.scheme == "zscore":
        fg = a[a != 0]
        out = (a - fg.mean()) / fg.std()
    else:
        out = np.clip((a - norm.lower) / (norm.upper - norm.lower), 0, 1)
        out[a == 0] = 0
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(image)
    ref = target.make_image(np.zeros(target.shape_zyx, np.uint8))
    return sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))


def _image(geometry: ImageGeometry, rng, dtype) -> sitk.Image:
    a = rng.uniform(0, 220, geometry.shape_zyx)
    a[a < 30] = 0  # zeros inside: the z-score foreground and the US fan rule both matter
    return geometry.make_image(a.astype(dtype))


def _grid(source: ImageGeometry, shift_mm, shape=(9, 11, 7), spacing=(1.9, 1.3, 2.2)) -> ImageGeometry:
    centre = source.index_to_world((np.asarray(source.shape_zyx, float) - 1)[None] / 2)[0] + np.asarray(shift_mm)
    origin = centre - (np.asarray(shape[::-1], float) - 1) / 2 * np.asarray(spacing)
    return ImageGeometry.create(shape, spacing, origin, np.eye(3))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
@pytest.mark.parametrize("shift", [(0, 0, 0), (14.0, -9.0, 6.0), (500.0, 0, 0)], ids=["inside", "border", "outside"])
def test_equals_normalise_every_voxel_then_resample(oblique_geometry, rng, scheme, dtype, shift):
    image = _image(oblique_geometry, rng, dtype)
    target = _grid(oblique_geometry, shift)
    got = normalized_on_grid(image, target, SCHEMES[scheme])
    expected = _reference(image, target, SCHEMES[scheme])
    assert got.dtype == np.float32 and got.shape == target.shape_zyx
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    if shift == (500.0, 0, 0):
        assert not np.any(got)  # outside the image: exactly 0, as the reference
    else:
        assert np.count_nonzero(got) > got.size // 4  # the grid really samples the image


def test_crop_reads_less_and_keeps_the_physical_grid(oblique_geometry, rng):
    image = _image(oblique_geometry, rng, np.float32)
    target = _grid(oblique_geometry, (0, 0, 0), shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0))
    roi = crop_to_grid(image, target)
    assert np.prod(roi.GetSize()) < np.prod(image.GetSize()) / 4
    # every voxel of the crop sits where the same voxel of the full image sits
    start = np.round(image.TransformPhysicalPointToContinuousIndex(roi.GetOrigin())).astype(int)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(roi),
                                  sitk.GetArrayViewFromImage(image)[start[2]:start[2] + roi.GetSize()[2],
                                                                    start[1]:start[1] + roi.GetSize()[1],
                                                                    start[0]:start[0] + roi.GetSize()[0]])
    assert roi.GetDirection() == pytest.approx(image.GetDirection())
    assert roi.GetSpacing() == pytest.approx(image.GetSpacing())
