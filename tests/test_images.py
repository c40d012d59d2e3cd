"""Image I/O: geometry survives every format; bad files fail with the file named."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lmkreg.errors import InputError, OutputError
from lmkreg.geometry import ImageGeometry
from lmkreg.io.atomic import atomic_write_text
from lmkreg.io.images import read_image, write_image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_and_values_survive_each_format(tmp_path, oblique_geometry, rng, suffix):
    arr = rng.normal(size=oblique_geometry.shape_zyx).astype(np.float32)
    path = write_image(oblique_geometry.make_image(arr), tmp_path / f"img{suffix}")
    back = read_image(path)
    g = ImageGeometry.from_image(back)
    # NIfTI stores the direction in single precision quaternions: allow 1e-4 mm at the corners
    assert g.same_as(oblique_geometry, tolerance_mm=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, oblique_geometry):
    target = tmp_path / "a.nii.gz"
    write_image(oblique_geometry.make_image(np.ones(oblique_geometry.shape_zyx, np.float32)), target)
    write_image(oblique_geometry.make_image(np.zeros(oblique_geometry.shape_zyx, np.float32)), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 0


def test_failed_write_keeps_the_existing_file(tmp_path, monkeypatch, oblique_geometry):
    target = tmp_path / "keep.nii.gz"
    write_image(oblique_geometry.make_image(np.full(oblique_geometry.shape_zyx, 7, np.float32)), target)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    with pytest.raises(OutputError, match="keep.nii.gz.*No space left"):
        write_image(oblique_geometry.make_image(np.zeros(oblique_geometry.shape_zyx, np.float32)), target)
    monkeypatch.undo()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]


def _write_raw(path, arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: img.GetDimension()] if img.GetDimension() <= 3 else spacing + (1.0,))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("case,match", [
    ("missing", "file not found"),
    ("empty", "file is empty"),
    ("text", "not a readable image"),
    ("truncated", "not a readable image"),
    ("2d", "expected a 3D volume"),
    ("4d", "expected a 3D volume"),
    ("nan", "NaN or infinite"),
    ("constant", "constant"),
])
def test_bad_images_name_the_file(tmp_path, rng, case, match):
    path = tmp_path / f"{case}.nii.gz"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path = tmp_path / "text.nrrd"
        atomic_write_text(path, "this is not an image\n")
    elif case == "truncated":
        _write_raw(path, rng.normal(size=(20, 20, 20)).astype(np.float32))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "2d":
        _write_raw(path, rng.normal(size=(20, 20)).astype(np.float32))
    elif case == "4d":
        img = sitk.JoinSeries([sitk.GetImageFromArray(rng.normal(size=(4, 5, 6)).astype(np.float32))] * 3)
        sitk.WriteImage(img, str(path))
    elif case == "nan":
        arr = rng.normal(size=(6, 6, 6)).astype(np.float32)
        arr[2, 3, 4] = np.nan
        _write_raw(path, arr)
    elif case == "constant":
        _write_raw(path, np.full((6, 6, 6), 3.0, np.float32))
    with pytest.raises(InputError, match=match) as info:
        read_image(path)
    assert path.name in str(info.value)


def test_constant_mask_is_allowed(tmp_path):
    path = _write_raw(tmp_path / "m.nii.gz", np.zeros((5, 5, 5), np.uint8))
    assert read_image(path, is_mask=True).GetSize() == (5, 5, 5)


def test_non_orthonormal_direction_is_rejected(tmp_path):
    # NRRD stores the space directions verbatim, so a sheared grid reaches the reader
    path = tmp_path / "shear.nrrd"
    path.write_text("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\n"
                    "space directions: (1,0,0) (0.5,1,0) (0,0,1)\nkinds: domain domain domain\n"
                    "endian: little\nencoding: ascii\nspace origin: (0,0,0)\n\n" + " ".join(["1", "2"] * 4) + "\n")
    with pytest.raises(InputError, match="shear.nrrd") as info:
        read_image(path)
    assert "orthonormal" in str(info.value) or "readable" in str(info.value)
