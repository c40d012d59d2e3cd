"""Trust arithmetic without networks: the conformal quantile and its coverage guarantee, ROC AUC
against scipy's Mann-Whitney U, the pair residual limit against a Monte Carlo of rigid fits,
the transform uncertainty, and plausibility checks naming what failed and by how much."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import mannwhitneyu

from lmkreg.evaluation.evaluate import CaseResult, calibration_summary
from lmkreg.evaluation.metrics import radius_coverage, roc_auc
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.trust.calibration import Calibration, conformal_quantile, minimum_cases, signal_scale
from lmkreg.trust.pair import COVERAGE_SIGMA, RMS_FACTOR_95, assess_pair, transform_uncertainty
from lmkreg.trust.plausibility import TrainingStatistics, _summary, landmark_features

NAMES = ["apex", "bladder_neck", "posterior_median"]
TRIANGLE = np.array([[0.0, 0.0, -20.0], [2.0, 5.0, 18.0], [0.0, 14.0, 0.0]])  # LPS mm, ~ a prostate's


def test_conformal_quantile_is_the_ceil_n_plus_1_c_th_smallest():
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 21.0))  # 1..20
    q, why = conformal_quantile(scores, 0.9)
    assert q == 19.0 and why == ""  # ceil(21 * 0.9) = 19
    assert conformal_quantile(scores, 0.5)[0] == 11.0  # ceil(21 * 0.5) = 11
    q, why = conformal_quantile(scores[:8], 0.9)
    assert q is None and "needs at least 9" in why
    assert minimum_cases(0.9) == 9 and minimum_cases(0.8) == 4
    assert signal_scale(3.0, float("nan")) == pytest.approx(math.sqrt(10.0))


def test_conformal_radius_covers_at_least_the_stated_share_of_new_cases():
    """The guarantee itself: exchangeable heteroscedastic errors, radius q * scale, coverage >= 90 %
    on average over many calibration draws (and not grossly more)."""
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(400):
        scale = rng.uniform(0.5, 4.0, 30)
        err = scale * np.abs(rng.standard_t(3, 30))
        q, _ = conformal_quantile(err[:20] / scale[:20], 0.9)
        hits += list(err[20:] <= q * scale[20:])
    assert 0.895 <= np.mean(hits) <= 0.95


def test_roc_auc_is_mann_whitney_u_over_n1_n2():
    rng = np.random.default_rng(2)
    for _ in range(5):
        scores = rng.integers(0, 4, 60).astype(float)  # many ties
        labels = rng.random(60) < 0.3
        u = mannwhitneyu(scores[labels], scores[~labels], alternative="two-sided").statistic
        assert roc_auc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()))
    assert roc_auc([1.0, 0.0], [True, False]) == 1.0
    assert roc_auc([0.0, 1.0], [True, False]) == 0.0
    assert roc_auc([1.0, 1.0], [True, True]) is None


def test_radius_coverage_counts_errors_within_their_radius():
    out = radius_coverage([1.0, 2.0, 3.0, float("nan"), 1.0], [1.5, 1.5, 3.0, 2.0, None])
    assert out["n"] == 3 and out["coverage"] == pytest.approx(2 / 3)


def test_rms_limit_factor_matches_monte_carlo_of_noisy_rigid_fits():
    """95th percentile of the 3-point RMS residual is RMS_FACTOR_95 * combined sigma (small noise)."""
    rng = np.random.default_rng(3)
    sigma = 0.4
    rms = []
    for _ in range(3000):
        p = TRIANGLE + rng.normal(0, sigma, (3, 3))
        q = TRIANGLE + rng.normal(0, sigma, (3, 3))
        t = fit_rigid(p, q)
        rms.append(np.sqrt(np.mean(np.sum((t.apply(p) - q) ** 2, 1))))
    expected = RMS_FACTOR_95 * sigma * math.sqrt(2)
    assert np.percentile(rms, 95) == pytest.approx(expected, rel=0.1)
    assert COVERAGE_SIGMA == pytest.approx(2.5003, abs=1e-3)  # sqrt of chi2(3) 90 % quantile


def _with_trust(points: np.ndarray, radius: float, pair_p95: float = 1.0) -> LandmarkSet:
    trust = {"coverage": 0.9, "landmarks": {n: {"radius_mm": radius, "flagged": False} for n in NAMES},
             "training_pair_rms_mm": {"n": 20, "p95": pair_p95, "max": pair_p95}}
    return LandmarkSet(dict(zip(NAMES, points)), {"trust": trust, "reliable": True, "flags": []})


def test_pair_of_one_anatomy_passes_and_another_anatomy_is_flagged_with_the_excess():
    r = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix()
    us_same = TRIANGLE @ r.T + [5.0, -3.0, 40.0]
    mr = _with_trust(TRIANGLE, 1.5)
    same = _with_trust(us_same + np.random.default_rng(4).normal(0, 0.3, (3, 3)), 1.5)
    fit = fit_rigid(mr.to_array(), same.to_array())
    rms = float(np.sqrt(np.mean(np.sum((fit.apply(mr.to_array()) - same.to_array()) ** 2, 1))))
    doc = assess_pair(mr, same, NAMES, rms)
    assert doc["reliable"] and doc["flags"] == []
    sigma2 = 2 * (1.5 / COVERAGE_SIGMA) ** 2
    assert doc["expected_rms_limit_mm"] == pytest.approx(math.sqrt(1.0 + RMS_FACTOR_95 ** 2 * sigma2))
    other = TRIANGLE.copy()
    other[1] += [0.0, -6.0, 8.0]  # a longer gland: bladder neck 10 mm further
    other_us = _with_trust(other @ r.T + [5.0, -3.0, 40.0], 1.5)
    fit = fit_rigid(mr.to_array(), other_us.to_array())
    rms = float(np.sqrt(np.mean(np.sum((fit.apply(mr.to_array()) - other_us.to_array()) ** 2, 1))))
    doc = assess_pair(mr, other_us, NAMES, rms)
    assert not doc["reliable"]
    assert f"RMS residual {rms:.1f} mm" in doc["flags"][0] and "not of the same patient" in doc["flags"][0]
    # without any trust extras (e.g. ground-truth files) the literature default error is counted and said so
    # (issue 26); it does not make the transform "uncertain" on its own
    plain = assess_pair(LandmarkSet(dict(zip(NAMES, TRIANGLE))), LandmarkSet(dict(zip(NAMES, us_same))), NAMES, 0.2)
    assert plain["reliable"] and plain["error_estimate"] == {"MR": "default", "US": "default"}
    assert "uncalibrated" in plain["notes"][0] and "literature default 2.5 mm" in plain["notes"][0]
    assert "literature default" in plain["uncertainty"]["from"]


def test_transform_uncertainty_grows_with_the_radii_and_vanishes_without_error():
    zero = transform_uncertainty(TRIANGLE, TRIANGLE, np.zeros(3), np.zeros(3), samples=50)
    assert zero["rotation_deg_90"] == pytest.approx(0.0, abs=1e-6)
    assert zero["gland_centre_error_mm_90"] == pytest.approx(0.0, abs=1e-9)
    small = transform_uncertainty(TRIANGLE, TRIANGLE, np.full(3, 0.5), np.full(3, 0.5), samples=400)
    large = transform_uncertainty(TRIANGLE, TRIANGLE, np.full(3, 1.0), np.full(3, 1.0), samples=400)
    assert 1.6 < large["rotation_deg_90"] / small["rotation_deg_90"] < 2.4
    assert 1.6 < large["gland_centre_error_mm_90"] / small["gland_centre_error_mm_90"] < 2.4
    # the centroid of the fitted points moves by the mean of 6 sigma-noises: sd sigma * sqrt(2/3) per axis,
    # so its 90th percentile 3D distance is that times sqrt(chi2(3, 0.9))
    assert large["gland_centre_error_mm_90"] == pytest.approx(math.sqrt(2 / 3) * COVERAGE_SIGMA, rel=0.15)


def _statistics(n: int = 30) -> TrainingStatistics:
    rng = np.random.default_rng(5)
    scalars, dirs = {}, {}
    for _ in range(n):
        pts = TRIANGLE * rng.uniform(0.9, 1.1) + rng.normal(0, 0.8, (3, 3))
        f = landmark_features(pts, NAMES, np.zeros(3))
        for k, v in f["scalars"].items():
            scalars.setdefault(k, []).append(v)
        for k, v in f["directions"].items():
            dirs.setdefault(k, []).append(np.asarray(v))
    dir_doc = {}
    for k, vs in dirs.items():
        m = np.mean(vs, 0) / np.linalg.norm(np.mean(vs, 0))
        dir_doc[k] = {"mean": m.tolist(), "max_angle_deg": max(math.degrees(math.acos(min(1, float(v @ m)))) for v in vs)}
    doc = {"landmark_names": NAMES, "landmarks": {"scalars": {k: _summary(v) for k, v in scalars.items()},
                                                   "directions": dir_doc,
                                                   "offset": {"mean": TRIANGLE.mean(0).tolist(), "max_distance_mm": 2.0}},
           "image": {"crop": {}, "extent_lps_mm": [{"n": 3, "min": 90.0, "max": 110.0, "mean": 100.0, "sd": 5.0}] * 3}}
    return TrainingStatistics(doc)


def test_plausibility_names_the_failed_quantity_and_the_excess():
    stats = _statistics()
    assert stats.check_landmarks(TRIANGLE, np.zeros(3)) == []
    upside_down = TRIANGLE * [1, 1, -1]  # the gland flipped head to foot
    problems = [f.text for f in stats.check_landmarks(upside_down, np.zeros(3))]
    assert any(p.startswith("case: direction apex->bladder_neck turned") for p in problems), problems
    collapsed = TRIANGLE * 0.3  # a network that put all three near one point
    flags = stats.check_landmarks(collapsed, np.zeros(3))
    problems = [f.text for f in flags]
    d = float(np.linalg.norm(collapsed[0] - collapsed[1]))
    hit = [p for p in problems if p.startswith("case: distance apex-bladder_neck (mm)")]
    assert hit and f"{d:.3g} mm outside" in hit[0]
    low = float(hit[0].split("widened to ")[1].split("..")[0])
    assert f"(by {low - d:.3g} mm)" in hit[0]
    fields = [f for f in flags if f.signal == "distance apex-bladder_neck (mm)"]
    assert len(fields) == 1 and fields[0].value == pytest.approx(d) and fields[0].limit == pytest.approx(low, abs=0.05)
    assert fields[0].landmark is None and fields[0].scope == "case" and fields[0].unit == "mm"
    shifted = stats.check_landmarks(TRIANGLE, np.array([0.0, 0.0, 30.0]))
    assert any("landmarks' centre 30.0 mm from where training cases had it" in p.text for p in shifted), shifted
    big = stats.check_image({}, np.array([100.0, 100.0, 300.0]))
    assert [f.text for f in big] == ["image: extent along S 300 mm is 2.7x the largest seen in training (110 mm)"]
    assert (big[0].signal, big[0].value, big[0].limit) == ("extent_S_mm", 300.0, pytest.approx(2.0 * 110.0))


def test_centre_offset_is_the_distance_from_the_training_place_and_its_widened_limit():
    """Hand-computed: training mean place m = the triangle's centroid (grid centre at 0), largest
    training distance 2 mm, so the limit is 2 + max(0.5 x 2, 8) = 10 mm; a centroid 9 mm off is
    within it, 11 mm off beyond it (the distance the flag and the predictor's second pass use)."""
    stats = _statistics()
    m = TRIANGLE.mean(0)
    for shift, beyond in ((np.array([0.0, 9.0, 0.0]), False), (np.array([6.0, 0.0, -8.0 - 1.0 / 3.0]), True)):
        grid_centre = np.array([5.0, -3.0, 2.0])
        off = stats.centre_offset(TRIANGLE + grid_centre + shift, grid_centre)
        assert off.distance_mm == pytest.approx(float(np.linalg.norm(shift)))
        assert (off.training_max_mm, off.limit_mm) == (2.0, pytest.approx(10.0))
        np.testing.assert_allclose(off.training_mean_lps, m)
        assert off.beyond is beyond
        flagged = any(f.signal == "landmark_centre_offset_mm" for f in stats.check_landmarks(TRIANGLE + grid_centre + shift, grid_centre))
        assert flagged is beyond
    assert stats.centre_offset(TRIANGLE, None) is None
    assert stats.centre_offset(np.full((3, 3), np.nan), np.zeros(3)) is None


def test_evaluation_calibration_summary_counts_coverage_and_auc():
    results = []
    errors = [1.0, 2.0, 6.0, 8.0, 1.5, 7.0]
    flags = [False, False, True, False, True, True]
    for i, (e, f) in enumerate(zip(errors, flags)):
        r = CaseResult(f"c{i}", {"MR": {n: e for n in NAMES}})
        r.radii_mm["MR"] = {n: 3.0 for n in NAMES}
        r.flagged["MR"] = {n: f for n in NAMES}
        r.sre_predicted_mm, r.pair_flagged = e, f
        results.append(r)
    cal = calibration_summary(results, NAMES)
    assert cal["MR"]["apex"]["coverage"] == pytest.approx(3 / 6) and cal["MR"]["all"]["n"] == 18
    expected = roc_auc(np.array(flags, float), np.array(errors) > 5)  # 3 bad: 2 flagged; 3 good: 1 flagged
    assert expected == pytest.approx((4 + 0.5 * 4) / 9)  # 4 pairs ranked right, 4 ties
    assert cal["MR"]["apex"]["auc_flag_vs_error"] == pytest.approx(expected)
    assert cal["pair"]["auc_flag_vs_sre"] == pytest.approx(expected) and cal["pair"]["num_flagged"] == 3
    assert cal["US"]["apex"]["n"] == 0 and cal["US"]["apex"]["auc_flag_vs_error"] is None


# ---- no radii (issue 14: the demo's false pair flags) ----------------------------------------------------

def test_pool_calibration_stores_the_median_validation_error_and_no_radius_below_9_cases(tmp_path):
    import json

    from lmkreg.trust.calibration import FOLD_CASES_FILE, pool_calibration

    rng = np.random.default_rng(8)
    err = rng.uniform(0.5, 3.0, (8, 3))
    err[0, 0] = 31.0  # one failed validation case
    scale = rng.uniform(1.0, 2.0, (8, 3))
    rows = [{"case": f"c{i}", "landmarks": {n: {"error_mm": float(err[i, j]), "scale_mm": float(scale[i, j])}
                                              for j, n in enumerate(NAMES)}} for i in range(8)]
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / FOLD_CASES_FILE).write_text(json.dumps({"fold": "0", "cases": rows}))
    cal = pool_calibration(tmp_path, NAMES)
    for j, n in enumerate(NAMES):
        assert cal.quantiles[n] is None and "needs at least 9" in cal.reasons[n]
        assert cal.median_error_mm[n] == pytest.approx(np.median(err[:, j]))
    assert cal.median_error_mm["apex"] < 3.0  # the failed case does not move the median
    assert Calibration.load(tmp_path).median_error_mm == pytest.approx(cal.median_error_mm)  # round trip


def test_median_sigma_is_the_median_length_of_a_3d_gaussian_error():
    from lmkreg.trust.pair import MEDIAN_SIGMA

    e = np.linalg.norm(np.random.default_rng(10).normal(0, 0.7, (200000, 3)), axis=1)
    assert np.median(e) / 0.7 == pytest.approx(MEDIAN_SIGMA, rel=0.01)


def _noisy_pair(rng, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    r = Rotation.from_euler("xyz", [5, -10, 20], degrees=True).as_matrix()
    return (TRIANGLE + rng.normal(0, sigma, (3, 3)),
            (TRIANGLE @ r.T + [3.0, -2.0, 30.0]) + rng.normal(0, sigma, (3, 3)))


def test_pair_limit_counts_the_validation_error_when_there_are_no_radii():
    """The demo's case: true-triangle residuals small, landmarks with ~1.5 mm median error and no
    radii.  Counting no localisation error flags most clean pairs; counting the median validation
    error (sigma = m / 1.538) flags about 5 % of them, as the limit's 95th percentile says."""
    from lmkreg.trust.pair import MEDIAN_SIGMA

    rng = np.random.default_rng(9)
    sigma = 0.9
    median = sigma * MEDIAN_SIGMA
    pair_stats = {"n": 20, "p95": 0.2, "max": 0.3}
    trust_none = {"coverage": None, "landmarks": {n: {"radius_mm": None} for n in NAMES},
                  "training_pair_rms_mm": pair_stats}
    trust_val = {"coverage": None, "landmarks": {n: {"radius_mm": None, "validation_median_error_mm": median}
                                                 for n in NAMES}, "training_pair_rms_mm": pair_stats}
    flagged_none, flagged_val = [], []
    for _ in range(400):
        p, q = _noisy_pair(rng, sigma)
        t = fit_rigid(p, q)
        rms = float(np.sqrt(np.mean(np.sum((t.apply(p) - q) ** 2, 1))))
        for trust, out in ((trust_none, flagged_none), (trust_val, flagged_val)):
            a = LandmarkSet(dict(zip(NAMES, p)), {"trust": trust})
            b = LandmarkSet(dict(zip(NAMES, q)), {"trust": trust})
            out.append(not assess_pair(a, b, NAMES, rms)["reliable"])
    # issue 26: a file without radii or a validation error counts the literature default (2.5 mm 3D RMS,
    # larger than these landmarks' 1.6 mm), so its clean pairs are not flagged either (before: most were)
    assert np.mean(flagged_none) < 0.05
    assert np.mean(flagged_val) == pytest.approx(0.05, abs=0.03)
    doc = assess_pair(a, b, NAMES, 0.1)
    assert any("uncalibrated" in n for n in doc["notes"]) and "uncalibrated" in doc["uncertainty"]["from"]
    # a file with radii uses them (sigma = r / 2.50 at 90 %), not the median
    with_radii = {"coverage": 0.9, "landmarks": {n: {"radius_mm": 2.5, "validation_median_error_mm": 9.0}
                                                 for n in NAMES}, "training_pair_rms_mm": pair_stats}
    a = LandmarkSet(dict(zip(NAMES, p)), {"trust": with_radii})
    doc = assess_pair(a, a, NAMES, 0.1)
    expected = math.sqrt(0.2 ** 2 + RMS_FACTOR_95 ** 2 * 2 * (2.5 / COVERAGE_SIGMA) ** 2)
    assert doc["expected_rms_limit_mm"] == pytest.approx(expected) and doc["uncertainty"]["from"] == "calibrated radii"


def _oblique_grid():
    from lmkreg.geometry import ImageGeometry
    from lmkreg.geometry.spaces import rotation_direction

    return ImageGeometry.create((20, 30, 26), spacing_xyz=(1.5, 1.2, 2.5), origin_xyz=(-20.0, -25.0, -30.0),
                                direction=rotation_direction((20.0, -10.0, 35.0)))


def test_near_landmarks_zero_fraction_matches_simpleitk_physical_points():
    """The sphere over the gland on an oblique, anisotropic grid, against a brute force that
    places every voxel with SimpleITK's own index->physical mapping (outside voxels: zero)."""
    from lmkreg.trust.plausibility import GLAND_MARGIN_MM, near_landmarks_zero_fraction

    grid = _oblique_grid()
    array = np.random.default_rng(3).normal(size=grid.shape_zyx).astype(np.float32) + 5.0
    array[:, :, :9] = 0.0  # padding along one side of the crop
    centre_index = (np.asarray(grid.shape_zyx, float) - 1) / 2
    points = grid.index_to_world(centre_index) + np.array([[0.0, 0, -14], [3, 2, 12], [1, 9, 0]])
    got = near_landmarks_zero_fraction(array[None], grid, points)

    image = grid.make_image(array)
    c = points.mean(0)
    r = float(np.linalg.norm(points - c, axis=1).max()) + GLAND_MARGIN_MM
    zeros = total = 0
    size = np.asarray(grid.shape_zyx)
    span = int(np.ceil(r / min(grid.spacing_xyz))) + 2
    ci = np.round(grid.world_to_index(c)).astype(int)
    for z in range(ci[0] - span, ci[0] + span + 1):
        for y in range(ci[1] - span, ci[1] + span + 1):
            for x in range(ci[2] - span, ci[2] + span + 1):
                # SimpleITK maps indices beyond the image the same affine way
                w = np.asarray(image.TransformIndexToPhysicalPoint((x, y, z)), float) if (
                    0 <= x < size[2] and 0 <= y < size[1] and 0 <= z < size[0]) else (
                    np.asarray(image.GetOrigin()) + np.asarray(image.GetDirection()).reshape(3, 3)
                    @ (np.asarray(image.GetSpacing()) * [x, y, z]))
                if np.linalg.norm(w - c) <= r:
                    total += 1
                    inside = 0 <= x < size[2] and 0 <= y < size[1] and 0 <= z < size[0]
                    zeros += (not inside) or image[x, y, z] == 0.0
    assert total > 1000 and got == pytest.approx(zeros / total, abs=1e-12)
    assert 0.05 < got < 0.95  # the sphere straddles the padding and the crop's edge
    assert near_landmarks_zero_fraction(array, grid, np.full((3, 3), np.nan)) is None


def test_imaged_constant_share_counts_only_voxels_inside_the_source_image():
    """A crop reaching beyond its (oblique, anisotropic) source image, with a constant region (a
    fan's outside as another modality's normalisation leaves it: -2.5, not 0): the largest
    one-value share among the voxels inside the image, against a brute force that asks
    SimpleITK's physical-to-index mapping of the source image whether each crop voxel lies inside
    it and counts the values with collections.Counter."""
    from collections import Counter

    import SimpleITK as sitk

    from lmkreg.geometry import ImageGeometry
    from lmkreg.trust.plausibility import imaged_constant_share

    grid = _oblique_grid()
    source = ImageGeometry.create((14, 22, 20), spacing_xyz=(1.0, 1.4, 2.0), origin_xyz=(-12.0, -20.0, -24.0),
                                  direction=np.eye(3))
    array = np.random.default_rng(5).normal(size=grid.shape_zyx).astype(np.float32) + 5.0
    array[:, :8] = -2.5  # a constant region on one side: some of it inside the source image, some beyond
    got = imaged_constant_share(array[None], grid, source)
    src = sitk.Image([int(n) for n in source.shape_zyx[::-1]], sitk.sitkUInt8)
    source.apply_to(src)
    crop = grid.make_image(array)
    values = []
    for z in range(grid.shape_zyx[0]):
        for y in range(grid.shape_zyx[1]):
            for x in range(grid.shape_zyx[2]):
                i = src.TransformPhysicalPointToContinuousIndex(crop.TransformIndexToPhysicalPoint((x, y, z)))
                if all(-0.5 <= i[k] <= src.GetSize()[k] - 0.5 for k in range(3)):
                    values.append(float(array[z, y, x]))
    assert 100 < len(values) < array.size
    assert got == pytest.approx(Counter(values).most_common(1)[0][1] / len(values), abs=1e-12)
    assert 0.02 < got < 0.98
    noise = np.random.default_rng(6).normal(size=grid.shape_zyx).astype(np.float32)  # an MR image: no constant region
    assert imaged_constant_share(noise, grid, source) < 0.01
    far = ImageGeometry.create((4, 4, 4), origin_xyz=(500.0, 500.0, 500.0))
    assert imaged_constant_share(array, grid, far) is None


def _padding_statistics(with_ranges: bool, crop_zero=(0.05, 0.07)) -> TrainingStatistics:
    from lmkreg.trust.plausibility import CROP_ZERO, IMAGED_CONSTANT, NEAR_ZERO

    lo, hi = crop_zero
    doc = {"landmark_names": NAMES, "landmarks": {"scalars": {}, "directions": {}, "offset": None},
           "image": {"crop": {CROP_ZERO: {"n": 30, "min": lo, "max": hi, "mean": (lo + hi) / 2, "sd": 0.005}}}}
    if with_ranges:
        doc["image"]["padding"] = {NEAR_ZERO: {"n": 30, "min": 0.0, "max": 0.01, "mean": 0.002, "sd": 0.003},
                                   IMAGED_CONSTANT: {"n": 30, "min": 0.0, "max": 0.004, "mean": 0.001, "sd": 0.001}}
    return TrainingStatistics(doc)


def test_padding_beyond_training_is_flagged_only_where_it_reaches_the_gland():
    """Issue 26: another protocol's tight field of view pads the crop's edges (0.20 zero vs
    training 0.05-0.07, allowed to 0.17) while the gland is fully imaged: no flag.  The same
    padding over the gland (0.30 near the landmarks, allowed to 0.11) is flagged with both
    numbers.  A constant region inside the image itself (a TRUS fan given to an MR model) is flagged
    whatever the gland region shows, and so is a share below training.  Statistics written before the
    padding ranges, or a missing figure: flagged as before."""
    from lmkreg.trust.plausibility import CROP_ZERO, IMAGED_CONSTANT, NEAR_ZERO

    stats = _padding_statistics(with_ranges=True)
    assert stats.check_image({CROP_ZERO: 0.20}, near_landmarks_zero=0.02, imaged_constant=0.0) == []
    flags = stats.check_image({CROP_ZERO: 0.20}, near_landmarks_zero=0.30, imaged_constant=0.0)
    assert [f.signal for f in flags] == [NEAR_ZERO]
    assert flags[0].value == pytest.approx(0.30) and flags[0].limit == pytest.approx(0.11)
    assert "whole crop 0.2" in flags[0].text and "reaches the gland" in flags[0].text
    fan = stats.check_image({CROP_ZERO: 0.50}, near_landmarks_zero=0.02, imaged_constant=0.45)
    assert [f.signal for f in fan] == [IMAGED_CONSTANT] and fan[0].limit == pytest.approx(0.104)
    assert "inside the image itself" in fan[0].text
    assert stats.check_image({CROP_ZERO: 0.06}, near_landmarks_zero=0.30, imaged_constant=0.3) == []  # crop like training
    trus = _padding_statistics(with_ranges=True, crop_zero=(0.50, 0.55))
    low = trus.check_image({CROP_ZERO: 0.06}, near_landmarks_zero=0.0, imaged_constant=0.0)
    assert [f.signal for f in low] == [CROP_ZERO] and low[0].limit == pytest.approx(0.40)
    old = _padding_statistics(with_ranges=False)
    assert [f.signal for f in old.check_image({CROP_ZERO: 0.20}, near_landmarks_zero=0.02, imaged_constant=0.0)] == [CROP_ZERO]
    assert [f.signal for f in stats.check_image({CROP_ZERO: 0.20}, near_landmarks_zero=0.02)] == [CROP_ZERO]


def test_training_statistics_store_the_padding_of_the_true_landmarks_and_the_image():
    from lmkreg.geometry import ImageGeometry
    from lmkreg.trust.plausibility import (IMAGED_CONSTANT, NEAR_ZERO, imaged_constant_share, near_landmarks_zero_fraction,
                                           training_statistics)

    grid = _oblique_grid()
    source = ImageGeometry.create((14, 22, 20), spacing_xyz=(1.0, 1.4, 2.0), origin_xyz=(-12.0, -20.0, -24.0))
    centre = grid.index_to_world((np.asarray(grid.shape_zyx, float) - 1) / 2)
    cases, near, imaged = [], [], []
    for shift in (0.0, 6.0, 12.0):
        pts = centre + TRIANGLE * 0.5 + [shift, 0.0, 0.0]
        array = np.ones((1, *grid.shape_zyx), np.float32)
        array[..., :6] = 0.0
        meta = {"geometry": grid.to_json(), "source_geometry": source.to_json(), "landmarks_world_lps": pts.tolist()}
        cases.append((meta, array))
        near.append(near_landmarks_zero_fraction(array, grid, pts))
        imaged.append(imaged_constant_share(array, grid, source))
    doc = training_statistics("MR", NAMES, cases, [], None)
    s = doc["image"]["padding"][NEAR_ZERO]
    assert s["n"] == 3 and s["min"] == pytest.approx(min(near)) and s["max"] == pytest.approx(max(near))
    assert max(near) > min(near)  # the shift moves the sphere relative to the padding
    assert doc["image"]["padding"][IMAGED_CONSTANT]["mean"] == pytest.approx(imaged[0])
