"""Find the images of an input path as users hand them over: image files, DICOM series, or both.

``-i`` may name one image file, a folder of image files, a folder holding one DICOM series,
or a folder whose subfolders each hold one DICOM series (one case each, named after the
subfolder), mixed with image files.  Hidden files (``.name``, macOS ``._name``) are never
images.  A path with nothing readable is an error that says what it holds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.io.atomic import split_suffix
from lmkreg.io.dicom import DicomSeries, choose_series, describe_folder, find_series, is_hidden, read_dicom_series
from lmkreg.io.images import IMAGE_SUFFIXES, is_image_file, read_image
from lmkreg.io.provenance import name_modality

PathLike = Union[str, Path]
# a case's file stem ends in its modality (case1_MR, case1-US): stripped to match a pair's files by case name
CASE_SUFFIX = re.compile(r"[_-](MR|MRI|US|TRUS)$", re.IGNORECASE)


@dataclass(frozen=True)
class InputImage:
    """One case to read: an image file, or a folder holding a DICOM series (`series` chosen in it)."""

    path: Path
    series_uid: Optional[str] = None  # set for DICOM: the chosen SeriesInstanceUID
    # set when the folder holds several series: output names carry it, so two series of one
    # folder never share (and skip into) one output (issue 25)
    series_tag: Optional[str] = None

    @property
    def is_dicom(self) -> bool:
        return self.series_uid is not None

    @property
    def label(self) -> str:
        """How reports name the case: the file name, or the DICOM folder's name."""
        return self.path.name

    @property
    def stem(self) -> str:
        """Output file names start with this: the file name without its suffix, or the folder name."""
        if not self.is_dicom:
            return split_suffix(self.path)[0]
        return f"{self.path.name}_{self.series_tag}" if self.series_tag else self.path.name

    def read(self) -> sitk.Image:
        return read_dicom_series(self.path, self.series_uid) if self.is_dicom else read_image(self.path)

    def dicom_files(self) -> tuple[str, ...]:
        """The slice files of the chosen series in reading order (() for an image file)."""
        return choose_series(self.path, self.series_uid).files if self.is_dicom else ()

    def stated_modality(self) -> tuple[Optional[str], str]:
        """('MR'|'US', why) when the name (a trailing _MR/_US) or, for DICOM, the Modality tag says
        which modality this image is; (None, '') when nothing says."""

        by_name = name_modality(self.path)
        if by_name:
            return by_name, "its name says " + by_name
        files = self.dicom_files()
        if files:
            tag = dicom_modality(files[0])
            if tag in ("MR", "US"):
                return tag, f"its DICOM Modality (0008,0060) is {tag}"
        return None, ""


def dicom_modality(file: str) -> Optional[str]:
    """The DICOM Modality tag (0008,0060) of a slice file, or None."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetMetaData("0008|0060").strip().upper() if reader.HasMetaDataKey("0008|0060") else None


def _series_tag(series: DicomSeries, others: list[DicomSeries]) -> str:
    """A file-name-safe tag of `series` unique among the folder's series: its description when that
    is unique, else its series number, else the end of its UID."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:48]

    number = _series_number(series)
    descriptions = [safe(s.description) for s in others]
    if series.description and descriptions.count(safe(series.description)) == 1:
        return safe(series.description)
    numbers = [_series_number(s) for s in others]
    if number and numbers.count(number) == 1:
        return f"S{safe(number)}"
    return safe(series.uid.split(".")[-1]) or "series"


def _series_number(series: DicomSeries) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(series.files[0])
    try:
        reader.ReadImageInformation()
        return reader.GetMetaData("0020|0011").strip() if reader.HasMetaDataKey("0020|0011") else ""
    except RuntimeError:
        return ""


def _dicom_input(folder: Path, series: Optional[str]) -> InputImage:
    chosen = choose_series(folder, series)
    found = find_series(folder)
    return InputImage(folder, chosen.uid, _series_tag(chosen, found) if len(found) > 1 else None)


def split_by_modality(images: list[InputImage], modality: str) -> tuple[list[InputImage], dict[str, str]]:
    """(images to predict with a `modality` model, {label: why skipped}): an image whose name or
    DICOM Modality says the other of MR/US is skipped (a mixed CASE_MR/CASE_US folder given to
    -m MR).  Modalities other than MR/US are never judged."""
    base = modality.split("_")[0].upper()
    base = {"MRI": "MR", "TRUS": "US"}.get(base, base)
    if base not in ("MR", "US"):
        return images, {}
    kept, skipped = [], {}
    for image in images:
        stated, why = image.stated_modality()
        if stated is not None and stated != base:
            skipped[image.label] = why
        else:
            kept.append(image)
    return kept, skipped


def find_input_images(path: PathLike, series: Optional[str] = None) -> list[InputImage]:
    """The images of `path` (see the module docstring), sorted by name."""
    p = Path(path)
    if p.is_file():
        if is_image_file(p) and not is_hidden(p):
            return [InputImage(p)]
        raise InputError(p, f"is a file but not an image lmkreg reads ({', '.join(IMAGE_SUFFIXES)}); give such a "
                            f"file, a folder of them, or a folder holding a DICOM series")
    if not p.exists():
        raise InputError(p, "input not found (no such file or folder)")
    if not p.is_dir():
        raise InputError(p, "input is neither a file nor a folder")
    entries = sorted(e for e in p.iterdir() if not is_hidden(e))
    found = [InputImage(e) for e in entries if e.is_file() and is_image_file(e)]
    others = [e for e in entries if e.is_file() and not is_image_file(e)]
    if others and find_series(p):  # the folder itself is a DICOM series
        found.append(_dicom_input(p, series))
    for sub in (e for e in entries if e.is_dir()):
        if find_series(sub):
            found.append(_dicom_input(sub, series))
    if not found:
        raise InputError(p, f"no image file ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series found; "
                            f"{describe_folder(p)}")
    return found
