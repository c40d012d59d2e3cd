"""Image I/O: geometry survives every format; bad files fail with the file named."""
from __future__ import annotations

import contextlib

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


def _oblique_nibabel_affine(rng) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [17, -9, 31], degrees=True).as_matrix() @ np.diag([0.7, 1.1, 2.5])
    affine[:3, 3] = [-12.5, 30.25, 4.0]
    return affine


@contextlib.contextmanager
def _itk_payload_reads_refused():
    """Within: any ITK read of a whole image fails the test (ReadImageInformation still works)."""
    def refuse(*args, **kwargs):
        raise AssertionError("ITK decoded the payload a second time")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sitk, "ReadImage", refuse)
        mp.setattr(sitk.ImageFileReader, "Execute", refuse)
        yield


def _set_raw_scaling(path, slope, inter):
    """Write scl_slope and scl_inter into a NIfTI-1 header byte for byte (nibabel's save would
    recompute them, and refuses to load some of these values)."""
    import gzip
    import struct

    data = path.read_bytes()
    raw = bytearray(gzip.decompress(data) if path.name.endswith(".gz") else data)
    assert struct.unpack("<i", raw[:4])[0] == 348  # little-endian NIfTI-1
    raw[112:120] = struct.pack("<ff", slope, inter)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("writer", ["sitk", "nibabel"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_nifti_read_equals_simpleitk_exactly(tmp_path, oblique_geometry, rng, writer, suffix, dtype):
    """read_image reuses nibabel's decoded voxels with ITK's header geometry: it must give the
    image sitk.ReadImage gives, voxel for voxel, type for type, geometry for geometry."""
    import nibabel

    arr = (rng.random((7, 9, 11)) * 200).astype(dtype)  # (z, y, x) for sitk; nibabel gets (i, j, k)
    arr[0, 0, 0] = 1  # never constant
    path = tmp_path / f"img{suffix}"
    if writer == "sitk":
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin((3.5, -7.25, 11.0))
        img.SetSpacing((0.6, 0.9, 2.4))
        img.SetDirection(tuple(np.asarray(oblique_geometry.direction, float).ravel()))
        sitk.WriteImage(img, str(path))
    else:
        nibabel.save(nibabel.Nifti1Image(arr.T, _oblique_nibabel_affine(rng)), str(path))
    ref = sitk.ReadImage(str(path))
    with _itk_payload_reads_refused():  # and on the fast path: nibabel's voxels, ITK's header only
        ours = read_image(path)
    assert ours.GetPixelID() == ref.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref))
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-9)
    assert max(abs(d) for d in np.asarray(ref.GetDirection()).reshape(3, 3)[np.triu_indices(3, 1)]) > 0.05


def test_scaled_nifti_is_read_by_itk_with_its_scaling(tmp_path, rng):
    import nibabel

    arr = rng.integers(0, 100, (6, 7, 8)).astype(np.int16)
    img = nibabel.Nifti1Image(arr, np.diag([0.8, 0.8, 1.5, 1.0]))
    img.header.set_slope_inter(2.0, 5.0)
    path = tmp_path / "scaled.nii.gz"
    nibabel.save(img, str(path))
    ours, ref = read_image(path), sitk.ReadImage(str(path))
    assert ours.GetPixelID() == ref.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref))
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(ours), 2.0 * arr.T + 5.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_unscaled_nifti_payload_is_decoded_once(tmp_path, rng, monkeypatch, suffix):
    """The payload is decoded once (nibabel's proxy for .nii, one inflate call for .nii.gz):
    ITK's full reader is not called."""
    import nibabel.arrayproxy

    import lmkreg.io.images as images

    path = _write_raw(tmp_path / f"a{suffix}", rng.normal(size=(5, 6, 7)).astype(np.float32), (0.5, 0.7, 1.9))
    expected = sitk.ReadImage(str(path))
    decodes, inflates = [], []
    original = nibabel.arrayproxy.ArrayProxy._get_unscaled
    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "_get_unscaled",
                        lambda self, *a, **k: decodes.append(1) or original(self, *a, **k))
    inflate = images._gzip.decompress
    monkeypatch.setattr(images._gzip, "decompress", lambda data: inflates.append(1) or inflate(data))
    with _itk_payload_reads_refused():
        ours = read_image(path)
    assert (len(decodes), len(inflates)) == ((0, 1) if suffix == ".nii.gz" else (1, 0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected))
    assert ours.GetSpacing() == pytest.approx(expected.GetSpacing(), abs=1e-9)


@pytest.mark.parametrize("cut", ["truncated", "corrupt", "short_payload"])
def test_damaged_gzipped_nifti_is_refused_naming_the_file(tmp_path, rng, cut):
    """A damaged .nii.gz is refused (ITK would zero-fill a short payload)."""
    import gzip

    path = _write_raw(tmp_path / "a.nii.gz", rng.normal(size=(9, 8, 7)).astype(np.float32), (1.0, 1.0, 1.0))
    data = path.read_bytes()
    if cut == "truncated":
        data = data[: len(data) * 2 // 3]
    elif cut == "corrupt":
        data = data[:40] + bytes(b ^ 0x5A for b in data[40:80]) + data[80:]
    else:  # a complete gzip stream whose voxel data is short of what the header says
        data = gzip.compress(gzip.decompress(data)[:-40])
    path.write_bytes(data)
    with pytest.raises(InputError, match="a.nii.gz"):
        read_image(path)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("slope,inter", [(2.0, 0.0), (1.0, 5.0), (0.0, 5.0), (np.nan, 5.0)])
def test_nifti_header_scaling_is_applied_as_itk_applies_it(tmp_path, rng, dtype, slope, inter):
    """Scaled files are read by ITK itself, whatever nibabel makes of the fields (it ignores the
    intercept when the slope is 0 or NaN; ITK takes that slope as 1 and adds the intercept)."""
    import nibabel

    arr = rng.integers(1, 100, (6, 7, 8)).astype(dtype)
    path = tmp_path / "scaled.nii.gz"
    nibabel.save(nibabel.Nifti1Image(arr, np.diag([0.8, 0.9, 1.5, 1.0])), str(path))
    _set_raw_scaling(path, slope, inter)
    ours, ref = read_image(path), sitk.ReadImage(str(path))
    assert ours.GetPixelID() == ref.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref))
    assert not np.array_equal(sitk.GetArrayViewFromImage(ref), arr.T)  # ITK did scale


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("slope,inter", [(0.0, 0.0), (np.nan, 0.0), (0.0, np.nan), (np.nan, np.nan),
                                         (np.inf, 0.0), (1.0, 0.0)])
def test_nifti_header_without_scaling_takes_the_fast_path(tmp_path, rng, dtype, slope, inter):
    import nibabel

    arr = rng.integers(1, 100, (6, 7, 8)).astype(dtype)
    path = tmp_path / "unscaled.nii"
    nibabel.save(nibabel.Nifti1Image(arr, np.diag([0.8, 0.9, 1.5, 1.0])), str(path))
    _set_raw_scaling(path, slope, inter)
    ref = sitk.ReadImage(str(path))
    with _itk_payload_reads_refused():
        ours = read_image(path)
    assert ours.GetPixelID() == ref.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), arr.T)


@pytest.mark.parametrize("slope,inter", [(1.0, np.nan), (2.0, np.inf)])
def test_nifti_with_a_non_finite_intercept_names_the_file(tmp_path, rng, slope, inter):
    """nibabel refuses a valid slope with a non-finite intercept (the voxels cannot be checked)."""
    import nibabel

    path = tmp_path / "nan_inter.nii.gz"
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(4, 5, 6)).astype(np.float32), np.eye(4)), str(path))
    _set_raw_scaling(path, slope, inter)
    with pytest.raises(InputError, match="nan_inter.nii.gz.*not a readable image"):
        read_image(path)
