"""The synthetic MR/TRUS phantoms: presets, poses, anatomy, MR contrast, Rician noise, partial
volume, bias field, TRUS attenuation and speckle, probe compression.

References are independent of lmkreg: numpy statistics, scipy rotations, and closed-form values
computed here (Rayleigh moments of Rician noise at zero signal, a sampled Gaussian edge profile,
the dB slope of depth attenuation)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation


# ==== issue 2: phantoms ============================================================================

def test_phantom_presets_have_the_issue_geometries():
    from lmkreg.phantoms import PRESETS

    mu, paper = PRESETS["mu_regpro"], PRESETS["paper"]
    assert mu.mr_spacing_xyz == mu.us_spacing_xyz == (0.8, 0.8, 0.8)
    assert sorted(mu.mr_size_xyz) == [120, 128, 128] and sorted(mu.us_size_xyz) == [81, 88, 118]
    assert mu.us_size_xyz[1] == 81  # the short axis is anterior-posterior: the fan depth
    assert paper.mr_size_xyz == (256, 256, 128) and paper.mr_spacing_xyz == (0.5, 0.5, 1.0)
    assert paper.us_size_xyz == (256, 256, 256) and paper.us_spacing_xyz == (0.4, 0.4, 0.4)


def test_random_pose_oblique_and_partial_view_ranges():
    """Over many draws: Euler angles (about L, P, S) within 30/10/10 degrees and using that range,
    translations within 15 mm, oblique grids and partial views in the preset's fractions."""
    from lmkreg.phantoms import PRESETS
    from lmkreg.phantoms.generator import sample_acquisition

    p = PRESETS["mu_regpro"]
    rng = np.random.default_rng(7)
    acqs = [sample_acquisition(rng, p) for _ in range(1500)]
    angles = np.array([Rotation.from_matrix(a.rotation).as_euler("xyz", degrees=True) for a in acqs])
    bounds = np.array([30.0, 10.0, 10.0])
    assert np.all(np.abs(angles) <= bounds + 1e-6)
    assert np.all(np.abs(angles).max(axis=0) > 0.95 * bounds)
    t = np.array([a.translation_mm for a in acqs])
    assert np.all(np.abs(t) <= 15.0) and np.abs(t).max() > 14.0
    mr_oblique = np.array([not np.allclose(a.mr_direction, np.eye(3)) for a in acqs])
    partial = np.array([a.partial_view for a in acqs])
    assert abs(mr_oblique.mean() - p.oblique_fraction) < 0.05  # binomial s.e. ~0.012
    assert abs(partial.mean() - p.partial_view_fraction) < 0.04
    for a in np.array(acqs)[mr_oblique][:50]:  # oblique grids are orthonormal and clearly tilted
        d = a.mr_direction
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
        assert np.degrees(Rotation.from_matrix(d).magnitude()) >= 3.0 - 1e-9


def test_the_true_transform_is_the_sampled_pose_about_the_gland():
    from lmkreg.phantoms import generate_case

    case = generate_case(3, "tiny", partial_view=False)
    acq = case.acquisition
    m = case.transform.matrix()
    np.testing.assert_allclose(m[:3, :3], acq.rotation, atol=1e-12)
    c = acq.gland_centre_mr
    np.testing.assert_allclose(case.transform.apply(c) - c, acq.translation_mm, atol=1e-9)


def _patient_grid(step=2.0, half=70.0):
    axis = np.arange(-half, half + step, step)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def test_anatomy_has_zones_bladder_above_rectum_behind_muscle_and_bone():
    from lmkreg.phantoms import Tissue, generate_case

    checked = 0
    for seed in (0, 1):
        case = generate_case(seed, "tiny", partial_view=False)
        pts = _patient_grid()
        labels, _, _ = case.anatomy.evaluate(pts)
        gland = np.isin(labels, [Tissue.PZ, Tissue.TZ])
        pz, tz = labels == Tissue.PZ, labels == Tissue.TZ
        assert pz.sum() > 500 and tz.sum() > 500  # zonal anatomy: both zones present
        # P (y, posterior) of the peripheral zone: mostly behind the transition zone
        assert pts[pz, 1].mean() > pts[tz, 1].mean()
        # bladder (urine) above the gland (S = z)
        urine = labels == Tissue.URINE
        assert urine.sum() > 1000 and pts[urine, 2].mean() > pts[gland, 2].max() - 5
        # rectum behind the gland, along the probe: its wall is posterior of the gland centre
        rectum = np.isin(labels, [Tissue.RECTAL_WALL, Tissue.RECTAL_LUMEN])
        near = rectum & (np.abs(pts[:, 2] - pts[gland, 2].mean()) < 10)
        assert near.sum() > 50
        gland_posterior = pts[gland, 1].max()
        rectal_wall_front = pts[near & (labels == Tissue.RECTAL_WALL), 1].min()
        assert rectal_wall_front > pts[gland, 1].mean() and rectal_wall_front <= gland_posterior + 4
        # pelvic muscle and bone exist, beside or in front of the gland (not behind the rectum)
        for t in (Tissue.MUSCLE, Tissue.BONE_CORTEX, Tissue.BONE_MARROW):
            assert (labels == t).sum() > 100, t
        bone = np.isin(labels, [Tissue.BONE_CORTEX, Tissue.BONE_MARROW])
        assert np.abs(pts[bone, 0]).max() > pts[gland, 0].max() + 10  # reaches beyond the gland laterally
        checked += 1
    assert checked == 2


def test_mr_tissue_contrast_is_t2_like():
    from lmkreg.phantoms import Tissue
    from lmkreg.phantoms.mr import SIGNAL

    s = {t: float(SIGNAL[t]) for t in Tissue}
    # T2: urine brightest, fat and peripheral zone bright, transition zone intermediate, muscle dark
    assert s[Tissue.URINE] > s[Tissue.FAT] > s[Tissue.PZ] > s[Tissue.TZ] > s[Tissue.MUSCLE]
    assert s[Tissue.CALCIFICATION] < s[Tissue.MUSCLE] and s[Tissue.BONE_CORTEX] < s[Tissue.MUSCLE]


def test_mr_noise_is_rician():
    """Zero signal -> Rayleigh magnitude (mean sigma sqrt(pi/2), mean/std 1.913); a Gaussian
    additive model would give mean 0 and negative values."""
    from lmkreg.phantoms import Tissue
    from lmkreg.phantoms.mr import render_mr

    labels = np.zeros((40, 64, 64), np.uint8)
    labels[20:] = Tissue.URINE  # signal 1000 -> noise sigma = 3 % of the 99th percentile = 30
    zeros = np.zeros(labels.shape, np.float32)
    out = render_mr(labels, zeros, zeros, np.random.default_rng(0), noise_fraction=0.03, bias_strength=0.0)
    assert out.min() >= 0
    background = out[2:17].astype(np.float64)
    sigma = 30.0
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
    assert background.mean() / background.std() == pytest.approx(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2), rel=0.03)
    bright = out[23:38].astype(np.float64)
    # Rician second moment: nu^2 + 2 sigma^2
    assert np.mean(bright ** 2) - 1000.0 ** 2 == pytest.approx(2 * sigma ** 2, abs=800)


def test_mr_partial_volume_blur_of_an_edge():
    """Noise-free, no bias: a tissue step becomes the sampled Gaussian (sigma 0.5 voxel) edge."""
    from lmkreg.phantoms import Tissue
    from lmkreg.phantoms.mr import render_mr

    labels = np.zeros((20, 8, 8), np.uint8)
    labels[10:] = Tissue.URINE
    zeros = np.zeros(labels.shape, np.float32)
    out = render_mr(labels, zeros, zeros, np.random.default_rng(0), noise_fraction=0.0, bias_strength=0.0)
    k = np.arange(-2, 3)
    w = np.exp(-k ** 2 / (2 * 0.5 ** 2))
    w /= w.sum()
    expected = {8: w[4], 9: w[3] + w[4], 10: w[2] + w[3] + w[4], 11: 1 - w[0]}
    for z, frac in expected.items():
        np.testing.assert_allclose(out[z], 1000.0 * frac, rtol=1e-5)
    np.testing.assert_allclose(out[:6], 0, atol=1e-3)
    np.testing.assert_allclose(out[14:], 1000.0, rtol=1e-6)


def test_mr_bias_field_is_smooth_and_multiplicative():
    from lmkreg.phantoms import Tissue
    from lmkreg.phantoms.mr import render_mr

    shape = (12, 16, 20)
    labels = np.full(shape, Tissue.URINE, np.uint8)
    zeros = np.zeros(shape, np.float32)
    out = render_mr(labels, zeros, zeros, np.random.default_rng(3), noise_fraction=0.0, bias_strength=0.25)
    log_ratio = np.log(out.astype(np.float64) / 1000.0)
    assert np.ptp(log_ratio) > 0.05  # there is a bias
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, y * z, x * z], -1).reshape(-1, 10)
    coef, *_ = np.linalg.lstsq(basis, log_ratio.ravel(), rcond=None)
    assert np.abs(basis @ coef - log_ratio.ravel()).max() < 1e-5  # smooth: a quadratic in log


def _uniform_beam(step=0.5, shape=(24, 48, 120), seed=0):
    from lmkreg.phantoms import Tissue
    from lmkreg.phantoms.us import render_beam_image

    labels = np.full(shape, Tissue.MUSCLE, np.uint8)
    zeros = np.zeros(shape, np.float32)
    rho = 10.0 + step * np.arange(shape[2])
    return render_beam_image(labels, zeros, zeros, rho, np.random.default_rng(seed), step), rho


def test_trus_depth_attenuation_matches_the_db_slope():
    """Homogeneous muscle: B-mode grey values fall with depth at
    254/45 grey/dB * 20 log10(e) dB * (-2 mu + 2 * 0.006 TGC) per mm, mu = 0.012 /mm."""
    img, rho = _uniform_beam()
    profile = img.astype(np.float64).mean(axis=(0, 1))
    slope = np.polyfit(rho, profile, 1)[0]
    expected = 254 / 45 * 20 * np.log10(np.e) * (-2 * 0.012 + 2 * 0.006)
    assert slope == pytest.approx(expected, rel=0.1)
    assert expected < -0.5


def test_trus_speckle_is_spatially_correlated_but_not_uniform():
    img, _ = _uniform_beam()
    resid = img.astype(np.float64) - img.mean(axis=(0, 1), keepdims=True)  # remove the depth trend
    assert resid.std() > 5  # there is speckle

    def corr(axis, lag):
        a = np.moveaxis(resid, axis, 0)
        return float(np.corrcoef(a[:-lag].ravel(), a[lag:].ravel())[0, 1])

    for axis in range(3):
        assert corr(axis, 1) > 0.2, axis  # correlated speckle (white noise would give ~0)
        assert corr(axis, 12) < 0.1, axis  # but decorrelates: a speckle pattern, not a smooth field


def test_probe_compression_is_smooth_invertible_and_non_rigid():
    from lmkreg.phantoms import generate_case

    case = generate_case(4, "tiny", partial_view=False)
    comp = case.compression
    rng = np.random.default_rng(0)
    pts = case.probe.origin + rng.uniform(-40, 40, (2000, 3))
    np.testing.assert_allclose(comp.inverse(comp.forward(pts)), pts, atol=1e-6)
    disp = np.linalg.norm(comp.displacement(pts), axis=1)
    assert disp.max() == pytest.approx(case.acquisition.compression_mm, rel=1e-6)  # full push near the probe
    assert disp.min() < 0.2 * disp.max()  # fades with distance: non-rigid
    # Jacobian by central differences: determinant stays positive (no folding)
    h = 1e-3
    jac = np.stack([(comp.forward(pts + h * e) - comp.forward(pts - h * e)) / (2 * h) for e in np.eye(3)], -1)
    assert np.linalg.det(jac).min() > 0.5
