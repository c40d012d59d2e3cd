"""Import your own images, landmarks and masks into the lmkreg dataset layout.

Each modality comes from its own folders (``ModalitySource``): images, and either landmark
files (``.mrk.json``, ``.fcsv``, lmkreg ``.json``) or landmark label maps (one label or one
channel per landmark, see ``lmkreg.io.labelmap``), plus optional prostate masks.  Files are
matched across folders by **case name**:

1. the format suffix is removed (``.nii.gz .nii .nrrd .nhdr .mha .mhd`` for images, masks
   and label maps; ``.mrk.json .fcsv .json`` for landmark files);
2. then, repeatedly, one trailing token separated by ``_``, ``-`` or ``.`` is removed while
   it is (ignoring case) the modality's own name or one of ``STRIP_TOKENS`` (modality words
   such as ``MR``, ``T2``, ``US``, ``TRUS`` and role words such as ``image``, ``label``,
   ``mask``, ``landmarks``), never leaving an empty name.

So ``P001_MR.nii.gz``, ``P001_t2_image.nrrd``, ``P001-MR-landmarks.mrk.json``,
``P001_US_label.nii.gz`` and ``P001.fcsv`` all belong to case ``P001``.  Numbers are never
stripped (``case_0001`` stays ``case_0001``).  With ``case_pattern`` (``--case-regex``) the
rule is replaced by a regular expression searched in the file name without its suffix: the
case is the group named ``case``, else group 1, else the whole match; files it does not match
are ignored and listed.

Nothing is written when the plan has problems: unsafe case ids, two files of one folder
mapping to the same case (also when the names differ only by upper/lower case), cases that
lack a modality's image or landmarks (unless ``skip_incomplete``), and existing case files
(unless ``overwrite``).  Each case is then read and checked completely before any of its files
is written; a case whose files are unreadable is reported and left out, the others are
imported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from lmkreg.dataset.layout import SPLITS, Dataset, DatasetSpec, check_case_id, dataset_folder_name
from lmkreg.errors import ConfigurationError, InputError, LmkregError
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.images import IMAGE_SUFFIXES, is_image_file, read_image, write_image
from lmkreg.io.labelmap import landmarks_from_labelmap
from lmkreg.io.landmark_files import is_landmark_file, read_landmarks, strip_landmark_suffix
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, write_lmkreg_json
from lmkreg.paths import raw_root
from lmkreg.io.dicom import find_series, is_hidden
from lmkreg.io.dicom import read_image_or_series
from lmkreg.io.landmark_names import rename_landmarks
from lmkreg.io.dicom import describe_folder

PathLike = Union[str, Path]

# trailing name tokens removed when deriving a case name (compared ignoring case)
STRIP_TOKENS = ("mr", "mri", "t2", "t2w", "us", "trus",
                "image", "img", "volume", "label", "labels", "labelmap", "seg", "segmentation", "mask", "masks",
                "landmark", "landmarks", "lmk", "lmks", "fiducials", "fcsv", "points", "markups")
DATASET_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats only
_SEPARATORS = "_-."
_DATA_COMPANIONS = (".raw", ".raw.gz", ".zraw", ".img", ".img.gz")  # pixel files of .nhdr / .mhd headers


@dataclass
class ModalitySource:
    """Where one modality's files are.  Give `landmarks` or `landmark_labelmaps` (not both).

    `labelmap_labels`: label value (3D label map) or channel index (4D / multi-component) of
    each landmark, in the order of the landmark names; default 1..N or channels 0..N-1.
    """

    images: PathLike
    landmarks: Optional[PathLike] = None
    masks: Optional[PathLike] = None
    landmark_labelmaps: Optional[PathLike] = None
    labelmap_labels: Optional[Sequence[int]] = None
    series: Optional[str] = None  # DICOM folders with several series: SeriesInstanceUID or description


@dataclass
class ImportReport:
    """What an import did: imported cases, cases left out and why, warnings, ignored files."""

    folder: Path
    split: str
    imported: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # case -> why it could not be imported
    skipped: dict[str, str] = field(default_factory=dict)  # incomplete case -> what it lacks
    warnings: list[str] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def format(self) -> str:
        lines = [f"imported {len(self.imported)} case(s) into {self.folder} (split {self.split})"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} incomplete case(s):")
            lines += [f"  {c}: {why}" for c, why in sorted(self.skipped.items())]
        if self.failed:
            lines.append(f"FAILED {len(self.failed)} case(s) (nothing written for them):")
            lines += [f"  {c}: {why}" for c, why in sorted(self.failed.items())]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  {w}" for w in self.warnings]
        if self.ignored_files:
            lines.append(f"ignored {len(self.ignored_files)} file(s) that are not images / landmark files or do not "
                         f"match the case pattern, e.g. {self.ignored_files[0]}")
        return "\n".join(lines)


# ---- case names -----------------------------------------------------------------------------------

def strip_format_suffix(filename: str, kind: str) -> Optional[str]:
    """File name without its image (kind 'image') or landmark (kind 'landmarks') suffix, or None."""
    if kind == "landmarks":
        return strip_landmark_suffix(filename) if is_landmark_file(filename) else None
    if is_image_file(filename) and not filename.startswith("."):
        low = filename.lower()
        for suffix in IMAGE_SUFFIXES:
            if low.endswith(suffix):
                return filename[: -len(suffix)]
    return None


def case_name_from_stem(stem: str, modality: str, case_pattern: Optional[Union[str, re.Pattern]] = None
                        ) -> Optional[str]:
    """The case name of a file name without suffix (see the module docstring), or None if
    `case_pattern` does not match."""
    if case_pattern is not None:
        rx = re.compile(case_pattern) if isinstance(case_pattern, str) else case_pattern
        m = rx.search(stem)
        if m is None:
            return None
        if "case" in rx.groupindex:
            return m.group("case")
        return m.group(1) if rx.groups else m.group(0)
    tokens = set(STRIP_TOKENS) | {modality.lower()}
    name = stem
    while True:
        cut = max(name.rfind(s) for s in _SEPARATORS)
        if cut <= 0 or name[cut + 1:].lower() not in tokens:
            return name
        name = name[:cut]


def case_name(filename: str, modality: str, kind: str = "image",
              case_pattern: Optional[Union[str, re.Pattern]] = None) -> Optional[str]:
    """Case name of a file, or None when it is not an image / landmark file or the pattern fails."""
    stem = strip_format_suffix(filename, kind)
    return None if stem is None else case_name_from_stem(stem, modality, case_pattern)


@dataclass
class _FolderScan:
    files: dict[str, Path] = field(default_factory=dict)  # case -> file (or DICOM series folder)
    problems: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


# words in file names that name a modality (compared ignoring case); a modality's own name counts too
MODALITY_WORDS = {"MR": ("mr", "mri", "t2", "t2w"), "US": ("us", "trus")}


def _trailing_tokens(stem: str, modality: str) -> list[str]:
    """The tokens case_name_from_stem strips from `stem`, last first (lower case)."""
    tokens = set(STRIP_TOKENS) | {modality.lower()}
    out, name = [], stem
    while True:
        cut = max(name.rfind(sep) for sep in _SEPARATORS)
        if cut <= 0 or name[cut + 1:].lower() not in tokens:
            return out
        out.append(name[cut + 1:].lower())
        name = name[:cut]


def _words(modality: str) -> set[str]:
    return {modality.lower(), *MODALITY_WORDS.get(modality.upper(), ())}


def names_other_modality(stem: str, modality: str, modalities: Sequence[str] = ()) -> Optional[str]:
    """The other modality a file name's suffix names (``CASE_US`` scanned for MR -> 'US'), else None.

    One folder may hold both modalities (lmkreg's own ``imagesTs``): a file is then read as the
    modality its ``_MR`` / ``_US`` suffix (or a modality name from dataset.json) says."""
    own = _words(modality)
    others = {m: _words(m) - own for m in {*modalities, *MODALITY_WORDS} if m.lower() != modality.lower()}
    found = _trailing_tokens(stem, "") + _trailing_tokens(stem, modality)
    if any(t in own for t in found):
        return None
    for other, words in sorted(others.items()):
        if any(t in words for t in found) or any(stem.lower().endswith(sep + w) for w in words for sep in _SEPARATORS):
            return other
    return None


def _scan_folder(folder: PathLike, modality: str, kind: str, case_pattern, modalities: Sequence[str] = (),
                 dicom: bool = False) -> _FolderScan:
    """Case -> file for one source folder; duplicates and unsafe names become problems.

    With `dicom`, a subfolder holding a DICOM series is one case named after the subfolder, and
    a folder that itself holds a series is one case named after the folder."""

    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, f"{modality} {kind} folder not found (or not a folder)")
    scan = _FolderScan()
    by_lower: dict[str, list[tuple[str, Path]]] = {}
    entries = [f for f in sorted(root.iterdir()) if not is_hidden(f)]  # also macOS ._NAME files
    candidates: list[tuple[Path, Optional[str]]] = []  # (file or series folder, its name without suffix)
    for f in entries:
        if f.is_dir():
            if dicom and find_series(f):
                candidates.append((f, f.name))
            continue
        if f.name.lower().endswith(_DATA_COMPANIONS):
            continue
        candidates.append((f, strip_format_suffix(f.name, "landmarks" if kind == "landmarks" else "image")))
    if dicom and not any(stem for f, stem in candidates if f.is_file()) and find_series(root):
        candidates = [(root, root.name)]  # the folder itself is one series (its other files are slices)
    for f, stem in candidates:
        if stem is None:
            scan.ignored.append(f)
            continue
        if names_other_modality(stem, modality, modalities):
            continue  # the other modality's file in a shared folder
        case = case_name_from_stem(stem, modality, case_pattern)
        if case is None:
            scan.ignored.append(f)
            continue
        try:
            check_case_id(case, f)
        except InputError as exc:
            scan.problems.append(str(exc))
            continue
        by_lower.setdefault(case.lower(), []).append((case, f))
    for group in by_lower.values():
        if len(group) > 1:
            listed = ", ".join(p.name for _, p in group)
            if len({c for c, _ in group}) > 1:
                why = "names that differ only by upper/lower case count as the same case"
            else:
                why = ("the case name is the file name without its suffix and without trailing words such as "
                       "_MR, _US, _image, _mask; or set it with --case-regex")
            scan.problems.append(f"{root}: {modality} {kind} {listed} all map to case {group[0][0]!r} ({why}); "
                                 f"keep one per case")
        else:
            case, f = group[0]
            scan.files[case] = f
    return scan


# ---- import ---------------------------------------------------------------------------------------

@dataclass
class _CasePlan:
    case: str
    image: dict[str, Path] = field(default_factory=dict)
    landmarks: dict[str, Path] = field(default_factory=dict)
    labelmap: dict[str, Path] = field(default_factory=dict)
    mask: dict[str, Path] = field(default_factory=dict)


def _check_sources(sources: Mapping[str, ModalitySource]) -> None:
    if not sources:
        raise ConfigurationError("no modality given: pass at least one images folder (e.g. --images MR=/data/mr)")
    for modality, src in sources.items():
        if not isinstance(src, ModalitySource):
            raise ConfigurationError(f"source of modality {modality!r} must be a ModalitySource")
        if src.landmarks is not None and src.landmark_labelmaps is not None:
            raise ConfigurationError(f"modality {modality}: give landmark files or landmark label maps, not both")
        if src.landmarks is None and src.landmark_labelmaps is None:
            raise ConfigurationError(f"modality {modality}: no landmarks given; pass --landmarks {modality}=FOLDER "
                                     f"or --landmark-labelmaps {modality}=FOLDER")


def _resolve_dataset(dataset_id: int, name: str, modalities: Sequence[str], names: Sequence[str],
                     file_ending: str, description: str) -> tuple[Path, DatasetSpec]:
    """(folder, spec to write) of the target dataset; checks compatibility, writes nothing."""
    if not 0 < int(dataset_id) < 1000:
        raise ConfigurationError(f"dataset id must be 1-999, got {dataset_id}")
    if file_ending not in DATASET_FILE_ENDINGS:
        raise ConfigurationError(f"file ending {file_ending!r} not supported for datasets; use one of "
                                 f"{DATASET_FILE_ENDINGS}")
    base = raw_root()
    folder = base / dataset_folder_name(dataset_id, name)
    prefix = dataset_folder_name(dataset_id, "")
    others = sorted(q.name for q in base.glob(prefix + "*") if q.is_dir() and q.name != folder.name) \
        if base.is_dir() else []
    if others:
        raise ConfigurationError(f"dataset id {int(dataset_id)} is already used by {others[0]} in {base}; "
                                 f"choose another -d or the same --name")
    if not (folder / "dataset.json").is_file():
        spec = DatasetSpec(name=folder.name, modalities=list(modalities), landmarks=list(names),
                           file_ending=file_ending, description=description)
        spec.validate()
        return folder, spec
    spec = Dataset(folder).spec
    if list(spec.landmarks) != list(names):
        raise ConfigurationError(f"{folder / 'dataset.json'} has landmarks {spec.landmarks}, this import "
                                 f"{list(names)}; use the same --landmark-names (same order)")
    if spec.file_ending != file_ending:
        raise ConfigurationError(f"{folder / 'dataset.json'} uses file ending {spec.file_ending!r}, this import "
                                 f"{file_ending!r}")
    spec.modalities = list(spec.modalities) + [m for m in modalities if m not in spec.modalities]
    if description:
        spec.description = description
    spec.validate()
    return folder, spec


def _path_only_dataset(folder: Path, spec: DatasetSpec) -> Dataset:
    """A Dataset for path arithmetic before dataset.json is written."""
    ds = Dataset.__new__(Dataset)
    ds.folder, ds.spec = folder, spec
    return ds


def _plan(sources: Mapping[str, ModalitySource], case_pattern, report: ImportReport,
          modalities: Sequence[str] = ()) -> tuple[dict[str, _CasePlan], list[str]]:
    problems: list[str] = []
    plans: dict[str, _CasePlan] = {}
    orphans: list[str] = []
    modalities = list(dict.fromkeys([*sources, *modalities]))
    for modality, src in sources.items():
        images = _scan_folder(src.images, modality, "images", case_pattern, modalities, dicom=True)
        problems += images.problems
        report.ignored_files += images.ignored
        for case, f in images.files.items():
            plans.setdefault(case, _CasePlan(case)).image[modality] = f
        for kind, folder in (("landmarks", src.landmarks), ("labelmap", src.landmark_labelmaps),
                             ("mask", src.masks)):
            if folder is None:
                continue
            scan = _scan_folder(folder, modality, "landmarks" if kind == "landmarks" else kind, case_pattern,
                                modalities)
            problems += scan.problems
            report.ignored_files += scan.ignored
            for case, f in scan.files.items():
                if case in plans and modality in plans[case].image:
                    getattr(plans[case], kind)[modality] = f
                else:
                    orphans.append(f"{f} (case {case!r}: no {modality} image with this case name)")
    if orphans:
        report.warnings += [f"ignored {o}" for o in orphans]
    lower: dict[str, str] = {}
    for case in sorted(plans):  # the same case spelled differently in different folders
        other = lower.setdefault(case.lower(), case)
        if other != case:
            problems.append(f"case names {other!r} and {case!r} differ only by upper/lower case "
                            f"(files {sorted(map(str, plans[other].image.values()))[0]} and "
                            f"{sorted(map(str, plans[case].image.values()))[0]}); rename one")
    report.ignored_files = list(dict.fromkeys(report.ignored_files))  # a folder shared by modalities: once
    return plans, list(dict.fromkeys(problems))


def _incomplete(plan: _CasePlan, sources: Mapping[str, ModalitySource]) -> list[str]:
    lacks = []
    for modality, src in sources.items():
        if modality not in plan.image:
            lacks.append(f"no {modality} image (file or DICOM series folder) in {src.images}")
            continue
        if src.landmarks is not None and modality not in plan.landmarks:
            lacks.append(f"no {modality} landmark file in {src.landmarks}")
        if src.landmark_labelmaps is not None and modality not in plan.labelmap:
            lacks.append(f"no {modality} landmark label map in {src.landmark_labelmaps}")
    return lacks


def _binary_mask(mask: sitk.Image, path: Path) -> sitk.Image:
    """The mask as uint8 0/1; a mask with values {0, k} becomes 0/1, more values are refused."""
    arr = sitk.GetArrayFromImage(mask)
    values = np.unique(arr)
    nonzero = values[values != 0]
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise InputError(path, f"mask has {values.size} distinct values ({shown}); expected a binary mask "
                               f"(0 = background, one other value = prostate)")
    out = sitk.GetImageFromArray((arr != 0).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def _read_case(plan: _CasePlan, sources: Mapping[str, ModalitySource], names: Sequence[str],
               warnings: list[str], landmark_map: Optional[Mapping[str, str]] = None
               ) -> dict[str, tuple[sitk.Image, Optional[sitk.Image], LandmarkSet]]:
    """Read and check every file of a case (nothing is written here)."""

    out = {}
    for modality, src in sources.items():
        image_path = plan.image[modality]
        image = read_image_or_series(image_path, src.series)
        mask = None
        if modality in plan.mask:
            mask_path = plan.mask[modality]
            mask = read_image(mask_path, is_mask=True)
            if not ImageGeometry.from_image(mask).same_as(ImageGeometry.from_image(image)):
                raise InputError(mask_path, f"mask grid (size, spacing, origin or direction) differs from its image "
                                            f"{image_path.name}; masks must share the image's voxel grid")
            mask = _binary_mask(mask, mask_path)
        elif src.masks is not None:
            warnings.append(f"case {plan.case}: no {modality} mask in {src.masks}; imported without a mask")
        if modality in plan.landmarks:
            lm_path = plan.landmarks[modality]
            everything = rename_landmarks(read_landmarks(lm_path), landmark_map or {}, names, lm_path)
            extra = [n for n in everything.names if n not in names]
            landmarks = everything.select(list(names), source=lm_path)
            if extra:
                warnings.append(f"{lm_path}: landmark(s) {extra} are not dataset landmarks; ignored")
        else:
            lm_path = plan.labelmap[modality]
            landmarks = landmarks_from_labelmap(lm_path, names, src.labelmap_labels)
        geometry = ImageGeometry.from_image(image)
        outside = [n for n, p in landmarks.points.items() if p is not None and not bool(geometry.contains_world(p))]
        if outside:
            warnings.append(f"{lm_path}: landmark(s) {outside} lie outside the image {image_path.name} (wrong "
                            f"coordinate system or case?); lmkreg_verify_dataset will report them")
        out[modality] = (image, mask, landmarks)
    return out


def _target_files(ds: Dataset, case: str, modalities: Sequence[str], split: str) -> list[Path]:
    files = []
    for m in modalities:
        files += [ds.image_path(case, m, split), ds.mask_path(case, m, split), ds.landmarks_path(case, m, split)]
    return files


def import_dataset(dataset_id: int, name: str, sources: Mapping[str, ModalitySource],
                   landmark_names: Sequence[str] = DEFAULT_LANDMARK_NAMES, split: str = "Tr",
                   file_ending: str = ".nii.gz", overwrite: bool = False,
                   case_pattern: Optional[str] = None, *, skip_incomplete: bool = False,
                   description: str = "", progress: bool = True,
                   landmark_map: Optional[Mapping[str, str]] = None) -> ImportReport:
    """Import `sources` (modality -> ModalitySource) as split `split` of DatasetNNN_name in $LMKREG_raw.

    Images become ``images{split}/CASE_MOD{file_ending}`` (SimpleITK, geometry unchanged),
    landmarks ``landmarks{split}/CASE_MOD.json`` (lmkreg JSON, LPS mm, exactly
    `landmark_names`), masks ``masks{split}/CASE_MOD{file_ending}`` (uint8 0/1).  dataset.json is
    created or updated (modalities added, case counts recounted).  Raises InputError /
    ConfigurationError, before writing any case, for the problems listed in the module
    docstring; returns an ImportReport (cases that failed to read are in ``report.failed``).
    """
    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {SPLITS}, got {split!r}")
    names = [str(n) for n in landmark_names]
    if not names or len(set(names)) != len(names):
        raise ConfigurationError(f"landmark names {names} must be a non-empty list of unique names")
    _check_sources(sources)
    if case_pattern is not None:
        try:
            re.compile(case_pattern)
        except re.error as exc:
            raise ConfigurationError(f"--case-regex {case_pattern!r} is not a valid regular expression ({exc})") \
                from None
    folder, spec = _resolve_dataset(dataset_id, name, list(sources), names, file_ending, description)
    report = ImportReport(folder=folder, split=split)
    plans, problems = _plan(sources, case_pattern, report, spec.modalities)
    if not plans and not problems:
        raise InputError(None, "no images found (image files or DICOM series): " + "; ".join(
            f"{m}: {s.images} ({describe_folder(s.images)})" for m, s in sources.items()))
    complete: list[_CasePlan] = []
    incomplete: dict[str, str] = {}
    for case in sorted(plans):
        lacks = _incomplete(plans[case], sources)
        if lacks:
            incomplete[case] = "; ".join(lacks)
        else:
            complete.append(plans[case])
    if incomplete and not skip_incomplete:
        problems += [f"case {c!r} is incomplete: {why}" for c, why in sorted(incomplete.items())]
    if problems:
        hint = "" if not incomplete or skip_incomplete else \
            "\n(--skip-incomplete imports the complete cases and lists the others)"
        raise InputError(None, f"import refused, nothing written; {len(problems)} problem(s):\n  "
                               + "\n  ".join(problems) + hint)
    report.skipped = incomplete
    if not complete:
        raise InputError(None, "no complete case to import")
    _check_targets(_path_only_dataset(folder, spec), complete, list(sources), split, overwrite)
    ds = Dataset.create(folder, spec)  # first write: dataset.json (same name, so an update is allowed)
    report.folder = ds.folder
    bar = tqdm(complete, desc=f"import {ds.name}", unit="case", disable=None if progress else True, leave=False)
    for plan in bar:
        try:
            content = _read_case(plan, sources, names, report.warnings,
                                 {k.lower(): v for k, v in (landmark_map or {}).items()})
        except LmkregError as exc:
            report.failed[plan.case] = str(exc)
            continue
        for modality, (image, mask, landmarks) in content.items():
            write_image(image, ds.image_path(plan.case, modality, split))
            mask_target = ds.mask_path(plan.case, modality, split)
            if mask is not None:
                write_image(mask, mask_target)
            elif mask_target.exists():  # only reachable with overwrite: do not leave the old case's mask
                mask_target.unlink()
            write_lmkreg_json(landmarks, ds.landmarks_path(plan.case, modality, split))
        report.imported.append(plan.case)
    ds.spec.num_training, ds.spec.num_test = len(ds.cases("Tr")), len(ds.cases("Ts"))
    ds.save_spec()
    return report


def _check_targets(ds: Dataset, plans: Sequence[_CasePlan], modalities: Sequence[str], split: str,
                   overwrite: bool) -> None:
    """Refuse existing case files (unless overwrite) and cases already in the other split."""
    other = "Ts" if split == "Tr" else "Tr"
    existing_other = {c.lower(): c for c in ds.cases(other)}
    existing_same = {c.lower(): c for c in ds.cases(split)}
    clash = [f"{p.case} (already a {other} case as {existing_other[p.case.lower()]!r})"
             for p in plans if p.case.lower() in existing_other]
    clash += [f"{p.case} (the dataset has {existing_same[p.case.lower()]!r})" for p in plans
              if p.case.lower() in existing_same and existing_same[p.case.lower()] != p.case]
    if clash:
        raise InputError(ds.folder, f"case(s) {', '.join(clash)} would clash with existing cases; a case may be in "
                                    f"one split only, spelled one way")
    if overwrite:
        return
    existing = [f for p in plans for f in _target_files(ds, p.case, modalities, split) if f.exists()]
    if existing:
        raise InputError(existing[0], f"exists ({len(existing)} case file(s) of this import already exist in "
                                      f"{ds.folder}); use --overwrite (overwrite=True) to replace them")


__all__ = ["ModalitySource", "ImportReport", "import_dataset", "case_name", "case_name_from_stem",
           "strip_format_suffix", "STRIP_TOKENS"]
