"""lmkreg_register: one pair, folders, confidence weights and MR resampled into US space."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lmkreg.geometry import ImageGeometry, rotation_direction
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.run.register import main as register_main
from lmkreg.registration.transform_files import read_itk_transform
from lmkreg.io.transform_json import read_rigid_transform

NAMES = ["apex", "bladder_neck", "posterior_median"]


def _known_transform() -> RigidTransform:
    r = Rotation.from_euler("xyz", [22.0, -7.0, 9.0], degrees=True).as_matrix()
    return RigidTransform(r, np.array([4.5, -12.0, 7.25]))


def _pair(tmp_path, name="case1", mr_points=None):
    t = _known_transform()
    mr = np.array([[1.0, 20.0, -30.0], [-2.0, -5.0, 18.0], [0.5, 22.0, 3.0]]) if mr_points is None else mr_points
    mr_file, us_file = tmp_path / f"{name}_MR.json", tmp_path / f"{name}_US.json"
    write_lmkreg_json(LandmarkSet.from_array(NAMES, mr), mr_file)
    write_lmkreg_json(LandmarkSet.from_array(NAMES, t.apply(mr)), us_file)
    return t, mr, mr_file, us_file


def test_one_pair_recovers_the_transform_and_itk_file_maps_us_to_mr(tmp_path):
    t, mr, mr_file, us_file = _pair(tmp_path)
    out = tmp_path / "out"
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(out)]) == 0
    got = read_rigid_transform(out / "case1_MR_to_US.json")
    np.testing.assert_allclose(got.matrix(), t.matrix(), atol=1e-9)
    # SimpleITK reads the .tfm in its resampling direction: a US point goes to its MR point
    itk = sitk.ReadTransform(str(out / "case1_MR_to_US.tfm"))
    for p in mr:
        np.testing.assert_allclose(itk.TransformPoint(tuple(t.apply(p[None])[0])), p, atol=1e-6)
    np.testing.assert_allclose(read_itk_transform(out / "case1_MR_to_US.tfm").matrix(), t.matrix(), atol=1e-9)


def test_mr_image_and_mask_resampled_into_us_space(tmp_path):
    t, mr, mr_file, us_file = _pair(tmp_path)
    target_mr = np.array([0.0, 8.0, -10.0])  # a blob in the MR volume ...

    def centred(shape_zyx, spacing_xyz, direction, centre):  # grids with the blob well inside
        extent = (np.array(shape_zyx[::-1]) - 1) * np.array(spacing_xyz)
        return ImageGeometry.create(shape_zyx, spacing_xyz, centre - direction @ (extent / 2), direction)

    mr_geom = centred((40, 44, 48), (1.1, 0.9, 1.6), rotation_direction((5, 10, -8)), target_mr + [3.0, -2.0, 4.0])
    us_geom = centred((46, 50, 52), (0.8, 0.8, 0.8), rotation_direction((-15, 3, 20)),
                      t.apply(target_mr[None])[0] + [-2.0, 1.0, 2.5])
    d = np.linalg.norm(mr_geom.voxel_centres_world() - target_mr, axis=-1)
    blob = np.exp(-0.5 * (d / 3.0) ** 2).astype(np.float32)
    us_img = us_geom.make_image(np.random.default_rng(0).random(us_geom.shape_zyx).astype(np.float32))
    files = {"mr": tmp_path / "mr.nii.gz", "mask": tmp_path / "mask.nii.gz", "us": tmp_path / "us.nii.gz"}
    sitk.WriteImage(mr_geom.make_image(blob), str(files["mr"]))
    sitk.WriteImage(mr_geom.make_image((d < 6).astype(np.uint8)), str(files["mask"]))
    sitk.WriteImage(us_img, str(files["us"]))
    out = tmp_path / "out"
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(out), "--mr-image", str(files["mr"]),
                          "--mr-mask", str(files["mask"]), "--us-image", str(files["us"])]) == 0
    moved = sitk.ReadImage(str(out / "case1_MR_in_US.nii.gz"))
    assert ImageGeometry.from_image(moved).same_as(us_geom)
    arr = sitk.GetArrayFromImage(moved).astype(float)
    centroid = (arr[..., None] * us_geom.voxel_centres_world()).sum((0, 1, 2)) / arr.sum()
    # ... lands where the transform sends it (centroid of a sampled Gaussian: sub-voxel)
    np.testing.assert_allclose(centroid, t.apply(target_mr[None])[0], atol=0.3)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case1_MRmask_in_US.nii.gz")))
    assert set(np.unique(mask)) == {0, 1}
    # nearest-neighbour sampling moves the sphere's edge by at most half an MR voxel diagonal
    r = np.linalg.norm(us_geom.voxel_centres_world() - t.apply(target_mr[None])[0], axis=-1)
    half_diagonal = 0.5 * np.linalg.norm([1.1, 0.9, 1.6])
    assert np.all(mask[r < 6 - half_diagonal] == 1) and np.all(mask[r > 6 + half_diagonal] == 0)


def test_folders_match_by_case_and_report_a_degenerate_pair(tmp_path, capsys):
    mr_dir, us_dir = tmp_path / "mr", tmp_path / "us"
    mr_dir.mkdir(), us_dir.mkdir()
    for name in ("a", "b"):
        _pair(mr_dir, name)
    for f in mr_dir.glob("*_US.json"):
        f.rename(us_dir / f.name)
    collinear = np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]])
    _pair(mr_dir, "c", collinear)
    (mr_dir / "c_US.json").rename(us_dir / "c_US.json")
    out = tmp_path / "out"
    assert register_main(["--mr-dir", str(mr_dir), "--us-dir", str(us_dir), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "c_MR.json" in err and "collinear" in err
    for name in ("a", "b"):
        got = read_rigid_transform(out / f"{name}_MR_to_US.json")
        np.testing.assert_allclose(got.matrix(), _known_transform().matrix(), atol=1e-9)
    assert not (out / "c_MR_to_US.json").exists()


def test_too_few_landmarks_is_a_clear_error(tmp_path, capsys):
    t, mr, mr_file, us_file = _pair(tmp_path)
    pts = mr.copy()
    write_lmkreg_json(LandmarkSet({"apex": pts[0], "bladder_neck": pts[1], "posterior_median": None}), mr_file)
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "case1_MR.json" in err and "3" in err


def test_confidence_weights_down_weight_an_uncertain_landmark(tmp_path):
    """With one landmark displaced and flagged as wide, the weighted fit follows the other two."""
    t, mr, mr_file, us_file = _pair(tmp_path)
    names4 = NAMES + ["extra"]
    mr4 = np.vstack([mr, [[-12.0, 3.0, 25.0]]])
    us4 = t.apply(mr4)
    us4[0] += [6.0, 0.0, 0.0]  # apex badly predicted in US
    conf = {n: {"heatmap_spread_mm": (8.0 if n == "apex" else 1.0), "fold_disagreement_mm": None} for n in names4}
    write_lmkreg_json(LandmarkSet(dict(zip(names4, mr4)), {"confidence": conf}), mr_file)
    write_lmkreg_json(LandmarkSet(dict(zip(names4, us4)), {"confidence": conf}), us_file)
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    four = ["--landmark-names", *names4]  # only named landmarks are fitted (issue 15)
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(plain), *four]) == 0
    assert register_main(["--mr", str(mr_file), "--us", str(us_file), "-o", str(weighted), "--weighted", *four]) == 0
    err = {k: np.abs(read_rigid_transform(f / "case1_MR_to_US.json").apply(mr4[1:]) - us4[1:]).max()
           for k, f in (("plain", plain), ("weighted", weighted))}
    assert err["weighted"] < 0.2 * err["plain"], err
