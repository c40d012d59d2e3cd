"""Dataset layout on disk (nnU-Net-like) and ``dataset.json``.

::

    $LMKREG_raw/Dataset001_Phantom/
        dataset.json
        imagesTr/CASE_MR.nii.gz   imagesTr/CASE_US.nii.gz
        landmarksTr/CASE_MR.json  landmarksTr/CASE_US.json     (lmkreg JSON, LPS mm)
        masksTr/CASE_MR.nii.gz    masksTr/CASE_US.nii.gz       (optional prostate masks)
        transformsTr/CASE.json                                 (optional true MR->US rigid map)
        imagesTs/ landmarksTs/ masksTs/ transformsTs/          (held-out test cases)
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lmkreg.cli_utils import check_modality
from lmkreg.errors import ConfigurationError, InputError, LmkregError
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LMKREG_JSON_SUFFIX
from lmkreg.paths import raw_root, results_root

PathLike = Union[str, Path]
SPLITS = ("Tr", "Ts")
DATASET_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


def check_case_id(case_id: str, source: Optional[PathLike] = None) -> str:
    """Refuse case ids that could escape a folder or break file names ('../x', 'a/b', '')."""
    if not CASE_ID_RE.match(case_id) or ".." in case_id:
        raise InputError(source, f"unsafe case id {case_id!r}: use letters, digits, '_', '-', '.' only")
    return case_id


@dataclass
class DatasetSpec:
    """Content of dataset.json."""

    name: str
    modalities: list[str] = field(default_factory=lambda: ["MR", "US"])
    landmarks: list[str] = field(default_factory=lambda: list(DEFAULT_LANDMARK_NAMES))
    file_ending: str = ".nii.gz"
    description: str = ""
    num_training: int = 0
    num_test: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_id(self) -> int:
        return int(DATASET_NAME_RE.match(self.name).group(1))

    def validate(self, source: Optional[PathLike] = None) -> None:
        if not DATASET_NAME_RE.match(self.name):
            raise InputError(source, f"name {self.name!r} must look like 'Dataset001_Name'")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise InputError(source, f"modalities {self.modalities} must be a non-empty list of unique names")
        for m in self.modalities:
            check_case_id(m, source)
        if not self.landmarks or len(set(self.landmarks)) != len(self.landmarks):
            raise InputError(source, f"landmarks {self.landmarks} must be a non-empty list of unique names")
        if not self.file_ending.startswith("."):
            raise InputError(source, f"file_ending {self.file_ending!r} must start with '.'")

    def to_json(self) -> dict:
        d = asdict(self)
        d["numTraining"] = d.pop("num_training")
        d["numTest"] = d.pop("num_test")
        return d

    @staticmethod
    def from_json(d: dict, source: Optional[PathLike] = None) -> "DatasetSpec":
        known = {"name", "modalities", "landmarks", "file_ending", "description", "numTraining", "numTest", "extra"}
        missing = [k for k in ("name", "modalities", "landmarks", "file_ending") if k not in d]
        if missing:
            raise InputError(source, f"missing key(s) {missing}")
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(source, f"unknown key(s) {unknown}; known keys are {sorted(known)}")
        spec = DatasetSpec(name=d["name"], modalities=list(d["modalities"]), landmarks=list(d["landmarks"]),
                           file_ending=d["file_ending"], description=d.get("description", ""),
                           num_training=int(d.get("numTraining", 0)), num_test=int(d.get("numTest", 0)),
                           extra=dict(d.get("extra", {})))
        spec.validate(source)
        return spec


class Dataset:
    """A dataset folder: where each case's files are, and which cases exist."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        path = self.folder / "dataset.json"
        if not path.is_file():
            raise ConfigurationError(f"{path}: dataset.json not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
        self.spec = DatasetSpec.from_json(data, path)

    @staticmethod
    def create(folder: PathLike, spec: DatasetSpec) -> "Dataset":
        """Write dataset.json and the split folders (refuses to overwrite another dataset)."""
        spec.validate()
        folder = Path(folder)
        target = folder / "dataset.json"
        if target.exists():
            existing = json.loads(target.read_text(encoding="utf-8"))
            if existing.get("name") != spec.name:
                raise ConfigurationError(f"{target} belongs to dataset {existing.get('name')!r}; refusing to overwrite")
        atomic_write_json(target, spec.to_json())
        return Dataset(folder)

    def save_spec(self) -> None:
        atomic_write_json(self.folder / "dataset.json", self.spec.to_json())

    @property
    def name(self) -> str:
        return self.spec.name

    def _check(self, modality: str, split: str) -> None:
        if modality not in self.spec.modalities:
            raise ConfigurationError(f"{self.name}: unknown modality {modality!r}; dataset has {self.spec.modalities}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")

    def image_path(self, case: str, modality: str, split: str = "Tr") -> Path:
        self._check(modality, split)
        return self.folder / f"images{split}" / f"{check_case_id(case)}_{modality}{self.spec.file_ending}"

    def mask_path(self, case: str, modality: str, split: str = "Tr") -> Path:
        self._check(modality, split)
        return self.folder / f"masks{split}" / f"{check_case_id(case)}_{modality}{self.spec.file_ending}"

    def landmarks_path(self, case: str, modality: str, split: str = "Tr") -> Path:
        self._check(modality, split)
        return self.folder / f"landmarks{split}" / f"{check_case_id(case)}_{modality}{LMKREG_JSON_SUFFIX}"

    def transform_path(self, case: str, split: str = "Tr") -> Path:
        """Optional reference rigid MR->US transform of a case (JSON, 4x4 in LPS mm)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        return self.folder / f"transforms{split}" / f"{check_case_id(case)}.json"

    def cases(self, split: str = "Tr", modality: Optional[str] = None) -> list[str]:
        """Sorted case ids that have an image of `modality` (default: of any modality)."""
        folder = self.folder / f"images{split}"
        if not folder.is_dir():
            return []
        mods: Sequence[str] = self.spec.modalities if modality is None else [modality]
        found = set()
        for f in folder.iterdir():
            for m in mods:
                suffix = f"_{m}{self.spec.file_ending}"
                if f.name.endswith(suffix):
                    found.add(f.name[: -len(suffix)])
        return sorted(found)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def find_dataset(identifier: Union[int, str], root: Optional[PathLike] = None) -> Path:
    """Folder of a dataset given by number ('1', '001', 1) or full name ('Dataset001_Phantom')."""
    base = Path(root) if root is not None else raw_root()
    ident = str(identifier)
    if DATASET_NAME_RE.match(ident):
        folder = base / ident
        if folder.is_dir():
            return folder
        raise ConfigurationError(f"dataset {ident} not found in {base}")
    if not ident.isdigit():
        raise ConfigurationError(f"dataset identifier {ident!r} must be a number or 'DatasetNNN_Name'")
    prefix = f"Dataset{int(ident):03d}_"
    matches = sorted(p for p in base.glob(prefix + "*") if p.is_dir()) if base.is_dir() else []
    if not matches:
        raise ConfigurationError(f"no dataset with id {int(ident)} in {base} (set LMKREG_raw to the right folder)")
    if len(matches) > 1:
        raise ConfigurationError(f"several datasets with id {int(ident)} in {base}: {[m.name for m in matches]}")
    return matches[0]


def open_dataset(identifier: Union[int, str], root: Optional[PathLike] = None) -> Dataset:
    return Dataset(find_dataset(identifier, root))


def dataset_modalities(identifier: Union[int, str], root: Optional[PathLike] = None) -> list[str]:
    """The modalities of the raw dataset's dataset.json ([] when the raw dataset is not here, e.g. a
    machine holding only the trained models: check_modality then reads theirs)."""
    try:
        return list(open_dataset(identifier, root).spec.modalities)
    except (LmkregError, OSError):
        return []


def check_dataset_modality(identifier: Union[int, str], modality: str) -> None:
    """The one check of -m for every command that takes it (predict, train, find_best_configuration):
    a typo such as ``-m mr`` or ``-m MRI`` is a ConfigurationError listing the dataset's modalities
    (from its dataset.json, else from its trained models'), not a later "no trained MRI model" or a
    list of the plans' configurations.  A dataset that cannot be found is left to the command's own
    error."""
    try:
        name = find_dataset(identifier).name
    except ConfigurationError:
        return
    check_modality(results_root() / name, modality, dataset_modalities(identifier))
