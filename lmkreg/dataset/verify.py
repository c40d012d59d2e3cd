"""Check a dataset folder before planning or training: every case, both splits, one report.

Errors (``VerifyReport.ok`` is False, ``lmkreg_verify_dataset`` exits 1):

* an image that is missing, unreadable, truncated, not 3D, has NaN/inf voxels or is constant;
* a mask that is unreadable, on another voxel grid than its image, or not binary;
* a landmark file that is missing or unreadable, lacks a dataset landmark name (write
  ``null`` for a landmark that is genuinely missing), or has a landmark outside its image;
* an unreadable transform file;
* unsafe case ids, case ids that differ only by upper/lower case, a case in both splits,
  a case file with the wrong file ending or format (``.nii`` in a ``.nii.gz`` dataset, a
  ``.mrk.json`` in ``landmarksTr``), which lmkreg would not see;
* a dataset with no case at all.

Warnings: landmark names the dataset does not know, masks with values {0, k} (k != 1) or
no foreground, a case without a mask when other cases have one, stray files or folders that
do not fit the naming scheme, leftover temporary files, and case counts in dataset.json that
differ from the folders.  Info: landmarks explicitly marked missing (``null``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from lmkreg.dataset.layout import CASE_ID_RE, SPLITS, Dataset, open_dataset
from lmkreg.errors import FileError, LmkregError
from lmkreg.geometry.spaces import ImageGeometry
from lmkreg.io.images import IMAGE_SUFFIXES, read_image
from lmkreg.io.landmark_files import LANDMARK_SUFFIXES, read_landmarks
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json
from lmkreg.io.transform_json import read_rigid_transform

PathLike = Union[str, Path]
ERROR, WARNING, INFO = "error", "warning", "info"
_LAYOUT_KINDS = ("images", "masks", "landmarks", "transforms")
KNOWN_FOLDERS = tuple(f"{k}{s}" for s in SPLITS for k in _LAYOUT_KINDS)


@dataclass(frozen=True)
class Problem:
    """One finding: severity ('error', 'warning', 'info'), case id (or None), file (or None)."""

    severity: str
    case: Optional[str]
    file: Optional[Path]
    problem: str
    split: Optional[str] = None

    def format(self) -> str:
        where = f"{self.split or '':2s} {self.case or '-':<20s}"
        target = f"{self.file}: " if self.file is not None else ""
        return f"{self.severity.upper():8s}{where} {target}{self.problem}"


@dataclass
class CaseSummary:
    """What was found for one case: per modality a short status, plus the transform."""

    split: str
    case: str
    modalities: dict[str, str] = field(default_factory=dict)
    transform: bool = False


@dataclass
class VerifyReport:
    """All findings for one dataset; ``ok`` when there is no error."""

    dataset: str
    folder: Path
    modalities: list[str]
    landmarks: list[str]
    problems: list[Problem] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)

    def add(self, severity: str, case: Optional[str], file: Optional[PathLike], problem: str,
            split: Optional[str] = None) -> None:
        self.problems.append(Problem(severity, case, None if file is None else Path(file), problem, split))

    def of(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        return self.of(ERROR)

    @property
    def warnings(self) -> list[Problem]:
        return self.of(WARNING)

    @property
    def infos(self) -> list[Problem]:
        return self.of(INFO)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """The whole report as text: summary, one line per case, every problem with its file."""
        n_tr = sum(c.split == "Tr" for c in self.cases)
        n_ts = sum(c.split == "Ts" for c in self.cases)
        lines = [f"dataset {self.dataset} ({self.folder})",
                 f"modalities {', '.join(self.modalities)}; landmarks {', '.join(self.landmarks)}",
                 f"cases: {n_tr} training (Tr), {n_ts} test (Ts)", ""]
        if self.cases:
            width = max(8, *(len(c.case) for c in self.cases))
            header = f"{'split':5s} {'case':<{width}s} " + " ".join(f"{m:<24s}" for m in self.modalities) \
                + f" {'transform':9s} {'errors':>6s} {'warnings':>8s} {'info':>4s}"
            lines.append(header)
            for c in self.cases:
                mine = [p for p in self.problems if p.case == c.case and p.split == c.split]
                counts = [sum(p.severity == s for p in mine) for s in (ERROR, WARNING, INFO)]
                lines.append(f"{c.split:5s} {c.case:<{width}s} "
                             + " ".join(f"{c.modalities.get(m, '-'):<24s}" for m in self.modalities)
                             + f" {'yes' if c.transform else '-':9s} {counts[0]:>6d} {counts[1]:>8d} {counts[2]:>4d}")
            lines.append("")
        if self.problems:
            order = {ERROR: 0, WARNING: 1, INFO: 2}
            lines.append(f"problems ({len(self.errors)} error(s), {len(self.warnings)} warning(s), "
                         f"{len(self.infos)} info):")
            ordered = sorted(self.problems, key=lambda p: (order[p.severity], p.split or "", p.case or ""))
            lines += ["  " + p.format() for p in ordered]
            lines.append("")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s), "
                     f"{len(self.infos)} info in {len(self.cases)} case(s)")
        return "\n".join(lines)


# ---- file names -----------------------------------------------------------------------------------

def _split_modality(stem: str, modalities: list[str]) -> Optional[tuple[str, str]]:
    """'case1_MR' -> ('case1', 'MR') for a known modality (longest modality name first)."""
    for m in sorted(modalities, key=len, reverse=True):
        if stem.endswith("_" + m) and len(stem) > len(m) + 1:
            return stem[: -len(m) - 1], m
    return None


def _strip_any(name: str, suffixes) -> Optional[tuple[str, str]]:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)], s
    return None


@dataclass
class _Scan:
    """Case files of one split, keyed by (case, modality) or case (transforms)."""

    images: dict[tuple[str, str], Path] = field(default_factory=dict)
    masks: dict[tuple[str, str], Path] = field(default_factory=dict)
    landmarks: dict[tuple[str, str], Path] = field(default_factory=dict)
    transforms: dict[str, Path] = field(default_factory=dict)
    cases: set[str] = field(default_factory=set)
    files_by_case: dict[str, list[Path]] = field(default_factory=dict)


def _scan_split(ds: Dataset, split: str, report: VerifyReport) -> _Scan:
    scan = _Scan()
    mods, ending = list(ds.spec.modalities), ds.spec.file_ending
    image_suffixes = sorted(set(IMAGE_SUFFIXES) | {ending.lower()}, key=len, reverse=True)

    def note(case: str, f: Path) -> None:
        scan.cases.add(case)
        scan.files_by_case.setdefault(case, []).append(f)

    for kind in _LAYOUT_KINDS:
        folder = ds.folder / f"{kind}{split}"
        if not folder.is_dir():
            continue
        target = {"images": scan.images, "masks": scan.masks, "landmarks": scan.landmarks}.get(kind)
        for f in sorted(folder.iterdir()):
            if f.is_dir():
                report.add(WARNING, None, f, "a folder inside the layout; ignored", split)
                continue
            if f.name.startswith("."):
                what = "a leftover temporary file (an interrupted write?)" if ".tmp" in f.name else "a hidden file"
                report.add(WARNING, None, f, f"{what}; ignored", split)
                continue
            if kind == "transforms":
                stem = f.name[:-5] if f.name.endswith(".json") else None
                if stem is None:
                    report.add(WARNING, None, f, "not a transform file (expected CASE.json); ignored", split)
                    continue
                scan.transforms[stem] = f
                note(stem, f)
                continue
            good_ending = ending if kind != "landmarks" else ".json"
            if kind == "landmarks" and f.name.lower().endswith((".mrk.json", ".fcsv")):
                parsed_any = _strip_any(f.name, LANDMARK_SUFFIXES)
                cm = _split_modality(parsed_any[0], mods) if parsed_any else None
                if cm is not None:
                    report.add(ERROR, cm[0], f, f"landmarks in a dataset must be lmkreg JSON "
                                                f"({cm[0]}_{cm[1]}.json); lmkreg_import converts Slicer files",
                               split)
                    note(cm[0], f)
                else:
                    report.add(WARNING, None, f, _stray_message(kind, mods, good_ending), split)
                continue
            if f.name.endswith(good_ending):
                cm = _split_modality(f.name[: -len(good_ending)], mods)
                if cm is not None:
                    target[cm] = f
                    note(cm[0], f)
                    continue
            other = _strip_any(f.name, image_suffixes) if kind != "landmarks" else None
            cm = _split_modality(other[0], mods) if other else None
            if cm is not None:  # a case file with another ending: invisible to lmkreg, maybe a duplicate
                proper = folder / f"{cm[0]}_{cm[1]}{ending}"
                what = f"a second {cm[1]} file of case {cm[0]!r} ({proper.name} is the one lmkreg reads); remove " \
                    f"one" if proper.exists() else "lmkreg does not see this file; convert it or fix file_ending"
                report.add(ERROR, cm[0], f, f"file ending {other[1]!r} but dataset.json says {ending!r}: {what}",
                           split)
                note(cm[0], f)
                continue
            report.add(WARNING, None, f, _stray_message(kind, mods, good_ending), split)
    return scan


def _stray_message(kind: str, mods: list[str], ending: str) -> str:
    pattern = "CASE.json" if kind == "transforms" else f"CASE_{{{','.join(mods)}}}{ending}"
    return f"does not match the naming scheme {kind}/{pattern}; ignored"


def _check_case_ids(scans: dict[str, _Scan], report: VerifyReport) -> dict[str, set[str]]:
    """Unsafe ids, ids differing only by case, a case in both splits; returns the checkable cases.

    An unsafe id is reported for each of its files; a clash once per case and split, naming the
    case's first image (or first file).  Safe cases stay checkable even when their id clashes,
    so their content is still verified.
    """
    checkable: dict[str, set[str]] = {split: set() for split in scans}
    groups: dict[str, list[tuple[str, str]]] = {}
    for split, scan in scans.items():
        for case in sorted(scan.cases):
            if not CASE_ID_RE.match(case) or ".." in case:
                for f in scan.files_by_case[case]:
                    report.add(ERROR, case, f, f"unsafe case id {case!r}: use letters, digits, '_', '-', '.' only "
                                               f"(starting with a letter or digit)", split)
                continue
            checkable[split].add(case)
            groups.setdefault(case.lower(), []).append((split, case))
    for members in groups.values():
        if len(members) < 2:
            continue
        spellings = sorted({case for _, case in members})
        for split, case in members:
            files = scans[split].files_by_case[case]
            shown = _representative(files)
            more = f" (and {len(files) - 1} other file(s) of this case)" if len(files) > 1 else ""
            if len(spellings) > 1:
                report.add(ERROR, case, shown, f"duplicate case id: {' and '.join(repr(c) for c in spellings)} differ "
                                               f"only by upper/lower case (the same files on macOS and Windows)"
                                               f"{more}", split)
            if sum(c == case for _, c in members) > 1:
                report.add(ERROR, case, shown, f"case {case!r} is in both splits (Tr and Ts): a test case must not "
                                               f"be trained on{more}", split)
    return checkable


def _representative(files: list[Path]) -> Path:
    """The file that best names a case: its first image, else its first file."""
    images = [f for f in files if f.parent.name.startswith("images")]
    return sorted(images or files)[0]


# ---- per-case checks ------------------------------------------------------------------------------

def _report_file_error(report: VerifyReport, case: str, split: str, exc: LmkregError, fallback: Path) -> None:
    if isinstance(exc, FileError):
        report.add(ERROR, case, exc.path or fallback, exc.problem, split)
    else:
        report.add(ERROR, case, fallback, str(exc), split)


def _check_mask(report: VerifyReport, case: str, split: str, path: Path, image_geom: Optional[ImageGeometry],
                image_path: Optional[Path]) -> bool:
    try:
        mask = read_image(path, is_mask=True)
    except LmkregError as exc:
        _report_file_error(report, case, split, exc, path)
        return False
    ok = True
    if image_geom is not None and not ImageGeometry.from_image(mask).same_as(image_geom):
        report.add(ERROR, case, path, f"mask grid (size, spacing, origin or direction) differs from its image "
                                      f"{image_path.name}; masks must share the image's voxel grid", split)
        ok = False
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    nonzero = values[values != 0]
    if nonzero.size > 1:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        report.add(ERROR, case, path, f"mask is not binary: {values.size} distinct values ({shown})", split)
        ok = False
    elif nonzero.size == 0:
        report.add(WARNING, case, path, "mask is empty (no prostate voxel)", split)
    elif nonzero[0] != 1:
        report.add(WARNING, case, path, f"mask uses the value {nonzero[0]:g} for the prostate (read as 1)", split)
    return ok


def _check_landmarks(report: VerifyReport, case: str, split: str, path: Path, names: list[str],
                     geom: Optional[ImageGeometry]) -> Optional[LandmarkSet]:
    try:
        read_landmarks(path)  # refuses duplicate names, which a plain JSON reader would silently merge
        lms = read_lmkreg_json(path)  # and the dataset format exactly, as training reads it
    except LmkregError as exc:
        _report_file_error(report, case, split, exc, path)
        return None
    absent = [n for n in names if n not in lms]
    if absent:
        report.add(ERROR, case, path, f"dataset landmark(s) {absent} absent (write null for a landmark that is "
                                      f"missing in this image); the file has {lms.names}", split)
    extra = [n for n in lms.names if n not in names]
    if extra:
        report.add(WARNING, case, path, f"landmark(s) {extra} are not in dataset.json ({names}); they are ignored",
                   split)
    missing = [n for n in names if n in lms and lms[n] is None]
    if missing:
        report.add(INFO, case, path, f"landmark(s) {missing} marked missing (null)", split)
    if geom is not None:
        for n in names:
            p = lms.points.get(n)
            if p is not None and not bool(geom.contains_world(p)):
                idx = geom.world_to_index(p)
                report.add(ERROR, case, path, f"landmark {n!r} at LPS {np.round(p, 2).tolist()} mm lies outside the "
                                              f"image (voxel index z,y,x {np.round(idx, 1).tolist()}, image size "
                                              f"z,y,x {list(geom.shape_zyx)})", split)
    return lms


def _check_case(ds: Dataset, split: str, case: str, scan: _Scan, has_masks: dict[str, bool],
                report: VerifyReport) -> CaseSummary:
    names = list(ds.spec.landmarks)
    summary = CaseSummary(split, case)
    for m in ds.spec.modalities:
        parts = []
        image_path = scan.images.get((case, m))
        geom = None
        if image_path is None:
            expected = ds.folder / f"images{split}" / f"{case}_{m}{ds.spec.file_ending}"
            report.add(ERROR, case, expected, f"no {m} image (file not found)", split)
            parts.append("NO image")
        else:
            try:
                geom = ImageGeometry.from_image(read_image(image_path))
                parts.append("image")
            except LmkregError as exc:
                _report_file_error(report, case, split, exc, image_path)
                parts.append("BAD image")
        mask_path = scan.masks.get((case, m))
        if mask_path is not None:
            ok = _check_mask(report, case, split, mask_path, geom, image_path)
            parts.append("mask" if ok else "BAD mask")
        elif has_masks.get(m):
            expected = ds.folder / f"masks{split}" / f"{case}_{m}{ds.spec.file_ending}"
            report.add(WARNING, case, expected, f"no {m} mask, although other cases have one", split)
        lm_path = scan.landmarks.get((case, m))
        if lm_path is None:
            expected = ds.folder / f"landmarks{split}" / f"{case}_{m}.json"
            report.add(ERROR, case, expected, f"no {m} landmark file (file not found)", split)
            parts.append("NO landmarks")
        else:
            lms = _check_landmarks(report, case, split, lm_path, names, geom)
            if lms is None:
                parts.append("BAD landmarks")
            else:
                defined = sum(lms.points.get(n) is not None for n in names)
                parts.append(f"{defined}/{len(names)} lmk")
        summary.modalities[m] = " ".join(parts)
    t_path = scan.transforms.get(case)
    if t_path is not None:
        try:
            read_rigid_transform(t_path)
            summary.transform = True
        except LmkregError as exc:
            _report_file_error(report, case, split, exc, t_path)
    return summary


def verify_dataset(dataset: Union[Dataset, PathLike, int], *, progress: bool = False) -> VerifyReport:
    """Check every case of both splits of `dataset` (a Dataset, its folder, or its number/name)."""
    if isinstance(dataset, Dataset):
        ds = dataset
    elif isinstance(dataset, Path) or (isinstance(dataset, str) and ("/" in dataset or "\\" in dataset)):
        ds = Dataset(dataset)
    else:
        ds = open_dataset(dataset)
    report = VerifyReport(ds.name, ds.folder, list(ds.spec.modalities), list(ds.spec.landmarks))
    for entry in sorted(ds.folder.iterdir()):
        if entry.is_dir() and entry.name not in KNOWN_FOLDERS:
            report.add(WARNING, None, entry, f"folder is not part of the layout ({', '.join(KNOWN_FOLDERS)}); "
                                             f"ignored")
    scans = {split: _scan_split(ds, split, report) for split in SPLITS}
    checkable = _check_case_ids(scans, report)
    has_masks = {m: any(k[1] == m for scan in scans.values() for k in scan.masks) for m in ds.spec.modalities}
    jobs = [(split, case) for split in SPLITS for case in sorted(checkable[split])]
    bar = tqdm(jobs, desc=f"verify {ds.name}", unit="case", disable=None if progress else True, leave=False)
    for split, case in bar:
        report.cases.append(_check_case(ds, split, case, scans[split], has_masks, report))
    if not jobs:
        report.add(ERROR, None, ds.folder, "the dataset has no case (no file in imagesTr / imagesTs matches "
                                           f"CASE_MODALITY{ds.spec.file_ending})")
    for split, declared, key in (("Tr", ds.spec.num_training, "numTraining"), ("Ts", ds.spec.num_test, "numTest")):
        found = len(checkable[split])
        if declared != found:
            report.add(WARNING, None, ds.folder / "dataset.json", f"{key} is {declared} but {found} {split} case(s) "
                                                                  f"were found", split)
    return report


__all__ = ["verify_dataset", "VerifyReport", "Problem", "CaseSummary", "ERROR", "WARNING", "INFO"]
