"""Recognise files lmkreg wrote, so an output folder shared with other tools is never clobbered.

An output folder may already hold files of the same name written by someone else: dcm2niix
writes ``NAME.json`` sidecars next to ``NAME.nii.gz``, a colleague may keep hand-placed
``NAME.mrk.json`` there.  lmkreg replaces a file only when its content shows lmkreg wrote it
(or the user said ``--overwrite``); otherwise the run stops naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Union

from lmkreg.errors import OutputError
import SimpleITK as sitk

PathLike = Union[str, Path]

# the keys lmkreg's markups writer puts in a markup and a control point (io/slicer.py); files saved by
# 3D Slicer carry more ("display", "measurements", "name", ...)
_OUR_MARKUP_KEYS = {"type", "coordinateSystem", "coordinateUnits", "locked", "fixedNumberOfControlPoints",
                    "labelFormat", "controlPoints"}
_OUR_POINT_KEYS = {"id", "label", "description", "associatedNodeID", "selected", "locked", "visibility",
                   "orientation", "position", "positionStatus"}


# header description (NIfTI "descrip") of the prostate masks lmkreg_predict writes (lmkreg.inference.segmentation)
LMKREG_MASK_NOTE = "lmkreg prostate mask"


def _is_lmkreg_mask(path: Path) -> bool:

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        keys = set(reader.GetMetaDataKeys())
        return any(reader.GetMetaData(k).strip() == LMKREG_MASK_NOTE for k in ("descrip", "ITK_FileNotes") if k in keys)
    except RuntimeError:
        return False


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def written_by_lmkreg(path: PathLike) -> bool:
    """True when the content of `path` is one lmkreg writes: an lmkreg landmark JSON (``coordinate_system``
    LPS, ``units`` mm, ``landmarks``), an lmkreg transform JSON, or a markups file exactly as lmkreg's
    writer lays it out, or a NIfTI prostate mask whose header description is ``LMKREG_MASK_NOTE``.
    Anything else (a dcm2niix sidecar, a Slicer-saved file) is someone else's."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".nii.gz"):  # a prostate mask carries lmkreg's note in its header
        return p.is_file() and _is_lmkreg_mask(p)
    if not name.endswith(".json"):
        return False
    doc = _json(p)
    if not isinstance(doc, dict):
        return False
    if name.endswith(".mrk.json"):
        markups = doc.get("markups")
        if set(doc) != {"@schema", "markups"} or not isinstance(markups, list) or len(markups) != 1:
            return False
        markup = markups[0]
        points = markup.get("controlPoints") if isinstance(markup, dict) else None
        return (isinstance(points, list) and set(markup) == _OUR_MARKUP_KEYS
                and all(isinstance(cp, dict) and set(cp) == _OUR_POINT_KEYS for cp in points))
    if doc.get("coordinate_system") == "LPS" and doc.get("units") == "mm" and isinstance(doc.get("landmarks"), dict):
        return True
    return "itk_file_direction" in doc and "matrix" in doc


def check_replaceable(paths: Iterable[PathLike], overwrite: bool) -> None:
    """Refuse, naming the file, to replace an existing file lmkreg did not write (unless `overwrite`)."""
    if overwrite:
        return
    for path in paths:
        p = Path(path)
        if p.exists() and not written_by_lmkreg(p):
            raise OutputError(p, "exists and was not written by lmkreg (e.g. a dcm2niix sidecar or a file saved "
                                 "by 3D Slicer); move it, choose another output folder, or use --overwrite to "
                                 "replace it")
