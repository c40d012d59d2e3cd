"""DICOM series as lmkreg images: MR and TRUS leave the scanner this way.

A folder holding the slice files of one series is one image.  Geometry comes from
SimpleITK's (GDCM's) series reader: slices ordered by ImagePositionPatient along the slice
normal, the slice spacing from those positions, the direction from ImageOrientationPatient
(oblique series stay oblique).  A folder holding several series needs a choice by
SeriesInstanceUID or SeriesDescription (``--series``); the error lists what was found.

Case names of DICOM inputs are the folder names (documentation/datasets.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.images import read_image

PathLike = Union[str, Path]

SERIES_DESCRIPTION_TAG = "0008|103e"
IMAGE_POSITION_TAG = "0020|0032"
# slice positions may deviate this much (fraction of the mean slice step) before a series is
# refused as having missing or unevenly spaced slices
SLICE_STEP_TOLERANCE = 0.05


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder: its UID, description and slice files (in reading order)."""

    folder: Path
    uid: str
    description: str
    files: tuple[str, ...]

    def label(self) -> str:
        return f"{self.uid} ({self.description or 'no description'}, {len(self.files)} file(s))"


def is_hidden(path: PathLike) -> bool:
    """Hidden files and folders, including the ``._NAME`` AppleDouble files macOS leaves on shared
    drives (they carry the name of an image but hold no image)."""
    return Path(path).name.startswith(".")


def _description(first_file: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(SERIES_DESCRIPTION_TAG).strip() if reader.HasMetaDataKey(SERIES_DESCRIPTION_TAG) else ""


@contextlib.contextmanager
def quiet_itk():
    """Keep ITK's warnings (GDCM's "GDCMSeriesFileNames ... No Series were found", "non uniform
    sampling") off the user's terminal for the block: lmkreg's own errors name the file and the problem."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


def _looks_like_dicom(path: Path, no_suffix_series: bool) -> bool:
    """A file meant as a DICOM slice: a DICOM suffix, the 'DICM' preamble marker, or no suffix in a
    folder whose series files have none (IM0001 exports)."""
    if path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in DICOM_SUFFIXES or (no_suffix_series and not path.suffix):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def unreadable_slices(folder: PathLike, series: Sequence[DicomSeries]) -> list[str]:
    """The files of `folder` that look like DICOM slices but belong to no series GDCM could read
    (truncated or damaged files: the series reader would silently leave them out)."""
    root = Path(folder)
    known = {Path(f).name for s in series for f in s.files}
    no_suffix = any(not Path(f).suffix for s in series for f in s.files)
    return sorted(p.name for p in root.iterdir()
                  if p.is_file() and not is_hidden(p) and p.name not in known and _looks_like_dicom(p, no_suffix))


def find_series(folder: PathLike) -> list[DicomSeries]:
    """Every DICOM series whose files lie directly in `folder` (not in subfolders); [] if none."""
    root = Path(folder)
    if not root.is_dir():
        return []
    if not any(p.is_file() and not is_hidden(p) for p in root.iterdir()):
        return []
    found = []
    with quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(root))
    for uid in uids:
        with quiet_itk():
            files = tuple(f for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(root), uid)
                          if not is_hidden(f))
        if files:
            found.append(DicomSeries(root, uid, _description(files[0]), files))
    return found


def describe_folder(folder: PathLike, limit: int = 5) -> str:
    """'3 file(s) (a.txt, b.pdf, ...) and 1 subfolder(s) (x)': what a folder holds, for error messages."""
    root = Path(folder)
    entries = sorted(root.iterdir()) if root.is_dir() else []
    files = [p.name for p in entries if p.is_file()]
    dirs = [p.name for p in entries if p.is_dir()]
    if not files and not dirs:
        return "it is empty"

    def some(names: Sequence[str]) -> str:
        return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")

    parts = []
    if files:
        parts.append(f"{len(files)} file(s) ({some(files)})")
    if dirs:
        parts.append(f"{len(dirs)} subfolder(s) ({some(dirs)})")
    return "it holds " + " and ".join(parts)


def choose_series(folder: PathLike, series: Optional[str] = None) -> DicomSeries:
    """The series of `folder` to read: the only one, or the one whose UID or description
    (ignoring case) is `series`.  Errors list what the folder holds."""
    root = Path(folder)
    found = find_series(root)
    if not found:
        raise InputError(root, f"no DICOM series and no image file found; {describe_folder(root)}")
    listing = "; ".join(s.label() for s in found)
    if series is None:
        if len(found) == 1:
            return found[0]
        raise InputError(root, f"holds {len(found)} DICOM series: {listing}; choose one with --series UID or "
                               f"--series DESCRIPTION")
    matches = [s for s in found if s.uid == series] or \
              [s for s in found if s.description.lower() == series.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    why = "matches several series (give the UID)" if matches else "matches no series"
    raise InputError(root, f"--series {series!r} {why}; found: {listing}")


def _check_slice_steps(chosen: DicomSeries, image: sitk.Image) -> None:
    """Refuse a series with missing or unevenly spaced slices: the series reader would stack them
    with one spacing and every world coordinate past the gap would be wrong."""
    if len(chosen.files) < 3:
        return
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
    reader = sitk.ImageFileReader()
    positions = []
    for f in chosen.files:
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
            value = reader.GetMetaData(IMAGE_POSITION_TAG)
        except RuntimeError:
            return  # no positions to check (the series reader then used its own fallback)
        positions.append([float(v) for v in value.replace(",", "\\").split("\\")])
    along = np.asarray(positions) @ normal
    order = np.argsort(along)
    along = along[order]
    steps = np.diff(along)
    mean = float(np.mean(steps))
    if mean <= 0 or np.max(np.abs(steps - mean)) > SLICE_STEP_TOLERANCE * mean:
        raise InputError(chosen.folder, f"DICOM series {chosen.uid}: slice positions are not evenly spaced "
                                        f"(steps {np.min(steps):.3g} to {np.max(steps):.3g} mm along the slice "
                                        f"normal){_gap_detail(along, steps, [chosen.files[i] for i in order])}: "
                                        f"missing slices or a mixed series; export it complete")


def _gap_detail(along: np.ndarray, steps: np.ndarray, files: Sequence[str]) -> str:
    """'; missing slice(s) at 12.0, 15.0 mm between A.dcm and B.dcm': where the gaps are, from the
    usual (median) step; '' when no step is a multiple of it."""
    usual = float(np.median(steps))
    if usual <= 0:
        return ""
    gaps = []
    for i, step in enumerate(steps):
        k = int(round(step / usual))
        if k >= 2 and abs(step - k * usual) <= SLICE_STEP_TOLERANCE * usual * k:
            missing = ", ".join(f"{along[i] + j * usual:.1f}" for j in range(1, k))
            gaps.append(f"{missing} mm (between {Path(files[i]).name} and {Path(files[i + 1]).name})")
    return ("; missing slice(s) at " + "; ".join(gaps)) if gaps else ""


def read_dicom_series(folder: PathLike, series: Optional[str] = None, *, check_values: bool = True) -> sitk.Image:
    """Read one DICOM series of `folder` as a 3D image in world LPS mm (see the module docstring).
    A file of the folder that looks like a DICOM slice but cannot be read (truncated, damaged) is an
    error naming it: the series reader would leave it out and stack the rest."""
    chosen = choose_series(folder, series)
    bad = unreadable_slices(chosen.folder, find_series(chosen.folder))
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise InputError(chosen.folder, f"{len(bad)} DICOM file(s) cannot be read (truncated or damaged) and "
                                        f"would be left out of the series: {shown}; export the series again")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "unreadable")
        raise InputError(chosen.folder, f"DICOM series {chosen.uid} could not be read ({detail[:200]})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(chosen.folder, f"DICOM series {chosen.uid} has {len(chosen.files)} slice(s); a volume "
                                        f"needs at least 2")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(chosen.folder, f"DICOM series {chosen.uid}: expected one value per voxel, got "
                                        f"{image.GetNumberOfComponentsPerPixel()} (colour images are not supported)")
    problem = ImageGeometry.from_image(image).problem()
    if problem:
        raise InputError(chosen.folder, f"DICOM series {chosen.uid}: {problem}")
    _check_slice_steps(chosen, image)
    if check_values:
        arr = sitk.GetArrayViewFromImage(image)
        if arr.size and np.ptp(arr) == 0:
            raise InputError(chosen.folder, f"DICOM series {chosen.uid}: image is constant (every voxel is "
                                            f"{arr.flat[0]})")
    return image


def read_image_or_series(path: PathLike, series: Optional[str] = None, *, is_mask: bool = False) -> sitk.Image:
    """An image file (NIfTI, NRRD, MHA, ...) or a folder holding a DICOM series."""

    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p, series)
    return read_image(p, is_mask=is_mask)
