"""nnU-Net's intensity transforms through batchgenerators (issue 27).

Each lmkreg wrapper, on a fixed seed, must give exactly what a direct call of the batchgenerators
transform gives on the same array when NumPy's global state is seeded as the wrapper seeds it
(the reference is the library itself, constructed here, not by the wrapper); intensity transforms
leave the landmarks, the mask and the caller's global NumPy state untouched.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform

from lmkreg.config.augmentation import NNUNET_INTENSITY_RECIPE, augmentation_settings, nnunet_intensity_override
from lmkreg.training.augmentation import (TRANSFORMS, BiasField, NnBrightness, NnContrast, NnGamma, NnGaussianBlur,
                                          NnGaussianNoise, NnLowResolution, build_augmentation)


def _sample(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.normal(2.0, 1.0, (1, 12, 14, 16)).astype(np.float32)
    landmarks = np.array([[3.0, 4.0, 5.0], [8.5, 9.25, 10.0], [np.nan, np.nan, np.nan]])
    mask = (rng.random((1, 12, 14, 16)) > 0.5).astype(np.uint8)
    return {"image": image, "landmarks": landmarks, "spacing": np.array([2.0, 1.0, 1.0]), "mask": mask}


def _reference(bg_transform, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The library called directly: a batch of one, NumPy's global state and Python's `random`
    seeded with the next integer of the sample's Generator (as lmkreg.training.augmentation says)."""
    seed = int(rng.integers(0, 2 ** 31 - 1))
    np.random.seed(seed)
    random.seed(seed)
    return bg_transform(data=image[None].copy())["data"][0]


CASES = [
    (NnGaussianNoise(p=1.0, variance=(0.05, 0.1)), lambda: GaussianNoiseTransform((0.05, 0.1), p_per_sample=1)),
    (NnGaussianBlur(p=1.0, sigma_voxels=(0.5, 1.0), p_per_channel=1.0),
     lambda: GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_channel=1.0, p_per_sample=1)),
    (NnBrightness(p=1.0, factor=(0.75, 1.25)), lambda: BrightnessMultiplicativeTransform((0.75, 1.25), p_per_sample=1)),
    (NnContrast(p=1.0, factor=(0.75, 1.25), preserve_range=True),
     lambda: ContrastAugmentationTransform((0.75, 1.25), preserve_range=True, p_per_sample=1)),
    (NnLowResolution(p=1.0, zoom=(0.5, 0.7), p_per_channel=1.0),
     lambda: SimulateLowResolutionTransform((0.5, 0.7), per_channel=True, p_per_channel=1.0, order_downsample=0,
                                            order_upsample=3, p_per_sample=1)),
]


@pytest.mark.parametrize("wrapped, direct", CASES, ids=[type(w).__name__ for w, _ in CASES])
def test_wrapper_equals_a_direct_batchgenerators_call(wrapped, direct):
    sample = _sample()
    out = wrapped(sample, np.random.default_rng(42))
    ref_rng = np.random.default_rng(42)
    ref_rng.uniform()  # the wrapper's draw for p (lmkreg draws it even when p is 1)
    expected = _reference(direct(), sample["image"].copy(), ref_rng)
    np.testing.assert_allclose(out["image"], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out["image"], sample["image"])  # it did something
    np.testing.assert_array_equal(out["landmarks"], sample["landmarks"])  # landmarks unchanged
    np.testing.assert_array_equal(out["mask"], sample["mask"])


@pytest.mark.parametrize("inverted", [0.0, 1.0])
def test_gamma_equals_a_direct_call_plain_and_inverted(inverted):
    sample = _sample(1)
    sample["image"] = np.abs(sample["image"]) + 0.1
    out = NnGamma(p=1.0, gamma=(0.7, 1.5), p_inverted=inverted, retain_stats=True)(sample, np.random.default_rng(7))
    ref_rng = np.random.default_rng(7)
    ref_rng.uniform()  # p
    ref_rng.uniform()  # p_inverted
    t = GammaTransform((0.7, 1.5), invert_image=bool(inverted), per_channel=True, retain_stats=True, p_per_sample=1)
    np.testing.assert_allclose(out["image"], _reference(t, sample["image"].copy(), ref_rng), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["landmarks"], sample["landmarks"])


def test_wrappers_leave_the_global_numpy_state_and_their_input_alone():
    sample = _sample()
    before = sample["image"].copy()
    np.random.seed(123)
    random.seed(123)
    expected_next = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    for wrapped, _ in CASES:
        wrapped(sample, np.random.default_rng(0))
    assert (np.random.random(), random.random()) == expected_next
    np.testing.assert_array_equal(sample["image"], before)


def test_bias_field_is_smooth_positive_bounded_and_keeps_zero():
    sample = _sample()
    sample["image"] = np.ones_like(sample["image"])
    sample["image"][0, :, :, :3] = 0.0  # "outside the fan"
    out = BiasField(p=1.0, keep_zero=True, strength=(0.3, 0.3))(sample, np.random.default_rng(3))
    field = out["image"][0, :, :, 3:]
    assert np.all(out["image"][0, :, :, :3] == 0)
    assert field.min() > 0 and field.max() / field.min() <= np.exp(0.6) + 1e-5
    assert field.max() / field.min() > 1.2
    np.testing.assert_array_equal(out["landmarks"], sample["landmarks"])


def test_the_nnunet_override_builds_a_pipeline_without_lmkregs_generic_intensity_transforms():
    for kind in ("MR", "US"):
        override = nnunet_intensity_override(kind)
        settings = augmentation_settings(kind, override)
        names = [type(t) for t in build_augmentation(kind, override).transforms]
        for name in NNUNET_INTENSITY_RECIPE:
            assert TRANSFORMS[name] in names and settings[name]["keep_zero"] == (kind == "US")
        for name in ("gaussian_blur", "brightness", "contrast", "gamma", "gaussian_noise"):
            assert settings[name] is None
        assert settings["spatial"] is not None
