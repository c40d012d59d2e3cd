"""Where an output came from: the input image, its modality, the model and the options (issue 25).

Every file lmkreg writes about a case carries one ``Provenance`` record (the landmark JSON under
``"provenance"``, the ``.mrk.json`` under ``"lmkreg": {"provenance": ...}``, the transform JSON
under ``"provenance"`` with both inputs' records, the evaluation report's ``provenance.json``).
Consumers compare records instead of trusting file names:

* ``lmkreg_predict`` reuses an existing output only when its record matches the input it would
  predict and the model it would use (``compare`` returns no difference);
* ``lmkreg_register`` takes a file's modality from its record first (``modality_of``) and refuses
  a pair that is the same image, the same modality twice, or swapped.

The image hash (``image_sha256``) is over the voxel values as read (dtype, shape, bytes) and the
geometry (size, spacing, origin, direction rounded to 1e-6 mm), so the same volume stored as
NIfTI or as a DICOM series hashes the same; ``files_sha256`` of a DICOM series is over the bytes
of its slice files, in reading order.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from lmkreg import __version__
from lmkreg.io.atomic import atomic_write_json, split_suffix

PathLike = Union[str, Path]

PROVENANCE_KEY = "provenance"          # key in the lmkreg landmark JSON and the transform JSON
MARKUPS_KEY = "lmkreg"                 # top-level key of a .mrk.json written by lmkreg: {"provenance": ...}
SERIES_UID_TAG = "0020|000e"
SERIES_DESCRIPTION_TAG = "0008|103e"
SERIES_NUMBER_TAG = "0020|0011"
MODALITIES = ("MR", "US")
# the modality a file name says: a trailing _MR / -MRI / _US / _TRUS (before the suffix)
_NAME_MODALITY = re.compile(r"[_-](MR|MRI|US|TRUS)$", re.IGNORECASE)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def image_sha256(image: sitk.Image) -> str:
    """sha256 over the voxel values (dtype, shape, bytes in (z, y, x) order) and the geometry
    (size, spacing, origin, direction; rounded so the same volume read twice hashes the same)."""
    arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{arr.shape}|{image.GetNumberOfComponentsPerPixel()}|".encode())
    h.update(arr.tobytes())
    geom = [list(image.GetSize()), [round(v, 6) for v in image.GetSpacing()],
            [round(v, 6) for v in image.GetOrigin()], [round(v, 6) for v in image.GetDirection()]]
    h.update(json.dumps(geom).encode())
    return h.hexdigest()


@dataclass
class InputRecord:
    """The input image of a prediction: the path as given, size and spacing (x, y, z), the
    content hash, and for a DICOM series its identity and the hash of its files."""

    path: str
    size_xyz: list[int]
    spacing_xyz: list[float]
    image_sha256: str
    series_uid: Optional[str] = None
    series_description: Optional[str] = None
    series_number: Optional[str] = None
    num_slices: Optional[int] = None
    files_sha256: Optional[str] = None

    @staticmethod
    def of(image: sitk.Image, path: PathLike, dicom_files: Sequence[PathLike] = ()) -> "InputRecord":
        """The record of `image` read from `path`; `dicom_files` (a series' slice files in reading
        order) adds the series UID, description and number from the first file and the files' hash."""
        rec = InputRecord(str(path), [int(n) for n in image.GetSize()], [float(v) for v in image.GetSpacing()],
                          image_sha256(image))
        if dicom_files:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(dicom_files[0]))
            try:
                reader.ReadImageInformation()
                tags = {t: reader.GetMetaData(t).strip() for t in (SERIES_UID_TAG, SERIES_DESCRIPTION_TAG,
                                                                   SERIES_NUMBER_TAG) if reader.HasMetaDataKey(t)}
            except RuntimeError:
                tags = {}
            h = hashlib.sha256()
            for f in dicom_files:
                h.update(bytes.fromhex(sha256_file(f)))
            rec.series_uid = tags.get(SERIES_UID_TAG)
            rec.series_description = tags.get(SERIES_DESCRIPTION_TAG)
            rec.series_number = tags.get(SERIES_NUMBER_TAG)
            rec.num_slices = len(dicom_files)
            rec.files_sha256 = h.hexdigest()
        return rec


@dataclass
class ModelRecord:
    """The model of a prediction: dataset, trainer, configuration(s) (a cascade lists the
    localizer first), folds, which checkpoint, and the sha256 of every checkpoint file and plans.json."""

    dataset: str
    trainer: str
    configurations: list[str]
    folds: list[str]
    checkpoint: str
    checkpoints_sha256: dict[str, str] = field(default_factory=dict)  # 'CONFIG/fold_F/checkpoint_X.pth' -> sha
    plans_sha256: dict[str, str] = field(default_factory=dict)        # 'CONFIG' -> sha of its plans.json

    @staticmethod
    def of(stages: Sequence[tuple[PathLike, Sequence[str]]], checkpoint: str) -> "ModelRecord":
        """The record of the model folders ``RESULTS/DATASET/TRAINER__CONFIG`` with the folds each
        runs (one stage, or a cascade's localizer and refine stage); ``folds`` is the last stage's."""
        folders = [Path(f) for f, _ in stages]
        rec = ModelRecord(folders[0].parent.name, folders[0].name.partition("__")[0],
                          [f.name.partition("__")[2] for f in folders], [str(f) for f in stages[-1][1]], checkpoint)
        for folder, folds in stages:
            folder = Path(folder)
            config = folder.name.partition("__")[2]
            if (folder / "plans.json").is_file():
                rec.plans_sha256[config] = sha256_file(folder / "plans.json")
            for fold in folds:
                ckpt = folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pth"
                if ckpt.is_file():
                    rec.checkpoints_sha256[f"{config}/fold_{fold}/{ckpt.name}"] = sha256_file(ckpt)
        return rec


@dataclass
class Provenance:
    """Where an output came from (see the module docstring).  ``options``: the settings that change
    the result (tta, folds, cascade, checkpoint, max_radius_mm)."""

    modality: Optional[str]
    input: Optional[InputRecord] = None
    model: Optional[ModelRecord] = None
    options: dict[str, Any] = field(default_factory=dict)
    lmkreg_version: str = ""

    def __post_init__(self) -> None:
        if not self.lmkreg_version:
            self.lmkreg_version = __version__

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(doc: Any) -> Optional["Provenance"]:
        """The record of a JSON object written by to_json; None for anything else (no record)."""
        if not isinstance(doc, Mapping) or "modality" not in doc:
            return None
        try:
            inp = InputRecord(**doc["input"]) if isinstance(doc.get("input"), Mapping) else None
            model = ModelRecord(**doc["model"]) if isinstance(doc.get("model"), Mapping) else None
        except TypeError:
            return None
        return Provenance(doc.get("modality"), inp, model, dict(doc.get("options") or {}),
                          str(doc.get("lmkreg_version") or ""))

    def label(self) -> str:
        """One line for messages: modality, input and series."""
        inp = self.input
        what = "unknown input" if inp is None else inp.path + (
            f" (series {inp.series_number or ''} {inp.series_description or inp.series_uid})" if inp.series_uid else "")
        return f"{self.modality or '?'} of {what}"


def compare(a: Optional[Provenance], b: Optional[Provenance]) -> list[str]:
    """The differences that make two outputs not interchangeable, as readable lines ([] = same
    image, series, modality, model and options).  A missing record is one difference.  The path
    and the lmkreg version are not compared: a moved file with the same content is the same input."""
    if a is None or b is None:
        return ["no provenance record" + ("" if a is None and b is None else " on one side")]
    out = []
    if a.modality != b.modality:
        out.append(f"modality {a.modality} vs {b.modality}")
    if (a.input is None) != (b.input is None):
        out.append("input recorded on one side only")
    elif a.input is not None:
        for key in ("image_sha256", "series_uid", "files_sha256", "size_xyz"):
            va, vb = getattr(a.input, key), getattr(b.input, key)
            if va != vb:
                out.append(f"input {key} {_short(va)} vs {_short(vb)}")
    if (a.model is None) != (b.model is None):
        out.append("model recorded on one side only")
    elif a.model is not None:
        for key in ("dataset", "trainer", "configurations", "folds", "checkpoint", "checkpoints_sha256",
                    "plans_sha256"):
            va, vb = getattr(a.model, key), getattr(b.model, key)
            if va != vb:
                out.append(f"model {key} {_short(va)} vs {_short(vb)}")
    for key in sorted(set(a.options) | set(b.options)):
        if a.options.get(key) != b.options.get(key):
            out.append(f"option {key} {a.options.get(key)!r} vs {b.options.get(key)!r}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def read_provenance(path: PathLike) -> Optional[Provenance]:
    """The record a landmark JSON, ``.mrk.json`` or transform JSON carries; None when it has none
    (a file of another tool, an older lmkreg, or one re-saved by 3D Slicer)."""
    p = Path(path)
    if not p.name.lower().endswith(".json"):
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if p.name.lower().endswith(".mrk.json"):
        doc = doc.get(MARKUPS_KEY) if isinstance(doc.get(MARKUPS_KEY), dict) else {}
    return Provenance.from_json(doc.get(PROVENANCE_KEY))


def add_provenance(path: PathLike, provenance: Provenance) -> None:
    """Put `provenance` into a just written (temporary) landmark JSON or ``.mrk.json``, in place."""
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    if p.name.lower().endswith(".mrk.json") or "markups" in doc:
        doc[MARKUPS_KEY] = {PROVENANCE_KEY: provenance.to_json()}
    else:
        doc[PROVENANCE_KEY] = provenance.to_json()
    atomic_write_json(p, doc)


def name_modality(path: PathLike) -> Optional[str]:
    """'MR' or 'US' when the file or folder name ends in _MR/_MRI or _US/_TRUS (before its suffix), else None."""

    p = Path(path)
    stem = p.name if p.is_dir() else split_suffix(p)[0]
    if stem.lower().endswith(".mrk"):
        stem = stem[:-4]
    m = _NAME_MODALITY.search(stem)
    if not m:
        return None
    return "MR" if m.group(1).upper().startswith("MR") else "US"


def modality_of(path: PathLike) -> tuple[Optional[str], str]:
    """(modality, evidence): from the file's provenance record first ('provenance'), else from its
    name ('name'), else (None, 'none')."""
    rec = read_provenance(path)
    if rec is not None and rec.modality:
        return _base_modality(rec.modality), "provenance"
    by_name = name_modality(path)
    return (by_name, "name") if by_name else (None, "none")


def _base_modality(modality: str) -> str:
    """'MR_localizer' -> 'MR'; 'MRI' -> 'MR'; 'TRUS' -> 'US'."""
    base = modality.split("_")[0].upper()
    return {"MRI": "MR", "TRUS": "US"}.get(base, base)


def pair_record(mr: Optional[Provenance], us: Optional[Provenance]) -> dict:
    """The ``provenance`` of a transform JSON: lmkreg version and both landmark files' records."""
    return {"lmkreg_version": __version__, "mr": None if mr is None else mr.to_json(),
            "us": None if us is None else us.to_json()}


def records(paths: Iterable[PathLike]) -> dict[str, Optional[dict]]:
    """path -> its provenance record as JSON (None without one): the evaluation report's provenance.json."""
    out = {}
    for p in paths:
        rec = read_provenance(p)
        out[str(p)] = None if rec is None else rec.to_json()
    return out
