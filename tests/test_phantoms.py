"""Phantom generator: geometric truth checked against independent references (tiny preset)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lmkreg.dataset.layout import Dataset
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, read_lmkreg_json
from lmkreg.paths import raw_root
from lmkreg.phantoms import PRESETS, generate_case, sample_anatomy
from lmkreg.phantoms.anatomy import CLINICAL_DIAMETERS_MM
from lmkreg.run.phantoms import main as cli_main
from lmkreg.io.transform_json import read_rigid_transform

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def cases():
    """Three tiny cases: one with oblique grids in both modalities, none partly out of view."""
    return [generate_case(0, "tiny", partial_view=False), generate_case(1, "tiny", oblique=True, partial_view=False),
            generate_case(2, "tiny", partial_view=False)]


def _arrays(case):
    return [sitk.GetArrayFromImage(im) for im in (case.mr_image, case.us_image, case.mr_mask, case.us_mask)]


def _boundary_distance_mm(mask_image: sitk.Image, point_lps: np.ndarray) -> float | None:
    """Distance (mm) from the voxel nearest to a world point to the other side of the mask boundary."""
    geom = ImageGeometry.from_image(mask_image)
    mask = sitk.GetArrayFromImage(mask_image).astype(bool)
    idx = np.round(geom.world_to_index(point_lps)).astype(int)
    if np.any(idx < 1) or np.any(idx > np.asarray(mask.shape) - 2):
        return None  # too close to the volume border to see both sides of the surface
    sampling = geom.spacing_zyx
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    k = tuple(idx)
    return float(inside[k] if mask[k] else outside[k])


def test_landmarks_lie_on_gland_surface_in_both_modalities(cases):
    checked = 0
    for case in cases:
        for lms, mask in ((case.mr_landmarks, case.mr_mask), (case.us_landmarks, case.us_mask)):
            diagonal = float(np.linalg.norm(mask.GetSpacing()))
            for name in DEFAULT_LANDMARK_NAMES:
                if lms[name] is None:
                    continue
                d = _boundary_distance_mm(mask, lms[name])
                if d is None:
                    continue
                assert d <= diagonal, f"seed {case.seed} {name}: {d:.2f} mm from the gland surface"
                checked += 1
    assert checked >= 15


def test_landmarks_are_the_geometric_extremes_of_the_mr_mask(cases):
    """apex is the inferior end and bladder_neck the superior end of the gland (within 6 mm in z)."""
    for case in cases:
        if case.mr_oblique:
            continue
        geom = ImageGeometry.from_image(case.mr_mask)
        mask = sitk.GetArrayFromImage(case.mr_mask).astype(bool)
        z_world = geom.index_to_world(np.argwhere(mask).astype(float))[:, 2]
        assert abs(case.mr_landmarks["apex"][2] - z_world.min()) < 6.0
        assert abs(case.mr_landmarks["bladder_neck"][2] - z_world.max()) < 6.0
        # posterior_median: most posterior gland voxels are near it (y), it is at mid-height (z)
        assert case.mr_landmarks["posterior_median"][2] == pytest.approx(
            (case.mr_landmarks["apex"][2] + case.mr_landmarks["bladder_neck"][2]) / 2, abs=8.0)


def test_true_transform_maps_mr_landmarks_onto_us_landmarks(cases):
    for case in cases:
        bound = case.acquisition.compression_mm + 0.5
        assert 1.0 <= case.acquisition.compression_mm <= TINY.compression_mm[1]
        residuals = []
        for name in DEFAULT_LANDMARK_NAMES:
            x, y = case.mr_landmarks[name], case.us_landmarks[name]
            if x is None or y is None:
                continue
            residuals.append(np.linalg.norm(case.transform.apply(x) - y))
        assert residuals and max(residuals) <= bound
        # the transform really is a pose change, within the stated ranges
        assert case.transform.rotation_angle_deg() <= np.linalg.norm(TINY.max_rotation_deg) + 1e-6


def test_same_seed_same_arrays_different_seed_differs(cases):
    again = generate_case(0, "tiny", partial_view=False)
    for a, b in zip(_arrays(cases[0]), _arrays(again)):
        np.testing.assert_array_equal(a, b)
    assert again.mr_landmarks.equals(cases[0].mr_landmarks) and again.us_landmarks.equals(cases[0].us_landmarks)
    np.testing.assert_array_equal(again.transform.matrix(), cases[0].transform.matrix())
    other = _arrays(cases[2])
    assert not np.array_equal(_arrays(cases[0])[0], other[0])
    assert not np.array_equal(_arrays(cases[0])[1], other[1])


def test_oblique_grids_agree_with_the_true_transform(cases):
    case = cases[1]
    for image in (case.mr_image, case.us_image, case.mr_mask, case.us_mask):
        assert not np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-3)
    stats = []
    for mask in (case.mr_mask, case.us_mask):
        f = sitk.LabelShapeStatisticsImageFilter()
        f.Execute(mask)
        arr = sitk.GetArrayFromImage(mask)
        assert arr[0].sum() + arr[-1].sum() + arr[:, 0].sum() + arr[:, -1].sum() == 0, "gland cut by the volume"
        stats.append(np.array(f.GetCentroid(1)))
    mr_centroid, us_centroid = stats
    shift = np.linalg.norm(case.transform.apply(mr_centroid) - us_centroid)
    assert shift <= case.acquisition.compression_mm + 1.0
    # and the centroid is really moved by the pose (the check is not vacuous)
    assert np.linalg.norm(mr_centroid - us_centroid) > 5.0 or case.transform.rotation_angle_deg() > 5.0


def test_gland_sizes_in_clinical_range_and_narrower_at_apex():
    step = 0.5
    axis = np.arange(-32.0, 32.0 + step, step)
    apex_wider = 0
    for seed in range(20):
        anat = sample_anatomy(np.random.default_rng(1000 + seed))
        q = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # gland frame
        inside = anat.gland_inside(anat.from_gland_frame(q)).reshape(len(axis), len(axis), len(axis))
        assert not (inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
                    or inside[:, :, 0].any() or inside[:, :, -1].any())
        extents = []
        for ax in range(3):
            occupied = np.nonzero(inside.any(axis=tuple(a for a in range(3) if a != ax)))[0]
            extents.append((occupied[-1] - occupied[0] + 1) * step)
        for (lo, hi), e in zip(CLINICAL_DIAMETERS_MM.values(), extents):
            assert lo <= e <= hi, f"seed {seed}: diameters {extents}"
        rows = np.nonzero(inside.any(axis=(0, 1)))[0]
        low, high = rows[0] + (rows[-1] - rows[0]) // 4, rows[-1] - (rows[-1] - rows[0]) // 4
        width = lambda k: np.ptp(np.nonzero(inside[:, :, k].any(axis=1))[0])  # noqa: E731  LR width at height k
        apex_wider += width(low) > width(high)
    assert apex_wider <= 2, "the gland should be narrower towards the apex"


def _fan_membership(case, geom: ImageGeometry, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(surely inside, surely outside) the fan for every US voxel, recomputed from the probe."""
    p = case.probe
    d = geom.voxel_centres_world() - p.origin
    along = d @ p.axis
    across = d - along[..., None] * p.axis
    ant = -(across @ p.posterior)
    lat = across @ np.cross(p.posterior, p.axis)
    rho = np.sqrt(ant ** 2 + lat ** 2)
    angle = np.degrees(np.arctan2(lat, ant))
    lo, hi = p.a_range

    def inside(m: float) -> np.ndarray:
        return ((rho >= p.radius + m) & (rho <= p.depth - m) & (np.abs(angle) <= p.half_angle_deg - m)
                & (along >= lo + m) & (along <= hi - m))

    return inside(margin), ~inside(-margin)


def test_us_is_zero_exactly_outside_the_fan(cases):
    for case in cases:
        geom = ImageGeometry.from_image(case.us_image)
        us = sitk.GetArrayFromImage(case.us_image)
        surely_in, surely_out = _fan_membership(case, geom, 1e-6)
        assert surely_out.mean() > 0.1 and surely_in.mean() > 0.3
        assert np.all(us[surely_out] == 0)
        assert np.all(us[surely_in] > 0)


def test_partial_views_drop_only_landmarks_outside_the_volume():
    n_lost = 0
    for seed in (20, 21, 22):
        case = generate_case(seed, "tiny", partial_view=True)
        geom = ImageGeometry.from_image(case.us_image)
        for name in DEFAULT_LANDMARK_NAMES:
            truth = case.compression.forward(case.transform.apply(case.mr_landmarks[name]))
            if case.us_landmarks[name] is None:
                assert not geom.contains_world(truth)
                n_lost += 1
            else:
                np.testing.assert_allclose(case.us_landmarks[name], truth)
                n_lost += not bool(case.probe.in_fan(truth))
    assert n_lost >= 3  # every partial view loses at least one landmark from the volume or the fan


def test_calcifications_cast_acoustic_shadows():
    """Behind each calcification (away from the probe) the image is darker than beside it."""
    darker, total = 0, 0
    for seed in range(6):
        case = generate_case(seed, "tiny", partial_view=False)
        geom = ImageGeometry.from_image(case.us_image)
        us = sitk.GetArrayFromImage(case.us_image).astype(float)
        for centre, radius in zip(case.anatomy.calc_centres, case.anatomy.calc_radii):
            c_us = case.compression.forward(case.transform.apply(centre + case.acquisition.gland_centre_mr))
            a, rho, phi = case.probe.coordinates(c_us)
            if radius < 1.5 or not case.probe.in_fan(c_us) or rho + 12 > case.probe.depth:
                continue
            depths = rho + np.arange(radius + 2.0, radius + 10.0, 1.0)
            a_arr = np.full_like(depths, a)
            behind = case.probe.beam_points(a_arr, np.full_like(depths, phi), depths)
            beside = case.probe.beam_points(a_arr, np.full_like(depths, phi + np.radians(12)), depths)
            sample = lambda pts: ndimage.map_coordinates(us, geom.world_to_index(pts).T, order=1)  # noqa: E731
            total += 1
            darker += sample(behind).mean() < sample(beside).mean()
    assert total >= 2 and darker >= total - 1


def test_cli_writes_a_readable_dataset(capsys):
    argv = ["-d", "3", "-n", "2", "--num-test", "1", "--preset", "tiny", "--seed", "5", "--workers", "2", "--no-progress"]
    assert cli_main(argv) == 0
    folder = raw_root() / "Dataset003_Phantom"
    assert str(folder) in capsys.readouterr().out
    ds = Dataset(folder)
    assert ds.spec.num_training == 2 and ds.spec.num_test == 1
    assert ds.spec.extra == {"generator": "lmkreg.phantoms", "preset": "tiny", "seed": 5}
    assert ds.cases("Tr") == ["Phantom_000", "Phantom_001"] and ds.cases("Ts") == ["Phantom_002"]
    for split, case in (("Tr", "Phantom_000"), ("Tr", "Phantom_001"), ("Ts", "Phantom_002")):
        for modality, size, spacing in (("MR", TINY.mr_size_xyz, TINY.mr_spacing_xyz),
                                        ("US", TINY.us_size_xyz, TINY.us_spacing_xyz)):
            image = sitk.ReadImage(str(ds.image_path(case, modality, split)))
            mask = sitk.ReadImage(str(ds.mask_path(case, modality, split)))
            assert image.GetSize() == size and mask.GetSize() == size
            np.testing.assert_allclose(image.GetSpacing(), spacing)
            assert sitk.GetArrayFromImage(mask).sum() > 100
            lms = read_lmkreg_json(ds.landmarks_path(case, modality, split))
            assert lms.names == list(DEFAULT_LANDMARK_NAMES)
        t = read_rigid_transform(ds.transform_path(case, split))
        assert (t.source, t.target) == ("MR", "US")
    # files match the in-memory generation of the same case seed
    from lmkreg.phantoms.generator import case_seed

    again = generate_case(case_seed(5, 1), "tiny")
    on_disk = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.image_path("Phantom_001", "US"))))
    np.testing.assert_array_equal(on_disk, sitk.GetArrayFromImage(again.us_image))
    notes = json.loads((folder / "phantom_cases.json").read_text())
    assert [c["case"] for c in notes["cases"]] == ["Phantom_000", "Phantom_001", "Phantom_002"]


def test_cli_refuses_to_overwrite_or_reuse_a_dataset_id(capsys):
    argv = ["-d", "4", "-n", "1", "--preset", "tiny", "--workers", "1", "--no-progress"]
    assert cli_main(argv) == 0
    image = raw_root() / "Dataset004_Phantom" / "imagesTr" / "Phantom_000_MR.nii.gz"
    before = image.stat().st_mtime_ns
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "already exist" in capsys.readouterr().err
    assert image.stat().st_mtime_ns == before
    assert cli_main(argv + ["--name", "Other"]) == 2
    assert "already used by Dataset004_Phantom" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite", "--seed", "9"]) == 0
    assert image.stat().st_mtime_ns != before


def test_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    assert "--preset" in capsys.readouterr().out
    assert cli_main(["-d", "6", "-n", "0", "--preset", "tiny"]) == 2
    assert "at least one case" in capsys.readouterr().err
