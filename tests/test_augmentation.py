"""Augmentation: landmarks move exactly with the anatomy; intensity transforms behave.

The key references are independent of the code under test: the intensity centroid of a Gaussian
blob drawn at each landmark (where the anatomy really went), hand-computed permutations for 90
degree rotations and flips, and scipy's own filters.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lmkreg.config.augmentation import DEFAULT_AUGMENTATION
from lmkreg.errors import ConfigurationError
from lmkreg.training.augmentation import (AcousticShadow, Brightness, Compose, Contrast, Gamma, GaussianBlur,
                                          GaussianNoise, MirrorLeftRight, SpatialTransform, SpeckleNoise,
                                          build_augmentation)

SHAPE = (48, 48, 48)
SPACING = np.array([2.0, 1.0, 1.0])  # anisotropic: z voxels are twice as long
BLOB_SIGMA_MM = 3.0  # 1.5 voxels along z, 3 voxels along y and x
CENTRE_TOL_VOX = 0.05


def blob_sample(points: np.ndarray, shape=SHAPE, spacing=SPACING, sigma_mm=BLOB_SIGMA_MM) -> dict:
    """One channel per landmark holding a Gaussian blob (isotropic in mm) centred on it."""
    grid = np.indices(shape, dtype=float)
    chans = []
    for p in points:
        d2 = sum(((grid[a] - p[a]) * spacing[a]) ** 2 for a in range(3))
        chans.append(np.exp(-d2 / (2 * sigma_mm ** 2)))
    return {"image": np.stack(chans).astype(np.float32), "landmarks": np.asarray(points, float),
            "spacing": np.asarray(spacing, float)}


def window_moments(channel: np.ndarray, centre: np.ndarray, radius_mm: float, spacing=SPACING):
    """Intensity centroid (voxels) and covariance (mm^2) in a box of +-radius around `centre`,
    or None if the box leaves the volume."""
    r = np.ceil(radius_mm / spacing).astype(int)
    c = np.round(centre).astype(int)
    lo, hi = c - r, c + r + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(channel.shape)):
        return None
    w = channel[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(float)
    pos = np.indices(w.shape).reshape(3, -1).T + lo
    mass = w.ravel()
    centroid = (pos * mass[:, None]).sum(0) / mass.sum()
    d = (pos - centroid) * spacing
    cov = (d * mass[:, None]).T @ d / mass.sum()
    return centroid, cov


# within ~6 mm of the grid centre (one channel per blob, so the blobs may overlap)
POINTS = np.array([[20.6, 20.3, 25.6], [24.2, 27.1, 21.4], [26.7, 22.5, 26.9]])


def _check_blobs(transform, draws: int, tol: float, radius_mm: float, seed: int) -> tuple[int, float]:
    sample = blob_sample(POINTS)
    used, worst = 0, 0.0
    for k in range(draws):
        out = transform(sample, np.random.default_rng([seed, k]))
        assert out["image"].dtype == np.float32 and out["image"].shape == sample["image"].shape
        ok = True
        errors = []
        for i in range(len(POINTS)):
            lm = out["landmarks"][i]
            if np.isnan(lm).any():
                ok = False
                break
            m = window_moments(out["image"][i], lm, radius_mm)
            if m is None:
                ok = False
                break
            errors.append(np.abs(m[0] - lm).max())
        if not ok:
            continue
        used += 1
        worst = max(worst, max(errors))
        assert max(errors) < tol, f"draw {k}: blob centroids off the moved landmarks by {errors} voxels"
    return used, worst


def test_spatial_transform_moves_landmarks_with_the_anatomy():
    t = SpatialTransform(rotation_deg=((-30, 30), (-30, 30), (-30, 30)), scale=(0.85, 1.15), translation_mm=6.0,
                         p_rotation=1.0, p_scale=0.8, p_translation=0.8)
    used, worst = _check_blobs(t, 200, CENTRE_TOL_VOX, radius_mm=4 * BLOB_SIGMA_MM * 1.15, seed=1)
    print(f"rigid: {used} draws used, worst centroid error {worst:.4f} voxel")
    assert used >= 140, f"only {used} of 200 draws kept every blob inside the volume"


def test_spatial_transform_landmarks_are_exact_beyond_interpolation_error():
    """With cubic interpolation the blob centroids agree ~50x tighter: the 0.05 voxel above is
    the linear interpolation's error, not the landmark mapping's."""
    t = SpatialTransform(rotation_deg=((-30, 30), (-30, 30), (-30, 30)), scale=(0.85, 1.15), translation_mm=6.0,
                         p_rotation=1.0, p_scale=1.0, p_translation=1.0, order=3)
    used, worst = _check_blobs(t, 30, 0.005, radius_mm=4 * BLOB_SIGMA_MM * 1.15, seed=4)
    assert used >= 20


def test_spatial_transform_with_anisotropic_scaling_and_mirror():
    t = Compose([SpatialTransform(rotation_deg=((-20, 20), (-20, 20), (-20, 20)), scale=(0.9, 1.1),
                                  translation_mm=5.0, p_rotation=1.0, p_scale=1.0, p_translation=1.0,
                                  isotropic_scale=False),
                 MirrorLeftRight(p=0.5)])
    used, _ = _check_blobs(t, 60, CENTRE_TOL_VOX, radius_mm=4 * BLOB_SIGMA_MM * 1.1, seed=2)
    assert used >= 40


ELASTIC = dict(rotation_deg=((-15, 15),) * 3, scale=(0.9, 1.1), translation_mm=5.0, p_rotation=1.0, p_scale=1.0,
               p_translation=1.0, p_elastic=1.0)


def test_elastic_deformation_moves_landmarks_within_tolerance():
    """Blob test with a looser tolerance, 0.3 voxel: under a curved warp a blob's intensity
    centroid itself drifts from the warped centre (by ~ blob sigma^2 x the warp's curvature and
    Jacobian gradient, ~0.1-0.2 voxel here), even though the landmark is moved exactly."""
    t = SpatialTransform(elastic_alpha_mm=2.0, elastic_sigma_mm=20.0, **ELASTIC)
    used, worst = _check_blobs(t, 20, 0.3, radius_mm=4 * BLOB_SIGMA_MM * 1.1, seed=3)
    print(f"elastic: {used} draws used, worst centroid error {worst:.4f} voxel")
    assert used >= 14
    # the warp is really there: landmarks differ from the same draw without it
    sample = blob_sample(POINTS)
    rigid = SpatialTransform(elastic_alpha_mm=0.0, **ELASTIC)
    moved = [np.nanmax(np.abs(t(sample, np.random.default_rng([3, k]))["landmarks"]
                              - rigid(sample, np.random.default_rng([3, k]))["landmarks"])) for k in range(5)]
    assert max(moved) > 0.5


def test_elastic_inverse_is_exact_on_coordinate_images():
    """Warp three images holding their own voxel coordinates: the output then tells, at every
    voxel, where it was sampled from (linear interpolation of a linear function is exact).  At
    each moved landmark that source must be the original landmark."""
    shape = (32, 40, 40)
    spacing = np.array([2.0, 1.0, 1.0])
    coords = np.indices(shape).astype(np.float32) + 100.0  # +100: never confused with the 0 outside
    points = np.array([[12.3, 17.8, 22.1], [18.6, 21.2, 16.4], [15.1, 24.9, 20.7]])
    t = SpatialTransform(elastic_alpha_mm=3.0, elastic_sigma_mm=12.0, **ELASTIC)
    for k in range(10):
        out = t({"image": coords, "landmarks": points, "spacing": spacing}, np.random.default_rng(k))
        for p_in, p_out in zip(points, out["landmarks"]):
            source = [ndimage.map_coordinates(out["image"][a], p_out[:, None], order=1)[0] - 100.0 for a in range(3)]
            np.testing.assert_allclose(source, p_in, atol=0.02)


def test_rotation_is_physical_for_anisotropic_spacing():
    """A blob that is round in mm stays round in mm after a 40 degree tilt mixing z (2 mm) and y
    (1 mm); rotating voxel indices instead would give it a large z-y covariance."""
    sample = blob_sample(POINTS[1:2])
    t = SpatialTransform(rotation_deg=((0, 0), (0, 0), (40, 40)), p_rotation=1.0, p_scale=0.0, p_translation=0.0)
    out = t(sample, np.random.default_rng(0))
    centroid, cov = window_moments(out["image"][0], out["landmarks"][0], 4 * BLOB_SIGMA_MM)
    _, cov_in = window_moments(sample["image"][0], sample["landmarks"][0], 4 * BLOB_SIGMA_MM)
    s2 = BLOB_SIGMA_MM ** 2
    assert abs(cov_in[0, 1]) < 0.01 * s2
    assert abs(cov[0, 1]) < 0.05 * s2, cov  # voxel-space rotation gives about 0.3 * s2 here
    assert np.allclose(np.diag(cov), s2, rtol=0.12), cov


def test_rotation_by_90_degrees_is_a_hand_computed_permutation():
    rng = np.random.default_rng(5)
    n = 12
    image = rng.random((1, n, n, n)).astype(np.float32)
    pts = np.array([[2.0, 3.0, 7.5], [np.nan] * 3])
    t = SpatialTransform(rotation_deg=((90, 90), (0, 0), (0, 0)), p_rotation=1.0, p_scale=0.0, p_translation=0.0)
    out = t({"image": image, "landmarks": pts, "spacing": np.array([3.0, 1.0, 1.0])}, rng)
    # p_in = R p_out, R turns (y, x) by +90 deg: y_in = c - (x_out - c), x_in = y_out
    z, y, x = np.indices((n, n, n))
    expected = image[0][z, n - 1 - x, y]
    np.testing.assert_allclose(out["image"][0], expected, atol=1e-5)
    np.testing.assert_allclose(out["landmarks"][0], [2.0, 7.5, n - 1 - 3.0], atol=1e-9)
    assert np.isnan(out["landmarks"][1]).all()


def test_landmarks_leaving_the_grid_become_nan_and_missing_stay_nan():
    shape = (20, 30, 40)
    c = (np.asarray(shape) - 1) / 2
    image = np.ones((1, *shape), np.float32)
    pts = np.array([[5.0, c[1], 38.0],       # x 18.5 right of centre -> y 33.0 > 29.5: outside
                    [5.0, 14.0, 22.0],       # -> y 17.0, x 20.0: inside
                    [np.nan, np.nan, np.nan]])
    t = SpatialTransform(rotation_deg=((90, 90), (0, 0), (0, 0)), p_rotation=1.0, p_scale=0.0, p_translation=0.0)
    out = t({"image": image, "landmarks": pts, "spacing": np.ones(3)}, np.random.default_rng(0))
    assert np.isnan(out["landmarks"][0]).all()
    np.testing.assert_allclose(out["landmarks"][1], [5.0, c[1] + (22.0 - c[2]), c[2] - (14.0 - c[1])], atol=1e-9)
    assert np.isnan(out["landmarks"][2]).all()
    # outside the input the output is 0 (the corners of a 90 degree turned box)
    assert out["image"][0, 0, 0, 0] == 0.0 and out["image"][0, 10, 15, 20] == 1.0

    # random large translations: a landmark is NaN exactly when its shifted position left the grid
    big = SpatialTransform(rotation_deg=((0, 0),) * 3, translation_mm=25.0, p_rotation=0.0, p_scale=0.0,
                           p_translation=1.0)
    centre = c.copy()
    edge = np.array([centre, [2.0, 2.0, 2.0], [10.0, 15.0, 37.0], [17.0, 27.0, 1.0]])
    nan_seen = kept = 0
    for k in range(100):
        out = big({"image": image, "landmarks": edge, "spacing": np.ones(3)}, np.random.default_rng(k))
        if np.isnan(out["landmarks"][0]).any():
            continue
        shift = out["landmarks"][0] - centre  # one shift for every point of a pure translation
        for p_in, p_out in zip(edge[1:], out["landmarks"][1:]):
            expected = p_in + shift
            if np.all(expected >= -0.5) and np.all(expected <= np.asarray(shape) - 0.5):
                kept += 1
                np.testing.assert_allclose(p_out, expected, atol=1e-9)
            else:
                nan_seen += 1
                assert np.isnan(p_out).all()
    assert nan_seen > 10 and kept > 10


def test_mirror_left_right():
    rng = np.random.default_rng(0)
    image = rng.random((1, 5, 6, 7)).astype(np.float32)
    pts = np.array([[1.0, 2.0, 0.5], [np.nan] * 3])
    out = MirrorLeftRight(p=1.0)({"image": image, "landmarks": pts, "spacing": np.ones(3)}, rng)
    np.testing.assert_array_equal(out["image"], image[:, :, :, ::-1])
    np.testing.assert_allclose(out["landmarks"][0], [1.0, 2.0, 6 - 0.5])
    assert np.isnan(out["landmarks"][1]).all()
    assert MirrorLeftRight(p=0.0)({"image": image, "landmarks": pts, "spacing": np.ones(3)}, rng)["image"] is image


# ---- intensity --------------------------------------------------------------------------------

def fan_image(seed: int = 0, shape=(24, 28, 32)) -> np.ndarray:
    """US-like image in (0, 1] inside a cone opening from the probe (high y) and exact 0 outside."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    inside = np.abs(x - shape[2] / 2) < 0.6 * (shape[1] - y) + 1
    img = (0.2 + 0.8 * rng.random(shape)) * inside
    return img[None].astype(np.float32)


INTENSITY = [GaussianNoise(p=1.0, std=(0.05, 0.1)), GaussianBlur(p=1.0), Gamma(p=1.0), Contrast(p=1.0),
             Brightness(p=1.0), SpeckleNoise(p=1.0), AcousticShadow(p=1.0)]


@pytest.mark.parametrize("transform", INTENSITY, ids=lambda t: type(t).__name__)
def test_intensity_keeps_zero_changes_values_and_is_deterministic(transform):
    transform.keep_zero = True
    image = fan_image()
    sample = {"image": image, "landmarks": np.zeros((3, 3)), "spacing": np.array([2.0, 1.0, 1.0])}
    before = image.copy()
    a = transform(sample, np.random.default_rng(7))
    b = transform(sample, np.random.default_rng(7))
    c = transform(sample, np.random.default_rng(8))
    np.testing.assert_array_equal(image, before)  # input untouched
    zero = image == 0
    assert zero.sum() > 1000 and (~zero).sum() > 1000
    assert np.all(a["image"][zero] == 0.0)
    assert a["image"].dtype == np.float32
    changed = np.abs(a["image"] - image)[~zero]
    assert changed.mean() > 1e-3, "transform did not change the image"
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["landmarks"] is sample["landmarks"]


def test_without_keep_zero_noise_reaches_the_background():
    image = fan_image()
    out = GaussianNoise(p=1.0, std=(0.1, 0.1), keep_zero=False)(
        {"image": image, "landmarks": np.zeros((3, 3)), "spacing": np.ones(3)}, np.random.default_rng(0))
    assert np.mean(out["image"][image == 0] != 0) > 0.99


def test_intensity_transforms_against_hand_references():
    image = fan_image(1)
    nz = image != 0
    spacing = np.array([2.0, 1.0, 1.0])
    s = {"image": image, "landmarks": np.zeros((3, 3)), "spacing": spacing}
    rng = np.random.default_rng(3)

    blur = GaussianBlur(p=1.0, sigma_mm=(1.2, 1.2), keep_zero=False)(s, rng)["image"]
    np.testing.assert_allclose(blur[0], ndimage.gaussian_filter(image[0].astype(np.float64), 1.2 / spacing,
                                                                mode="nearest"), atol=1e-5)
    flat = {"image": (0.5 * nz).astype(np.float32), "landmarks": s["landmarks"], "spacing": spacing}
    kept = GaussianBlur(p=1.0, sigma_mm=(1.5, 1.5), keep_zero=True)(flat, rng)["image"]
    np.testing.assert_allclose(kept[nz], 0.5, atol=1e-5)  # normalised convolution: no dark fan edge

    bright = Brightness(p=1.0, factor=(0.75, 1.25))(s, rng)["image"]
    ratio = bright[nz] / image[nz]
    assert np.ptp(ratio) < 1e-5 and 0.75 <= ratio[0] <= 1.25

    con = Contrast(p=1.0, factor=(0.75, 1.25), keep_zero=True)(s, rng)["image"]
    slope, intercept = np.polyfit(image[nz].astype(float), con[nz].astype(float), 1)
    assert 0.75 <= slope <= 1.25
    np.testing.assert_allclose(con[nz].mean(), image[nz].mean(), atol=1e-4)  # about the fan's mean
    np.testing.assert_allclose(con[nz], slope * image[nz] + intercept, atol=1e-4)

    gam = Gamma(p=1.0, gamma=(0.7, 1.5))(s, rng)["image"]
    lo, hi = image.min(), image.max()
    u, v = (image[nz] - lo) / (hi - lo), (gam[nz] - lo) / (hi - lo)
    k = np.argmin(np.abs(u - 0.5))
    g = np.log(v[k]) / np.log(u[k])
    assert 0.7 <= g <= 1.5
    mid = (u > 0.05) & (u < 0.95)
    np.testing.assert_allclose(v[mid], u[mid] ** g, atol=2e-4)

    speck = SpeckleNoise(p=1.0, std=(0.2, 0.2), correlation_mm=1.5)(s, rng)["image"]
    log_ratio = np.zeros(image.shape[1:])
    log_ratio[nz[0]] = np.log(speck[nz] / image[nz])
    assert abs(np.exp(log_ratio[nz[0]]).mean() - 1.0) < 0.03  # multiplicative, mean 1
    both = nz[0, :, :, 1:] & nz[0, :, :, :-1]
    neighbour_corr = np.corrcoef(log_ratio[:, :, 1:][both], log_ratio[:, :, :-1][both])[0, 1]
    assert neighbour_corr > 0.5  # spatially correlated, unlike white noise

    full = np.full((1, 24, 28, 32), 0.6, np.float32)
    for k in range(10):
        shadow = AcousticShadow(p=1.0, attenuation=(0.3, 0.7))(
            {"image": full, "landmarks": s["landmarks"], "spacing": spacing}, np.random.default_rng(k))["image"]
        r = shadow[0] / 0.6
        assert r.max() <= 1.0 + 1e-6 and 0.3 - 1e-3 <= r.min() < 0.95
        # darker further from the probe: along decreasing y the attenuation never weakens
        assert np.all(np.diff(r[:, ::-1, :], axis=1) <= 1e-6)


# ---- configuration ------------------------------------------------------------------------------

def test_build_augmentation_defaults_and_overrides():
    json.loads(json.dumps(DEFAULT_AUGMENTATION))  # storable in plans.json
    us, mr = build_augmentation("US"), build_augmentation("MR")
    us_spatial = next(t for t in us.transforms if isinstance(t, SpatialTransform))
    mr_spatial = next(t for t in mr.transforms if isinstance(t, SpatialTransform))
    assert tuple(us_spatial.rotation_deg[2]) == (-30.0, 30.0) and tuple(us_spatial.rotation_deg[0]) == (-15.0, 15.0)
    assert tuple(mr_spatial.rotation_deg[2]) == (-15.0, 15.0)
    assert any(isinstance(t, AcousticShadow) for t in us.transforms)
    assert not any(isinstance(t, (AcousticShadow, SpeckleNoise)) for t in mr.transforms)
    assert all(t.keep_zero for t in us.transforms if hasattr(t, "keep_zero"))

    custom = build_augmentation("US", {"spatial": {"translation_mm": 3.0}, "acoustic_shadow": None})
    sp = next(t for t in custom.transforms if isinstance(t, SpatialTransform))
    assert sp.translation_mm == 3.0 and tuple(sp.rotation_deg[2]) == (-30.0, 30.0)
    assert not any(isinstance(t, AcousticShadow) for t in custom.transforms)
    by_kind = build_augmentation("MR", {"MR": {"mirror": None}, "US": {}})
    assert not any(isinstance(t, MirrorLeftRight) for t in by_kind.transforms)
    with pytest.raises(ConfigurationError, match="unknown augmentation"):
        build_augmentation("MR", {"rotate": {}})
    with pytest.raises(ConfigurationError, match="spatial"):
        build_augmentation("MR", {"spatial": {"rotation": 3}})
    with pytest.raises(ConfigurationError):
        build_augmentation("CT")

    # a whole default pipeline runs, is reproducible, and keeps the fan's zeros
    sample = {"image": fan_image(2), "landmarks": np.array([[12.0, 14.0, 16.0]] * 3), "spacing": np.ones(3)}
    a = us(sample, np.random.default_rng(11))
    b = us(sample, np.random.default_rng(11))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])


def test_sweep_cut_zeroes_beyond_a_plane_across_the_gland_axis_and_keeps_the_landmarks():
    """Reference: an explicit loop over voxels computing each one's position along the
    apex->bladder-neck axis (anisotropic spacing); the cut end's landmark lies the drawn distance
    beyond the plane, inside `beyond_mm`, and nothing on the near side changes."""
    from lmkreg.training.augmentation import SweepCut

    rng0 = np.random.default_rng(0)
    image = rng0.uniform(1.0, 2.0, size=(1, 12, 10, 14)).astype(np.float32)
    spacing = np.array([2.0, 1.0, 0.8])
    landmarks = np.array([[2.0, 3.0, 4.0], [9.0, 6.0, 10.0], [5.0, 8.0, 6.0]])
    mask = (rng0.random((1, 12, 10, 14)) > 0.5).astype(np.uint8)
    sample = {"image": image, "landmarks": landmarks, "spacing": spacing, "mask": mask}
    cut = SweepCut(p=1.0, beyond_mm=(1.0, 3.0))
    ends = set()
    for seed in range(12):
        out = cut(sample, np.random.default_rng(seed))
        assert np.array_equal(out["landmarks"], landmarks) and out["mask"] is mask
        zero = out["image"][0] == 0
        assert zero.any() and not zero.all()
        # which end was cut: the landmark (0 = apex, 1 = bladder neck) lying in the zeroed part's direction
        a, b = landmarks[0] * spacing, landmarks[1] * spacing
        idx = np.argwhere(zero)[0] * spacing
        end = 0 if np.linalg.norm(idx - a) < np.linalg.norm(idx - b) else 1
        ends.add(end)
        tip, other = (a, b) if end == 0 else (b, a)
        n = (tip - other) / np.linalg.norm(tip - other)
        along = np.zeros(zero.shape)
        for k, j, i in np.ndindex(*zero.shape):
            along[k, j, i] = (np.array([k, j, i]) * spacing) @ n
        first_cut, last_kept = along[zero].min(), along[~zero].max()
        assert last_kept < first_cut  # one plane across the axis separates kept from cut voxels
        # the plane lies in (last_kept, first_cut]; the landmark's distance beyond it was drawn in [1, 3] mm
        assert tip @ n - first_cut <= 3.0 and tip @ n - last_kept >= 1.0
        assert np.array_equal(out["image"][0][~zero], image[0][~zero])
    assert ends == {0, 1}  # both ends get cut
    missing = {**sample, "landmarks": np.array([[np.nan] * 3, [9.0, 6.0, 10.0], [5.0, 8.0, 6.0]])}
    assert cut(missing, np.random.default_rng(0))["image"] is image  # no axis: left alone
