"""DICOM series as lmkreg images: MR and TRUS leave the scanner this way.

A folder holding the slice files of one series is one image.  Geometry comes from
SimpleITK's (GDCM's) series reader: slices ordered by ImagePositionPatient along the slice
normal, the slice spacing from those positions, the direction from ImageOrientationPatient
(oblique series stay oblique).  A folder holding several series needs a choice by
SeriesInstanceUID or SeriesDescription (``--series``); the error lists what was found.

Case names of DICOM inputs are the folder names (documentation/datasets.md).
"""
from __future__ import annotations

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


def find_series(folder: PathLike) -> list[DicomSeries]:
    """Every DICOM series whose files lie directly in `folder` (not in subfolders); [] if none."""
    root = Path(folder)
    if not root.is_dir():
        return []
    if not any(p.is_file() and not is_hidden(p) for p in root.iterdir()):
        return []
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(root)):
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
    steps = np.diff(np.sort(np.asarray(positions) @ normal))
    mean = float(np.mean(steps))
    if mean <= 0 or np.max(np.abs(steps - mean)) > SLICE_STEP_TOLERANCE * mean:
        raise InputError(chosen.folder, f"DICOM series {chosen.uid}: slice positions are not evenly spaced "
                                        f"(steps {np.min(steps):.3g} to {np.max(steps):.3g} mm along the slice "
                                        f"normal): missing slices or a mixed series; export it complete")


def read_dicom_series(folder: PathLike, series: Optional[str] = None, *, check_values: bool = True) -> sitk.Image:
    """Read one DICOM series of `folder` as a 3D image in world LPS mm (see the module docstring)."""
    chosen = choose_series(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
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
