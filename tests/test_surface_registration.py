"""lmkreg_register --refine surface: trimmed point-to-plane ICP between the prostate surfaces.

The gland masks are the phantom anatomy (lmkreg.phantoms: an egg-shaped, non-symmetric gland)
sampled on oblique, anisotropic MR and US grids related by a known rigid map; accuracy is
measured with the evaluation metric (surface_registration_error), independently of the ICP.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from skimage.measure import marching_cubes

from lmkreg.errors import InputError
from lmkreg.evaluation.metrics import residual_rotation_deg, surface_registration_error
from lmkreg.geometry.mesh import surface_points
from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.phantoms.anatomy import sample_anatomy
from lmkreg.run.register import main as register_main
from lmkreg.geometry.rigid import fit_rigid
from lmkreg.registration.surface import refine_on_masks, refine_on_surfaces
from lmkreg.registration.icp import MAX_ROTATION_DEG, SurfaceSettings, distance_to_mesh, gland_surface
from lmkreg.registration.transform_files import read_itk_transform, read_transform_record

NAMES = ["apex", "bladder_neck", "posterior_median"]
MR_CENTRE = np.array([6.0, -14.0, 22.0])  # MR world = phantom patient frame + this
TRUTH = RigidTransform(Rotation.from_euler("xyz", [9.0, -6.0, 14.0], degrees=True).as_matrix(),
                       np.array([3.5, -8.0, 5.0]))


def _grid(centre, extent_mm, spacing_xyz, angles) -> ImageGeometry:
    """An oblique grid of about `extent_mm` per side centred on `centre` (world LPS mm)."""
    size = [int(np.ceil(extent_mm / s)) for s in spacing_xyz]
    d = rotation_direction(angles)
    origin = centre - d @ ((np.array(size) - 1) * np.array(spacing_xyz) / 2)
    return ImageGeometry.create(size[::-1], spacing_xyz, origin, d)


def _inside(anat, geom: ImageGeometry, world_to_mr: RigidTransform = None) -> np.ndarray:
    w = geom.voxel_centres_world().reshape(-1, 3)
    mr = w if world_to_mr is None else world_to_mr.apply(w)
    return anat.gland_inside(mr - MR_CENTRE).reshape(geom.shape_zyx)


@pytest.fixture(scope="module")
def phantom():
    """MR and US gland masks of one phantom, US = TRUTH(MR), and the MR landmarks."""
    anat = sample_anatomy(np.random.default_rng(5))
    mr_geom = _grid(MR_CENTRE, 64.0, (0.9, 0.8, 1.25), (8, -12, 20))
    us_geom = _grid(TRUTH.apply(MR_CENTRE[None])[0], 64.0, (0.75, 0.75, 0.75), (-15, 5, -25))
    mr_arr = _inside(anat, mr_geom)
    us_arr = _inside(anat, us_geom, TRUTH.inverse())
    landmarks = np.array([anat.landmarks()[n] for n in NAMES]) + MR_CENTRE
    return {"anat": anat, "mr_geom": mr_geom, "us_geom": us_geom, "mr_arr": mr_arr, "us_arr": us_arr,
            "mr_mask": mr_geom.make_image(mr_arr.astype(np.uint8)),
            "us_mask": us_geom.make_image(us_arr.astype(np.uint8)), "landmarks_mr": landmarks}


def _perturbed_start(centre_mr: np.ndarray, degrees: float = 10.0, shift_mm: float = 5.0) -> RigidTransform:
    """TRUTH after a rotation of `degrees` about an oblique axis through the gland centre and a
    shift of `shift_mm`: a landmark transform that is 10 deg / 5 mm off."""
    axis = np.array([1.0, 1.0, 0.5]) / np.linalg.norm([1.0, 1.0, 0.5])
    r = Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()
    d = np.array([3.0, -4.0, 0.0]) / 5.0 * shift_mm
    pert = RigidTransform(r, centre_mr - r @ centre_mr + d)
    return TRUTH.compose(pert)


def test_mesh_vertices_are_where_simpleitk_puts_the_voxel_edges(phantom):
    """Every mesh vertex is a marching-cubes vertex (continuous index) mapped to the world by
    SimpleITK's TransformContinuousIndexToPhysicalPoint (oblique, anisotropic grid)."""
    mask = phantom["mr_mask"]
    surface = gland_surface(mask)
    verts, _, _, _ = marching_cubes(np.pad(phantom["mr_arr"].astype(np.float32), 1), level=0.5)
    idx_xyz = (verts - 1.0)[:, ::-1]
    by_sitk = np.array([mask.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in i)) for i in idx_xyz])
    d, _ = cKDTree(by_sitk).query(surface.mesh.vertices)
    assert d.max() < 1e-6
    # vertices lie halfway between an inside and an outside voxel centre along one grid axis
    ci = np.array([mask.TransformPhysicalPointToContinuousIndex(tuple(v)) for v in surface.mesh.vertices[:500]])
    frac = np.abs(ci - np.round(ci))
    assert np.all(np.sort(frac, axis=1)[:, :2] < 1e-6) and np.allclose(frac.max(axis=1), 0.5, atol=1e-6)
    assert surface.mesh.is_watertight
    # volume: voxel count and enclosed mesh volume agree with the phantom's (anisotropic voxels)
    voxel_ml = phantom["mr_arr"].sum() * 0.9 * 0.8 * 1.25 / 1000
    assert surface.volume_ml == pytest.approx(voxel_ml)
    assert abs(surface.mesh.volume) / 1000 == pytest.approx(voxel_ml, rel=0.03)


def test_distance_to_mesh_matches_an_analytic_sphere():
    geom = _grid(np.zeros(3), 40.0, (0.6, 0.7, 0.8), (10, 20, -5))
    r = np.linalg.norm(geom.voxel_centres_world(), axis=-1)
    mesh = gland_surface(geom.make_image((r <= 12.0).astype(np.uint8))).mesh
    rng = np.random.default_rng(1)
    u = rng.normal(size=(300, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pts = u * rng.uniform(15.0, 18.0, (300, 1))
    # distance to the sphere of radius 12 (the mesh is within ~half a voxel of it)
    assert np.abs(distance_to_mesh(pts, mesh) - (np.linalg.norm(pts, axis=1) - 12.0)).max() < 0.5
    # on the mesh itself: zero
    assert distance_to_mesh(mesh.vertices[:200], mesh).max() < 1e-9


def test_recovers_a_known_map_from_a_start_10_deg_5_mm_off(phantom):
    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(phantom["us_mask"])
    start = _perturbed_start(mr.centre)
    pts = surface_points(mr.mesh, 4000, seed=11)
    assert surface_registration_error(pts, TRUTH, start) > 4.0  # the start is really off
    result = refine_on_surfaces(start, mr, us)
    assert result.accepted, result.reason
    assert result.distance_surface_mm < result.distance_landmarks_mm
    assert surface_registration_error(pts, TRUTH, result.transform) < 0.5
    assert residual_rotation_deg(TRUTH, result.transform) < 1.0
    assert result.rotation_change_deg == pytest.approx(residual_rotation_deg(start, result.transform), abs=1e-6)


def _cut_us_mask(phantom, keep_quantile: float) -> sitk.Image:
    """The US gland cut by a plane (the far edge of the fan): voxels beyond the plane removed."""
    geom, arr = phantom["us_geom"], phantom["us_arr"]
    w = geom.voxel_centres_world()
    n = np.array([0.3, -0.9, 0.3]) / np.linalg.norm([0.3, -0.9, 0.3])
    h = w @ n
    limit = np.quantile(h[arr], keep_quantile)
    return geom.make_image((arr & (h <= limit)).astype(np.uint8))


def test_trimming_keeps_a_partial_us_view_from_pulling(phantom):
    mr = gland_surface(phantom["mr_mask"])
    us_cut = gland_surface(_cut_us_mask(phantom, 0.9))
    start = _perturbed_start(mr.centre)
    pts = surface_points(mr.mesh, 4000, seed=11)
    assert us_cut.volume_ml < 0.92 * gland_surface(phantom["us_mask"]).volume_ml  # a tenth of the gland is cut
    trimmed = refine_on_surfaces(start, mr, us_cut)  # default trim fraction
    untrimmed = refine_on_surfaces(start, mr, us_cut, SurfaceSettings(trim_fraction=1.0))
    sre_trimmed = surface_registration_error(pts, TRUTH, trimmed.transform)
    sre_untrimmed = surface_registration_error(pts, TRUTH, untrimmed.surface_transform)
    assert trimmed.accepted and sre_trimmed < 0.5
    assert sre_untrimmed > 1.5  # without trimming the cut face pulls the gland off: the test can fail


def test_a_gland_cut_by_the_image_border_is_not_pulled_by_the_border(phantom):
    """A partial view by the field of view (as the phantoms' partial views): the faces that close
    the mask at the image border are not gland and are left out, even without trimming."""
    us_full = phantom["us_mask"]
    k = int(np.quantile(np.argwhere(phantom["us_arr"])[:, 0], 0.88))  # array z of the cut
    us_cropped = us_full[:, :, :k]  # SimpleITK slicing keeps the geometry of the kept voxels
    mr = gland_surface(phantom["mr_mask"])
    us = gland_surface(us_cropped)
    assert 0.05 < us.border_fraction < 0.3 and gland_surface(us_full).border_fraction == 0.0
    start = _perturbed_start(mr.centre)
    pts = surface_points(mr.mesh, 4000, seed=11)
    untrimmed = SurfaceSettings(trim_fraction=1.0)
    aware = refine_on_surfaces(start, mr, us, untrimmed)
    naive = refine_on_surfaces(start, mr, dataclasses.replace(us, border_faces=None), untrimmed)
    assert surface_registration_error(pts, TRUTH, aware.transform) < 0.5
    assert surface_registration_error(pts, TRUTH, naive.surface_transform) > 1.5  # the border face would pull
    assert aware.to_json()["surface_cut_by_image_border"]["US"] == pytest.approx(us.border_fraction)


def test_a_start_outside_a_partial_us_view_keeps_the_landmark_transform_and_says_why(phantom):
    mr = gland_surface(phantom["mr_mask"])
    us = gland_surface(phantom["us_mask"][:, :, :40])  # a partial view
    far = RigidTransform(TRUTH.rotation, TRUTH.translation + [0.0, 0.0, 150.0])  # gland mapped far off the image
    result = refine_on_surfaces(far, mr, us)
    assert not result.accepted and "outside the US image" in result.reason
    np.testing.assert_array_equal(result.transform.matrix(), far.matrix())
    json.dumps(result.to_json(), allow_nan=False)  # no NaN/inf in the record


def test_a_result_that_fits_the_surfaces_worse_is_refused(phantom, monkeypatch):
    """The acceptance rule alone: an ICP (replaced here) that ends 3 deg off the true map, started
    from the true map, must not replace it."""
    import lmkreg.registration.surface as surface
    from lmkreg.registration.icp import IcpResult

    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(phantom["us_mask"])
    worse = _perturbed_start(mr.centre, degrees=3.0, shift_mm=0.0)
    monkeypatch.setattr(surface, "trimmed_icp", lambda *a, **k: IcpResult(worse, 1, True))
    result = refine_on_surfaces(TRUTH, mr, us)
    assert not result.accepted and not result.beyond_bound and not result.flags
    assert "does not lower the trimmed surface distance" in result.reason
    assert result.distance_surface_mm > result.distance_landmarks_mm
    np.testing.assert_array_equal(result.transform.matrix(), TRUTH.matrix())


def test_a_refinement_beyond_the_bound_is_refused_and_the_landmark_transform_kept(phantom):
    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(phantom["us_mask"])
    start = _perturbed_start(mr.centre)
    result = refine_on_surfaces(start, mr, us, SurfaceSettings(max_rotation_deg=5.0))
    assert not result.accepted and result.beyond_bound
    np.testing.assert_array_equal(result.transform.matrix(), start.matrix())
    moved = residual_rotation_deg(start, result.surface_transform)  # independently of the module
    assert moved > 5.0
    assert f"rotate {moved:.1f} deg" in result.reason and "bound 5 deg" in result.reason
    assert result.flags and "disagree" in result.flags[0].text and result.flags[0].scope == "pair"
    # the default bound lets a 10 deg correction through, a tighter shift bound does not
    assert MAX_ROTATION_DEG > 10.0
    shifted = refine_on_surfaces(start, mr, us, SurfaceSettings(max_shift_mm=1.0))
    assert not shifted.accepted and "gland centre" in shifted.reason and shifted.shift_mm > 1.0


def test_landmarks_as_extra_pairs_pull_towards_them(phantom):
    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(phantom["us_mask"])
    start = _perturbed_start(mr.centre)
    lm_mr = phantom["landmarks_mr"]
    wrong_us = start.apply(lm_mr)  # landmarks agreeing with the wrong start
    free = refine_on_surfaces(start, mr, us, SurfaceSettings(landmark_weight=0.0), landmarks=(lm_mr, wrong_us))
    tied = refine_on_surfaces(start, mr, us, SurfaceSettings(landmark_weight=100.0), landmarks=(lm_mr, wrong_us))
    default = refine_on_surfaces(start, mr, us, landmarks=(lm_mr, wrong_us))  # weight 0.2 (issue 27)

    def rms(result) -> float:  # landmark misfit of the ICP result, computed here
        return float(np.sqrt(np.mean(np.sum((result.surface_transform.apply(lm_mr) - wrong_us) ** 2, axis=1))))

    assert rms(free) > 3.0  # the surfaces alone leave the wrong landmarks ...
    assert rms(tied) < 0.3 * rms(free)  # ... heavily weighted landmarks hold the transform near them
    assert SurfaceSettings().landmark_weight == 0.2
    assert rms(tied) < rms(default) < rms(free)  # ... and the default weight pulls part of the way


def test_empty_mask_is_refused_naming_the_file(tmp_path, phantom):
    f = tmp_path / "empty_US.nii.gz"
    sitk.WriteImage(phantom["us_geom"].make_image(np.zeros(phantom["us_geom"].shape_zyx, np.uint8)), str(f))
    with pytest.raises(InputError, match="empty_US.nii.gz: mask is empty"):
        refine_on_masks(TRUTH, phantom["mr_mask"], f)


def _write_case(folder, phantom, name="case1"):
    """Landmark files (US landmarks off by ~2 mm, so the landmark fit is off) and mask files."""
    lm_mr = phantom["landmarks_mr"]
    noise = np.array([[1.8, -1.2, 0.9], [-1.5, 1.6, -1.0], [1.2, 1.4, 1.7]])
    lm_us = TRUTH.apply(lm_mr) + noise
    folder.mkdir(parents=True, exist_ok=True)
    files = {"mr": folder / f"{name}_MR.json", "us": folder / f"{name}_US.json",
             "mr_mask": folder / f"{name}_MR.nii.gz", "us_mask": folder / f"{name}_US.nii.gz"}
    write_lmkreg_json(LandmarkSet.from_array(NAMES, lm_mr), files["mr"])
    write_lmkreg_json(LandmarkSet.from_array(NAMES, lm_us), files["us"])
    sitk.WriteImage(phantom["mr_mask"], str(files["mr_mask"]))
    sitk.WriteImage(phantom["us_mask"], str(files["us_mask"]))
    return files, lm_mr, lm_us


def test_cli_refines_and_writes_both_transforms(tmp_path, phantom, capsys):
    files, lm_mr, lm_us = _write_case(tmp_path / "in", phantom)
    out = tmp_path / "out"
    # exact masks: surfaces alone (--landmark-weight 0) recover the map; the default 0.2 is for predicted masks
    args = ["--mr", str(files["mr"]), "--us", str(files["us"]), "-o", str(out), "--refine", "surface",
            "--mr-mask", str(files["mr_mask"]), "--us-mask", str(files["us_mask"]), "--landmark-weight", "0"]
    assert register_main(args) == 0
    assert "surface refinement accepted" in capsys.readouterr().out
    doc = json.loads((out / "case1_MR_to_US.json").read_text())
    record = read_transform_record(out / "case1_MR_to_US.json")
    np.testing.assert_allclose(record["landmarks"].matrix(), fit_rigid(lm_mr, lm_us).matrix(), atol=1e-9)
    np.testing.assert_allclose(record["used"].matrix(), record["surface"].matrix())
    np.testing.assert_allclose(read_itk_transform(out / "case1_MR_to_US.tfm").matrix(), record["used"].matrix(),
                               atol=1e-9)
    ref = doc["surface_refinement"]
    assert doc["transform_source"] == "surface" and ref["accepted"]
    assert ref["surface_distance_mm"]["surface"] < ref["surface_distance_mm"]["landmarks"]
    assert doc["trust"]["surface"]["accepted"] and doc["trust"]["reliable"]
    pts = surface_points(gland_surface(phantom["mr_mask"]).mesh, 3000, seed=3)
    assert surface_registration_error(pts, TRUTH, record["used"]) < 0.5 < \
        surface_registration_error(pts, TRUTH, record["landmarks"])

    # a bound the refinement exceeds: landmark transform kept, pair flagged, --strict fails
    assert register_main(args + ["--max-rotation-deg", "0.01", "--strict"]) == 3
    doc = json.loads((out / "case1_MR_to_US.json").read_text())
    assert doc["transform_source"] == "landmarks" and not doc["surface_refinement"]["accepted"]
    assert "bound 0.01 deg" in doc["surface_refinement"]["reason"]
    np.testing.assert_allclose(doc["matrix"], doc["landmark_transform"]["matrix"])
    assert doc["surface_transform"] is not None and not doc["trust"]["reliable"]
    assert "landmark transform kept" in capsys.readouterr().out


def test_cli_folders_match_masks_by_case(tmp_path, phantom):
    files, _, _ = _write_case(tmp_path / "in", phantom)
    dirs = {k: tmp_path / k for k in ("mr_lm", "us_lm", "mr_masks", "us_masks")}
    for key, d in zip(("mr", "us", "mr_mask", "us_mask"), dirs.values()):
        d.mkdir()
        files[key].rename(d / files[key].name)
    out = tmp_path / "out"
    assert register_main(["--mr-dir", str(dirs["mr_lm"]), "--us-dir", str(dirs["us_lm"]), "-o", str(out),
                          "--refine", "surface", "--mr-mask", str(dirs["mr_masks"]),
                          "--us-mask", str(dirs["us_masks"])]) == 0
    doc = json.loads((out / "case1_MR_to_US.json").read_text())
    assert doc["surface_refinement"]["us_mask"].endswith("case1_US.nii.gz")


def test_cli_refuses_incomplete_surface_options(tmp_path, phantom, capsys):
    files, _, _ = _write_case(tmp_path / "in", phantom)
    base = ["--mr", str(files["mr"]), "--us", str(files["us"]), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        register_main(base + ["--refine", "surface", "--mr-mask", str(files["mr_mask"])])
    assert exc.value.code == 2 and "--us-mask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        register_main(base + ["--us-mask", str(files["us_mask"])])  # without --refine surface
    with pytest.raises(SystemExit):
        register_main(base + ["--refine", "surface", "--mr-mask", str(files["mr_mask"]), "--us-mask",
                              str(files["us_mask"]), "--trim-fraction", "0"])
    assert not (tmp_path / "out").exists()


# ---- rescue of a pair with one wrong landmark (lmkreg.registration.rescue) ----------------------------

def _wrong_apex(phantom, cut: bool):
    """The demo's pair 042: the US apex is wrong, put next to the bladder neck (as a network puts a
    landmark it cannot see), optionally with the US gland cut by the image border."""
    from lmkreg.geometry.rigid import fit_rigid

    p = phantom["landmarks_mr"]
    q = TRUTH.apply(p)
    q[0] = q[1] + 0.1 * (q[0] - q[1])
    us_mask = phantom["us_mask"]
    if cut:
        k = int(np.quantile(np.argwhere(phantom["us_arr"])[:, 0], 0.85))
        us_mask = us_mask[:, :, :k]
    return p, q, fit_rigid(p, q), us_mask


@pytest.mark.parametrize("cut", [False, True])
def test_rescue_leaves_out_the_wrong_landmark_and_recovers_the_map(phantom, cut):
    from lmkreg.registration.rescue import rescue_on_surfaces

    p, q, landmark_fit, us_mask = _wrong_apex(phantom, cut)
    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(us_mask)
    pts = surface_points(mr.mesh, 4000, seed=11)
    assert surface_registration_error(pts, TRUTH, landmark_fit) > 5.0  # the landmark fit is far off
    refined = refine_on_surfaces(landmark_fit, mr, us)
    assert not refined.accepted and refined.beyond_bound  # the surface refinement may not go that far
    rescue = rescue_on_surfaces(mr, us, (p, q), NAMES)
    assert rescue.accepted, rescue.reason
    assert rescue.left_out == "apex" and rescue.left_out_residual_mm > 10.0
    assert surface_registration_error(pts, TRUTH, rescue.transform) < 1.0
    assert residual_rotation_deg(TRUTH, rescue.transform) < 2.0
    assert "apex" in rescue.flag.text and json.dumps(rescue.to_json(), allow_nan=False)
    # the figures quoted in inference.md (pytest -s shows them)
    print(f"\nrescue, US gland {'cut by the border' if cut else 'whole'}: landmark fit SRE "
          f"{surface_registration_error(pts, TRUTH, landmark_fit):.2f} mm / "
          f"{residual_rotation_deg(TRUTH, landmark_fit):.1f} deg; rescued SRE "
          f"{surface_registration_error(pts, TRUTH, rescue.transform):.2f} mm / "
          f"{residual_rotation_deg(TRUTH, rescue.transform):.2f} deg; {rescue.flag}")


def test_rescue_is_refused_when_no_landmark_is_wrong(phantom):
    from lmkreg.registration.rescue import rescue_on_surfaces

    p = phantom["landmarks_mr"]
    rescue = rescue_on_surfaces(gland_surface(phantom["mr_mask"]), gland_surface(phantom["us_mask"]),
                                (p, TRUTH.apply(p)), NAMES)
    assert not rescue.accepted and "no single landmark is wrong" in rescue.reason and rescue.transform is None


def test_rescue_on_a_symmetric_gland_is_refused_as_ambiguous():
    """A ball has no spin to read from its surface: two landmarks on it leave the pose open."""
    from lmkreg.registration.rescue import rescue_on_surfaces

    geom = _grid(np.zeros(3), 48.0, (0.8, 0.8, 0.8), (0, 0, 0))
    ball = geom.make_image((np.linalg.norm(geom.voxel_centres_world(), axis=-1) <= 15.0).astype(np.uint8))
    p = np.array([[0.0, 0.0, -15.0], [0.0, 0.0, 15.0], [0.0, 12.0, 0.0]])
    q = p.copy()
    q[2] = [9.0, 8.0, 0.0]  # the third landmark 12 mm off, on the ball
    rescue = rescue_on_surfaces(gland_surface(ball), gland_surface(ball), (p, q), NAMES)
    assert not rescue.accepted and "ambiguous" in rescue.reason


def test_a_refused_refinement_with_a_wrong_landmark_is_rescued_and_flagged(phantom):
    """refine_on_surfaces tries the rescue when the bound refuses: the transform in use is the
    rescued one, the JSON says so and the pair carries a flag naming the left-out landmark."""
    p, q, landmark_fit, us_mask = _wrong_apex(phantom, cut=False)
    mr, us = gland_surface(phantom["mr_mask"]), gland_surface(us_mask)
    result = refine_on_surfaces(landmark_fit, mr, us, landmarks=(p, q), landmark_names=NAMES)
    assert not result.accepted and result.beyond_bound and result.rescued
    pts = surface_points(mr.mesh, 4000, seed=11)
    assert surface_registration_error(pts, TRUTH, result.transform) < 1.0
    doc = result.to_json()
    assert doc["transform_used"] == "surface_rescue" and doc["rescue"]["left_out"] == "apex"
    assert any("'apex' is inconsistent" in f.text for f in result.flags)
    assert result.landmark_residuals_mm["apex"] > 10.0 > result.landmark_residuals_mm["bladder_neck"]
    # without the landmarks there is nothing to leave out: the landmark transform is kept
    plain = refine_on_surfaces(landmark_fit, mr, us)
    assert plain.rescue is None and plain.transform is landmark_fit
