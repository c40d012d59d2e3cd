"""Audit of issues 2 (foundation) and 3 (self-configuration): requirements that had no test.

References are independent of lmkreg: SimpleITK (DICOMOrient, TransformPhysicalPointToIndex,
TransformContinuousIndexToPhysicalPoint), numpy statistics, scipy rotations, and closed-form
values computed here (Rayleigh moments of Rician noise at zero signal, a sampled Gaussian
edge profile, the dB slope of depth attenuation).
"""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lmkreg.dataset.layout import Dataset, DatasetSpec, find_dataset, open_dataset
from lmkreg.errors import ConfigurationError, InputError
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.io.landmark_files import read_landmarks, write_landmarks
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json, write_lmkreg_json
from lmkreg.io.images import write_image

REPO = Path(__file__).resolve().parents[1]


# ==== issue 2: package ============================================================================

ISSUE_SCRIPTS = ("lmkreg_import", "lmkreg_verify_dataset", "lmkreg_generate_phantoms", "lmkreg_plan_and_preprocess")


def test_console_scripts_are_installed_and_answer_help(capsys):
    scripts = {ep.name: ep for ep in metadata.entry_points(group="console_scripts") if ep.name.startswith("lmkreg_")}
    assert set(ISSUE_SCRIPTS) <= set(scripts), sorted(scripts)
    for name in ISSUE_SCRIPTS:
        main = scripts[name].load()
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out.lower()
    extras = metadata.metadata("lmkreg").get_all("Provides-Extra") or []
    assert "test" in extras


def test_ci_script_pins_the_cpu_torch_and_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "python -m pytest" in ci
    readme = (REPO / "README.md").read_text()
    assert "python -m pytest" in readme


# ==== issue 2: environment variables and dataset.json =============================================

@pytest.mark.parametrize("value", [None, "", "   "])
def test_lmkreg_folders_default_under_home(monkeypatch, tmp_path, value):
    from lmkreg.paths import preprocessed_root, raw_root, results_root

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("LMKREG_raw", "LMKREG_preprocessed", "LMKREG_results"):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    assert raw_root() == tmp_path / "lmkreg_data" / "raw"
    assert preprocessed_root() == tmp_path / "lmkreg_data" / "preprocessed"
    assert results_root() == tmp_path / "lmkreg_data" / "results"


def test_lmkreg_folder_that_is_a_file_is_a_clear_error(monkeypatch, tmp_path):
    from lmkreg.paths import raw_root

    f = tmp_path / "not_a_folder"
    f.write_text("x")
    monkeypatch.setenv("LMKREG_raw", str(f))
    with pytest.raises(ConfigurationError, match=r"LMKREG_raw=.*not_a_folder.*not a folder"):
        raw_root()


def test_missing_dataset_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LMKREG_raw", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match="no dataset with id 5.*LMKREG_raw"):
        open_dataset(5)


def test_two_datasets_with_one_id_are_refused(tmp_path):
    for name in ("Dataset004_A", "Dataset004_B"):
        Dataset.create(tmp_path / name, DatasetSpec(name=name))
    with pytest.raises(ConfigurationError, match="several datasets with id 4"):
        find_dataset(4, tmp_path)
    assert find_dataset("Dataset004_B", tmp_path) == tmp_path / "Dataset004_B"


def test_dataset_json_names_modalities_landmarks_and_file_ending(tmp_path, oblique_geometry, rng):
    """A dataset with its own modality names, landmark names and file ending is honoured."""
    spec = DatasetSpec(name="Dataset021_Own", modalities=["T2", "TRUS"], landmarks=["base", "tip"],
                       file_ending=".nrrd")
    ds = Dataset.create(tmp_path / spec.name, spec)
    stored = json.loads((ds.folder / "dataset.json").read_text())
    assert (stored["modalities"], stored["landmarks"], stored["file_ending"]) == (["T2", "TRUS"], ["base", "tip"],
                                                                                  ".nrrd")
    arr = rng.normal(size=oblique_geometry.shape_zyx).astype(np.float32)
    for case in ("k2", "k1"):
        for m in spec.modalities:
            write_image(oblique_geometry.make_image(arr), ds.image_path(case, m))
    (ds.folder / "imagesTr" / "k3_T2.nii.gz").parent.mkdir(exist_ok=True)
    write_image(oblique_geometry.make_image(arr), ds.folder / "imagesTr" / "k3_T2.nii.gz")  # other ending
    again = Dataset(ds.folder)
    assert again.cases("Tr") == ["k1", "k2"]
    assert again.image_path("k1", "TRUS").name == "k1_TRUS.nrrd"
    assert again.landmarks_path("k1", "T2").name == "k1_T2.json"
    with pytest.raises(ConfigurationError, match="unknown modality 'US'"):
        again.image_path("k1", "US")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("landmarks"), r"missing key\(s\) \['landmarks'\]"),
    (lambda d: d.update(modality=["MR"]), r"unknown key\(s\) \['modality'\]"),
    (lambda d: d.update(name="MyData"), "must look like 'Dataset001_Name'"),
    (lambda d: d.update(file_ending="nii.gz"), "file_ending"),
    (lambda d: d.update(landmarks=["apex", "apex"]), "unique"),
    (lambda d: d.update(modalities=["MR", "../US"]), "unsafe"),
])
def test_broken_dataset_json_names_the_file_and_the_key(tmp_path, edit, message):
    ds = Dataset.create(tmp_path / "Dataset022_Broken", DatasetSpec(name="Dataset022_Broken"))
    path = ds.folder / "dataset.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        Dataset(ds.folder)
    assert str(path) in str(info.value)


def test_dataset_json_that_is_not_json_names_the_file(tmp_path):
    folder = tmp_path / "Dataset023_X"
    folder.mkdir()
    (folder / "dataset.json").write_text("{name: ")
    with pytest.raises(InputError, match=r"dataset\.json.*not valid JSON"):
        Dataset(folder)


# ==== issue 2: landmark formats ====================================================================

def test_lmkreg_json_on_disk_is_exactly_the_documented_document(tmp_path):
    f = tmp_path / "c_MR.json"
    write_lmkreg_json(LandmarkSet({"apex": [1.5, -2.0, 3.25], "bladder_neck": None, "posterior_median": [0, 0, 1]}), f)
    assert json.loads(f.read_text()) == {"coordinate_system": "LPS", "units": "mm",
                                         "landmarks": {"apex": [1.5, -2.0, 3.25], "bladder_neck": None,
                                                       "posterior_median": [0.0, 0.0, 1.0]}}
    hand = tmp_path / "hand.json"
    hand.write_text('{"coordinate_system": "LPS", "units": "mm", '
                    '"landmarks": {"posterior_median": [4, 5, 6], "apex": null, "bladder_neck": [1, 2, 3]}}')
    got = read_landmarks(hand, ["apex", "bladder_neck", "posterior_median"])
    assert got["apex"] is None
    np.testing.assert_array_equal(got["bladder_neck"], [1, 2, 3])
    np.testing.assert_array_equal(got["posterior_median"], [4, 5, 6])


def test_a_missing_landmark_survives_a_chain_through_every_format(tmp_path):
    """json -> mrk.json -> fcsv -> json: positions exact, the missing one still missing, by name."""
    start = LandmarkSet({"apex": [10.125, -3.5, 7.0], "bladder_neck": None, "posterior_median": [-1.0, 22.75, 0.5]})
    current = start
    for i, suffix in enumerate((".json", ".mrk.json", ".fcsv", ".json")):
        f = tmp_path / f"step{i}{suffix}"
        write_landmarks(current, f)
        current = read_landmarks(f, ["posterior_median", "bladder_neck", "apex"])  # another order each time
        current = current.select(["apex", "bladder_neck", "posterior_median"])
    assert current.equals(start, atol=1e-9) and current.missing() == ["bladder_neck"]


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


def test_documentation_pictures_exist():
    for md, png in (("coordinates.md", "coordinates.png"), ("phantoms.md", "phantom_examples.png")):
        assert f"({png})" in (REPO / "documentation" / md).read_text()
        assert (REPO / "documentation" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ==== issue 3: fingerprint ========================================================================

def _orientation_reference(direction) -> str:
    """ITK letters: for each array axis x, y, z the world axis it mostly points along."""
    d = np.asarray(direction, float).reshape(3, 3)
    out = ""
    for col in range(3):
        row = int(np.argmax(np.abs(d[:, col])))
        out += ("LPS" if d[row, col] > 0 else "RAI")[row]
    return out


def _write_case(ds, case, modality, geom, array, mask, landmarks):
    write_image(geom.make_image(array), ds.image_path(case, modality))
    if mask is not None:
        write_image(geom.make_image(mask), ds.mask_path(case, modality))
    write_lmkreg_json(landmarks, ds.landmarks_path(case, modality))


def test_fingerprint_values_against_numpy_and_simpleitk(tmp_path, rng):
    """Per case: shape, spacing, canonical spacing (= SimpleITK's DICOMOrient to LPS), orientation,
    intensity statistics over the mask (or the non-zero voxels without one), landmark offsets
    from the image centre; and the per-modality summary."""
    from lmkreg.planning.fingerprint import FINGERPRINT_FILE, compute_fingerprint, save_fingerprint

    spec = DatasetSpec(name="Dataset031_Fp", modalities=["MR"], num_training=3)
    ds = Dataset.create(tmp_path / spec.name, spec)
    perm = np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])  # array x -> S, y -> L, z -> -P
    geoms = [ImageGeometry.create((10, 12, 14), (0.7, 1.1, 2.5), (3.0, -4.0, 5.0), rotation_direction((10, -5, 20))),
             ImageGeometry.create((9, 11, 13), (0.9, 0.6, 1.7), (-8.0, 2.0, 1.0),
                                  rotation_direction((4, 8, -6)) @ perm),
             ImageGeometry.create((8, 10, 12), (1.0, 1.2, 1.4), (0.0, 0.0, 0.0), np.eye(3))]
    truth = []
    for i, g in enumerate(geoms):
        arr = rng.uniform(1, 500, g.shape_zyx).astype(np.float32)
        arr[:2] = 0  # zeros: excluded from the non-zero region
        mask = None
        if i < 2:
            mask = np.zeros(g.shape_zyx, np.uint8)
            mask[3:7, 3:8, 4:10] = 1
        idx = rng.uniform(1, np.asarray(g.shape_zyx) - 2, (3, 3))
        image = g.make_image(np.zeros(g.shape_zyx, np.uint8))
        world = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in idx])
        lms = LandmarkSet(dict(zip(["apex", "bladder_neck", "posterior_median"], world)))
        if i == 2:
            lms.points["bladder_neck"] = None
        _write_case(ds, f"f{i}", "MR", g, arr, mask, lms)
        truth.append((g, arr, mask, lms))

    fp = compute_fingerprint(Dataset(ds.folder), workers=1)
    path = save_fingerprint(fp, tmp_path)
    assert path.name == FINGERPRINT_FILE and json.loads(path.read_text()) == json.loads(json.dumps(fp))
    cases = fp["modalities"]["MR"]["cases"]
    all_offsets = []
    for (g, arr, mask, lms), c in zip(truth, cases):
        image = sitk.ReadImage(str(ds.image_path(c["case"], "MR")))
        assert c["shape_zyx"] == list(g.shape_zyx)
        np.testing.assert_allclose(c["spacing_xyz"], g.spacing_xyz, rtol=1e-6)
        canon = sitk.DICOMOrient(image, "LPS")
        np.testing.assert_allclose(c["canonical_spacing_zyx"], canon.GetSpacing()[::-1], rtol=1e-6)
        np.testing.assert_allclose(c["extent_mm_zyx"], np.multiply(canon.GetSpacing(), canon.GetSize())[::-1],
                                   rtol=1e-6)
        assert c["orientation"] == _orientation_reference(image.GetDirection())
        region = (arr[mask > 0] if mask is not None else arr[arr != 0]).astype(np.float64)
        st = c["intensity"]
        assert st["mean"] == pytest.approx(region.mean(), rel=1e-5)
        assert st["std"] == pytest.approx(region.std(), rel=1e-4)
        assert st["percentile_00_5"] == pytest.approx(np.percentile(region, 0.5), rel=1e-5)
        assert st["percentile_99_5"] == pytest.approx(np.percentile(region, 99.5), rel=1e-5)
        centre = np.array(image.TransformContinuousIndexToPhysicalPoint(
            tuple((np.asarray(image.GetSize(), float) - 1) / 2)))
        for name in lms.names:
            if lms[name] is None:
                assert c["landmark_offsets_lps"][name] is None
            else:
                np.testing.assert_allclose(c["landmark_offsets_lps"][name], lms[name] - centre, atol=1e-4)
                all_offsets.append(lms[name] - centre)
    assert cases[1]["orientation"] != "LPS"  # the permuted case really is permuted
    s = fp["modalities"]["MR"]["summary"]
    canon_spacings = [sitk.DICOMOrient(sitk.ReadImage(str(ds.image_path(f"f{i}", "MR"))), "LPS").GetSpacing()[::-1]
                      for i in range(3)]
    np.testing.assert_allclose(s["median_spacing_zyx"], np.median(canon_spacings, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["landmark_offset_min_lps"], np.min(all_offsets, axis=0), atol=1e-4)
    np.testing.assert_allclose(s["landmark_offset_max_lps"], np.max(all_offsets, axis=0), atol=1e-4)
    assert s["landmarks_missing"] == {"apex": 0, "bladder_neck": 1, "posterior_median": 0}


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, -20, 25), (-35, 10, 40), (44, 0, 0)])
def test_canonical_spacing_equals_dicomorient_for_every_axis_order(angles):
    from lmkreg.planning.fingerprint import canonical_spacing_zyx
    import itertools

    for perm in itertools.permutations(range(3)):
        for signs in ((1, 1, 1), (-1, 1, -1)):
            d = np.zeros((3, 3))
            for col, (row, sg) in enumerate(zip(perm, signs)):
                d[row, col] = sg
            g = ImageGeometry.create((3, 4, 5), (0.5, 1.3, 2.9), (0, 0, 0), rotation_direction(angles) @ d)
            ref = sitk.DICOMOrient(g.make_image(np.zeros(g.shape_zyx, np.uint8)), "LPS").GetSpacing()[::-1]
            np.testing.assert_allclose(canonical_spacing_zyx(g), ref, err_msg=f"{angles} {perm} {signs}")


# ==== issue 3: preprocessing, splits, budget ======================================================

@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from toydata import make_toy_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget

    root = tmp_path_factory.mktemp("audit_pp")
    mp = pytest.MonkeyPatch()
    for var in ("raw", "preprocessed", "results"):
        (root / var).mkdir()
        mp.setenv(f"LMKREG_{var}", str(root / var))
    ds = make_toy_dataset(root / "raw", n_cases=6, dataset_id=17)
    out = plan_and_preprocess("17", Budget("cpu"), workers=1)
    yield ds, out, root
    mp.undo()


def test_preprocessed_mask_is_the_nearest_neighbour_of_the_original(preprocessed):
    """Every preprocessed mask voxel equals the original mask voxel SimpleITK finds at its world
    point (0 outside); the grid is canonical (identity direction)."""
    from lmkreg.config.plans import PLANS_FILE, Plans
    from lmkreg.preprocessing.storage import load_array

    ds, out, _ = preprocessed
    plans = Plans.load(out / PLANS_FILE)
    for modality in ("MR", "US"):
        folder = out / plans.configuration(modality).data_identifier
        for case in ds.cases("Tr", modality)[:2]:
            meta = json.loads((folder / f"{case}.json").read_text())
            assert meta["has_mask"]
            np.testing.assert_allclose(np.reshape(meta["geometry"]["direction"], (3, 3)), np.eye(3))
            got = load_array(folder / f"{case}_mask.b2nd")[0]
            assert got.shape == tuple(meta["geometry"]["shape_zyx"]) and set(np.unique(got)) <= {0, 1}
            original = sitk.ReadImage(str(ds.mask_path(case, modality)))
            src = sitk.GetArrayFromImage(original)
            grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in got.shape], indexing="ij"), -1)
            affine = np.array(meta["index_to_world"])
            world = grid.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
            expected = np.zeros(len(world), np.uint8)
            size = np.array(original.GetSize())
            for n, w in enumerate(world):
                ci = np.array(original.TransformPhysicalPointToContinuousIndex(tuple(w)))
                i = np.floor(ci + 0.5).astype(int)
                if np.all(i >= 0) and np.all(i < size):
                    expected[n] = src[i[2], i[1], i[0]]
            agree = np.mean(expected == got.ravel())
            assert agree > 0.999 and got.sum() > 50  # ties at exact half-voxels may round either way


def test_splits_file_has_five_seeded_folds_and_a_users_file_is_kept(preprocessed, capsys, monkeypatch):
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess
    from lmkreg.planning.planner import Budget
    from lmkreg.config.splits import SPLITS_FILE, make_splits

    ds, out, root = preprocessed
    for var in ("raw", "preprocessed", "results"):  # the module's folders, not this test's fresh ones
        monkeypatch.setenv(f"LMKREG_{var}", str(root / var))
    splits = json.loads((out / SPLITS_FILE).read_text())
    assert len(splits) == 5 and splits == make_splits(ds.cases("Tr"), 5)
    assert sorted(c for f in splits for c in f["val"]) == ds.cases("Tr")
    mine = [{"train": ds.cases("Tr")[:4], "val": ds.cases("Tr")[4:]}]
    (out / SPLITS_FILE).write_text(json.dumps(mine))
    plan_and_preprocess("17", Budget("cpu"), workers=1)
    assert json.loads((out / SPLITS_FILE).read_text()) == mine
    capsys.readouterr()


def test_fingerprint_and_plans_files_are_written_and_readable_by_people(preprocessed):
    from lmkreg.planning.fingerprint import FINGERPRINT_FILE
    from lmkreg.config.plans import PLANS_FILE

    _, out, _ = preprocessed
    fp = json.loads((out / FINGERPRINT_FILE).read_text())
    assert set(fp["modalities"]) == {"MR", "US"}
    text = (out / PLANS_FILE).read_text()
    assert "\n" in text.strip() and json.loads(text)["configurations"]["MR"]["normalization"]["scheme"] == "zscore"
    plans = json.loads(text)
    assert plans["configurations"]["US"]["normalization"]["scheme"] == "percentile_clip"
    # class-like names are strings, so a person can read and edit them
    assert isinstance(plans["configurations"]["MR"]["training"]["optimizer"], str)


def test_default_budget_is_cpu_without_cuda(monkeypatch):
    import torch

    from lmkreg.planning.planner import Budget

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Budget.default() == Budget("cpu")
    assert Budget.parse("11").gpu_memory_gb == 11 and Budget.parse("24GB").device == "cuda"
    with pytest.raises(ValueError, match="'cpu' or a GPU memory size"):
        Budget.parse("fast")


def test_thick_slice_mr_plan_uses_the_anisotropy_rule():
    """Median 4 x 0.5 x 0.5 mm with a 10th percentile of 3 mm slices: z target 3 mm, noted."""
    from lmkreg.planning.planner import Budget, plan_configuration

    summary = {"median_spacing_zyx": [4.0, 0.5, 0.5], "spacing_percentile_10_zyx": [3.0, 0.5, 0.5],
               "max_extent_mm_zyx": [100.0, 128.0, 128.0], "landmark_offset_min_lps": [-5, -5, -25],
               "landmark_offset_max_lps": [5, 15, 25], "intensity": {"percentile_00_5": 0.0, "percentile_99_5": 1.0}}
    conf = plan_configuration("MR", summary, ["a", "b", "c"], Budget.parse("24"), "Dataset001_X")
    assert any("anisotropic" in n for n in conf.notes)
    assert conf.spacing_zyx[0] / conf.spacing_zyx[1] == pytest.approx(3.0 / 0.5, rel=1e-6)
    assert conf.network.kernel_sizes[0][0] == 1  # the thick axis gets kernel 1 in the first stage
