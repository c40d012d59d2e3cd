"""``lmkreg_import`` (your data -> dataset layout) and ``lmkreg_verify_dataset`` (check it).

See documentation/datasets.md for the layout, the formats and the case-name rule.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from lmkreg.cli_utils import add_progress_option, add_strict_option, dataset_number, friendly_errors, make_parser
from lmkreg.dataset.importer import ModalitySource, import_dataset
from lmkreg.dataset.layout import open_dataset
from lmkreg.dataset.verify import verify_dataset
from lmkreg.errors import ConfigurationError
from lmkreg.io.landmark_names import parse_landmark_map
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES


def _modality_paths(values: Optional[Sequence[str]], option: str) -> dict[str, Path]:
    """['MR=/data/mr', ...] -> {'MR': Path('/data/mr')}; each modality at most once."""
    out: dict[str, Path] = {}
    for value in values or []:
        modality, sep, folder = value.partition("=")
        modality = modality.strip()
        if not sep or not modality or not folder.strip():
            raise ConfigurationError(f"{option} {value!r}: expected MODALITY=FOLDER, e.g. {option} MR=/data/mr")
        if modality in out:
            raise ConfigurationError(f"{option} given twice for modality {modality}")
        out[modality] = Path(folder.strip()).expanduser()
    return out


def build_import_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "lmkreg_import", raw=False,
        description="Import images, landmarks (Slicer .mrk.json / .fcsv, lmkreg .json, or label maps) and optional "
                    "prostate masks into $LMKREG_raw/DatasetNNN_NAME (images converted with SimpleITK, geometry "
                    "kept; landmarks written as lmkreg JSON in LPS mm). Files are matched across folders by case "
                    "name: the file name without its suffix and without trailing tokens such as _MR, _US, _T2, "
                    "_image, _label, _mask, _landmarks (see documentation/datasets.md), or --case-regex. An image "
                    "folder may hold DICOM series: a subfolder with one series is one case named after the "
                    "subfolder (a folder that is itself one series: named after the folder). One folder may hold "
                    "both modalities: NAME_MR and NAME_US files go to their modality.",
        epilog="Example: lmkreg_import -d 5 --name MyData --images MR=/data/mr --images US=/data/us "
               "--landmarks MR=/data/mr_lmk --landmark-labelmaps US=/data/us_labels --masks MR=/data/mr_masks "
               "--landmark-map Apex=apex BN=bladder_neck PM=posterior_median")
    parser.add_argument("-d", "--dataset", type=dataset_number, required=True,
                        help="dataset number (1-999) or name (DatasetNNN_Name)")
    parser.add_argument("--name", required=True, help="dataset name after DatasetNNN_ (letters, digits, _ and -)")
    parser.add_argument("--images", action="append", required=True, metavar="MOD=FOLDER",
                        help="image folder of a modality (repeat per modality)")
    parser.add_argument("--landmarks", action="append", metavar="MOD=FOLDER",
                        help="landmark files of a modality: .mrk.json, .fcsv or lmkreg .json")
    parser.add_argument("--landmark-labelmaps", action="append", metavar="MOD=FOLDER",
                        help="landmark label maps of a modality: a 3D label map with one label per landmark, or a "
                             "4D / multi-component image with one channel per landmark; landmark = centroid")
    parser.add_argument("--labelmap-labels", type=int, nargs="+", metavar="N",
                        help="label value (3D) or channel index (4D) of each landmark, in the order of "
                             "--landmark-names (default 1..N for 3D label maps, channels 0..N-1 for 4D)")
    parser.add_argument("--masks", action="append", metavar="MOD=FOLDER", help="prostate mask folder of a modality")
    parser.add_argument("--landmark-names", nargs="+", default=list(DEFAULT_LANDMARK_NAMES), metavar="NAME",
                        help=f"landmark names, matched by name in the files (default {' '.join(DEFAULT_LANDMARK_NAMES)})")
    parser.add_argument("--landmark-map", nargs="+", default=None, metavar="FILE_NAME=DATASET_NAME",
                        help="rename landmark labels of the files to dataset landmark names, e.g. Apex=apex "
                             "BN=bladder_neck PM=posterior_median (compared ignoring upper/lower case); other "
                             "labels are ignored and listed")
    parser.add_argument("--series", action="append", default=None, metavar="[MOD=]SERIES",
                        help="DICOM folders holding several series: import the series with this SeriesInstanceUID "
                             "or description (MOD= limits it to one modality; repeat per modality)")
    parser.add_argument("--split", choices=["Tr", "Ts"], default="Tr", help="training (Tr, default) or test (Ts)")
    parser.add_argument("--file-ending", default=".nii.gz", help="image format in the dataset (default .nii.gz)")
    parser.add_argument("--case-regex", default=None, metavar="REGEX",
                        help="derive case names with this regular expression instead (searched in the file name "
                             "without suffix; the case is group 'case', else group 1, else the whole match)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing case files")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="import the complete cases and list the incomplete ones (default: refuse)")
    parser.add_argument("--description", default="", help="free text for dataset.json")
    add_progress_option(parser)
    return parser


@friendly_errors
def import_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of lmkreg_import: 0 = all imported, 1 = some cases failed, 2 = refused."""
    args = build_import_parser().parse_args(argv)

    images = _modality_paths(args.images, "--images")
    optional = {opt: _modality_paths(getattr(args, opt.lstrip("-").replace("-", "_")), opt)
                for opt in ("--landmarks", "--landmark-labelmaps", "--masks")}
    for opt, given in optional.items():
        unknown = sorted(set(given) - set(images))
        if unknown:
            raise ConfigurationError(f"{opt} for modality {unknown[0]} but no --images {unknown[0]}=FOLDER")
    series = _series_choice(args.series, list(images))
    sources = {m: ModalitySource(images=folder, landmarks=optional["--landmarks"].get(m),
                                 masks=optional["--masks"].get(m),
                                 landmark_labelmaps=optional["--landmark-labelmaps"].get(m),
                                 labelmap_labels=args.labelmap_labels, series=series.get(m))
               for m, folder in images.items()}
    report = import_dataset(args.dataset, args.name, sources, args.landmark_names, split=args.split,
                            file_ending=args.file_ending, overwrite=args.overwrite, case_pattern=args.case_regex,
                            skip_incomplete=args.skip_incomplete, description=args.description,
                            progress=not args.no_progress,
                            landmark_map=parse_landmark_map(args.landmark_map))
    print(report.format())
    print(f"next: lmkreg_verify_dataset -d {args.dataset}")
    return 0 if report.ok else 1


def _series_choice(values: Optional[Sequence[str]], modalities: Sequence[str]) -> dict[str, str]:
    """['t2 tse', 'US=1.2.3'] -> {'MR': 't2 tse', 'US': '1.2.3'} (a value without MOD= applies to all)."""
    out: dict[str, str] = {}
    for value in values or []:
        modality, sep, rest = value.partition("=")
        if sep and modality.strip() in modalities:
            out[modality.strip()] = rest.strip()
        else:
            out.update({m: value.strip() for m in modalities if m not in out})
    return out


def build_verify_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "lmkreg_verify_dataset", raw=False,
        description="Check every case of a dataset in $LMKREG_raw (images, masks, landmarks, transforms, case ids, "
                    "stray files) and print one report. Exit status 0 = no errors, 1 = errors found "
                    "(with --strict also warnings), 2 = the dataset could not be opened.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset number or full name (DatasetNNN_Name)")
    add_strict_option(parser, "treat warnings as errors (exit 1)")
    add_progress_option(parser)
    return parser


@friendly_errors
def verify_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of lmkreg_verify_dataset."""
    args = build_verify_parser().parse_args(argv)

    report = verify_dataset(open_dataset(args.dataset), progress=not args.no_progress)
    print(report.format())
    sys.stdout.flush()
    failed = not report.ok or (args.strict and bool(report.warnings))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(verify_main())
