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
from lmkreg.io.dicom import choose_series, describe_folder, find_series, is_hidden, read_dicom_series
from lmkreg.io.images import IMAGE_SUFFIXES, is_image_file, read_image

PathLike = Union[str, Path]
# a case's file stem ends in its modality (case1_MR, case1-US): stripped to match a pair's files by case name
CASE_SUFFIX = re.compile(r"[_-](MR|MRI|US|TRUS)$", re.IGNORECASE)


@dataclass(frozen=True)
class InputImage:
    """One case to read: an image file, or a folder holding a DICOM series (`series` chosen in it)."""

    path: Path
    series_uid: Optional[str] = None  # set for DICOM: the chosen SeriesInstanceUID

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
        return self.path.name if self.is_dicom else split_suffix(self.path)[0]

    def read(self) -> sitk.Image:
        return read_dicom_series(self.path, self.series_uid) if self.is_dicom else read_image(self.path)


def _dicom_input(folder: Path, series: Optional[str]) -> InputImage:
    return InputImage(folder, choose_series(folder, series).uid)


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
