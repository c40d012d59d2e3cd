"""Reading and writing 3D images with SimpleITK (NIfTI, NRRD, MHA, ...), validated at the edge.

Images stay SimpleITK images so spacing, origin and direction are never lost; use
``ImageGeometry.from_image`` and ``sitk.GetArrayFromImage`` (axes z, y, x) inside.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import InputError, OutputError
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.atomic import atomic_path, split_suffix

PathLike = Union[str, Path]

try:  # zlib-ng inflates about twice as fast as the standard library (and than ITK's reader)
    from zlib_ng import gzip_ng as _gzip
    from zlib_ng import zlib_ng as _zlib
    _INFLATE_ERRORS: tuple = (zlib.error, _zlib.error)
except ImportError:  # pragma: no cover - zlib-ng is a declared dependency
    _gzip, _INFLATE_ERRORS = gzip, (zlib.error,)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: PathLike) -> bool:
    """True for a file name with a supported image suffix."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_image(path: PathLike, *, is_mask: bool = False, check_values: bool = True) -> sitk.Image:
    """Read a 3D scalar image and check it is usable; raise InputError naming the file if not.

    Checks: file exists and is not empty, SimpleITK can read it, it is 3D with one
    component, spacing positive, direction orthonormal, and (check_values) all voxels
    finite and, for images (not masks), not constant.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    if p.stat().st_size == 0:
        raise InputError(p, "file is empty")
    reader = _check_header_spacing(p)  # header only: before any voxel is decoded
    nifti = str(p).lower().endswith((".nii", ".nii.gz"))
    # NIfTI: nibabel decodes (and checks) the payload; when ITK would return exactly those
    # voxels, they become the image with ITK's header geometry, so the file is decoded once
    decoded = _check_nifti_payload(p, check_values) if nifti else None
    image = _image_from_decoded(decoded, reader) if decoded is not None and reader is not None else None
    values_checked = image is not None  # nibabel checked these very voxels
    if image is None:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = next((line.strip() for line in first if "Description" in line or "Could not" in line), "")
            raise InputError(p, f"not a readable image ({detail or 'SimpleITK could not read it'})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(p, f"expected a 3D volume, got a {image.GetDimension()}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} components")
    problem = ImageGeometry.from_image(image).problem()
    if problem:
        raise InputError(p, problem)
    if check_values:
        arr = sitk.GetArrayViewFromImage(image)
        if not values_checked and np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            n_bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise InputError(p, f"{n_bad} voxel(s) are NaN or infinite")
        if not is_mask and arr.size and np.ptp(arr) == 0:
            raise InputError(p, f"image is constant (every voxel is {arr.flat[0]})")
    return image


def _check_header_spacing(path: Path) -> Optional[sitk.ImageFileReader]:
    """Refuse zero or negative spacing as written in the header: ITK would fail obscurely on
    zero and silently turn a negative spacing into a flipped axis, which may not be what the
    writer meant.  Returns the reader with the header information read (None if ITK could
    not read the header)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        spacing = _metaimage_spacing(path)  # ITK refuses zero spacing before we can see it
        reader = None
    else:
        spacing = reader.GetSpacing()
    if spacing is not None and any(s <= 0 for s in spacing):
        raise InputError(path, f"spacing {tuple(spacing)} in the header is not positive; store positive spacings "
                               f"(a flipped axis belongs in the direction matrix)")
    return reader


def _image_from_decoded(data: np.ndarray, reader: sitk.ImageFileReader) -> Optional[sitk.Image]:
    """The image ITK would read, built from voxels nibabel already decoded (unscaled, on-disk
    type, (i, j, k) order) plus ITK's own header geometry: the payload is then decompressed
    once instead of twice.  None unless the data is a plain 3D scalar volume of the size and
    pixel type ITK reports (the caller then lets ITK read the file itself)."""
    if data.ndim != 3 or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    if tuple(data.shape) != tuple(reader.GetSize()):
        return None
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T, dtype=data.dtype.newbyteorder("=")))
    if image.GetPixelID() != reader.GetPixelID() or image.GetSize() != tuple(reader.GetSize()):
        return None
    image.SetOrigin(reader.GetOrigin())
    image.SetSpacing(reader.GetSpacing())
    image.SetDirection(reader.GetDirection())
    return image


def _metaimage_spacing(path: Path) -> Optional[tuple]:
    """ElementSpacing of a MetaImage header, if the file is one (text header lines)."""
    if not str(path).lower().endswith((".mha", ".mhd")):
        return None
    with open(path, "rb") as f:
        head = f.read(4096).decode("latin-1")
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ElementSpacing", "ElementSize"):
            try:
                return tuple(float(v) for v in value.split())
            except ValueError:
                return None
    return None


# voxel types ITK reads from NIfTI as they are stored (any byte order)
_PLAIN_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                                np.uint64, np.int64, np.float32, np.float64))


def _itk_leaves_values_unscaled(header) -> bool:
    """True when ITK's NIfTI reader returns the stored values as they are: it takes a zero or
    non-finite scl_slope as 1 and a non-finite scl_inter as 0, then scales unless 1 and 0
    (checked against ITK for each case; note a zero slope with a non-zero intercept is scaled
    by ITK but not by nibabel, so the header fields decide here, not nibabel's reading)."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    slope = 1.0 if slope == 0 or not np.isfinite(slope) else slope
    inter = 0.0 if not np.isfinite(inter) else inter
    return slope == 1.0 and inter == 0.0


def _check_nifti_payload(path: Path, check_values: bool) -> Optional[np.ndarray]:
    """Check a NIfTI file's header and voxel data with nibabel (the payload decoded once).

    ITK's NIfTI reader silently zero-fills a truncated file and returns NaN voxels as 0,
    so neither problem would be visible after ``sitk.ReadImage``.  Returns the decoded voxels
    (nibabel's (i, j, k) order, stored type) when ITK would return exactly these values, so
    the caller can reuse them; None otherwise (intensity scaling, an unusual voxel type: ITK
    then reads the file itself).
    """
    import nibabel  # lazy: start-up time; only NIfTI files need the payload check
    from nibabel.openers import ImageOpener  # lazy: with nibabel above

    damaged = (OSError, EOFError, ValueError, *_INFLATE_ERRORS, nibabel.filebasedimages.ImageFileError,
               nibabel.spatialimages.HeaderDataError)
    try:
        img = nibabel.load(str(path))  # header only: the payload is decoded below
        # nibabel's loaded header has its scaling fields and a zero pixdim rewritten: read it as written
        with ImageOpener(str(path)) as f:
            raw = type(img.header).from_fileobj(f, check=False)
    except damaged as exc:
        raise InputError(path, f"not a readable image (truncated or damaged: {_without_path(exc, path)})") from None
    # nibabel and ITK both silently turn a zero pixdim into 1 mm
    spacing = tuple(float(s) for s in raw["pixdim"][1:1 + min(max(int(raw["dim"][0]), 1), 3)])
    if any(not s > 0 for s in spacing):
        raise InputError(path, f"spacing {spacing} in the header is not positive; store positive spacings "
                               f"(a flipped axis belongs in the direction matrix)")
    reusable = _itk_leaves_values_unscaled(raw) and raw.get_data_dtype().newbyteorder("=") in _PLAIN_DTYPES
    try:
        if reusable and str(path).lower().endswith(".gz"):
            data = _inflate_nifti(path, img.dataobj)
        else:  # unscaled: the stored values in the stored type, as ITK returns them
            data = np.asarray(img.dataobj.get_unscaled()) if reusable else np.asanyarray(img.dataobj)
    except damaged as exc:
        raise InputError(path, f"not a readable image (truncated or damaged: {_without_path(exc, path)})") from None
    if check_values and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError(path, f"{int(np.count_nonzero(~np.isfinite(data)))} voxel(s) are NaN or infinite")
    if not reusable or data.dtype.newbyteorder("=") != raw.get_data_dtype().newbyteorder("="):
        return None
    return data


def _without_path(exc: BaseException, path: Path) -> str:
    """A library's first message line without the file name the error already starts with."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(f"File {path} ", "").replace(str(path), "the file").strip()


def _inflate_nifti(path: Path, proxy) -> np.ndarray:
    """Voxels of a gzipped single-file NIfTI as stored (type, byte order, (i, j, k) order): the
    whole file inflated in one call (CRC checked, so truncation and corruption raise) and the
    voxels viewed in place rather than copied through nibabel's file proxy, whose layout
    (shape, stored type, offset, axis order) they follow."""
    with open(path, "rb") as f:
        payload = _gzip.decompress(f.read())
    shape, dtype, offset = tuple(proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    count = int(np.prod(shape, dtype=np.int64))
    if len(payload) < offset + count * dtype.itemsize:
        raise ValueError(f"{len(payload) - offset} bytes of voxel data, the header needs {count * dtype.itemsize}")
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape, order=proxy.order)


def write_image(image: sitk.Image, path: PathLike, *, compress: bool = True) -> Path:
    """Write an image atomically (temporary file, then rename); the format follows the suffix."""
    p = Path(path)
    if not is_image_file(p):
        raise InputError(p, f"unsupported image file ending {split_suffix(p)[1]!r}; use one of {IMAGE_SUFFIXES}")
    try:
        with atomic_path(p) as tmp:
            sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as exc:  # SimpleITK's writer failed (OSErrors become OutputError in atomic_path)
        raise OutputError(p, f"could not write image: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
    return p


def image_from_array(array_zyx: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """SimpleITK image with `geometry` holding the (z, y, x) array."""
    return geometry.make_image(array_zyx)
