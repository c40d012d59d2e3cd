"""``lmkreg_predict -i IN -o OUT -d ID -m MR|US``: landmarks for every image of a folder.

IN may be an image file, a folder of images, a folder holding one DICOM series, or a folder
whose subfolders each hold one DICOM series (the case is named after the folder).

Writes per image ``NAME.mrk.json`` (3D Slicer markups, LPS) and ``NAME.json`` (lmkreg JSON with
per-landmark confidence and a reliability flag); a model with a segmentation head (``*_Seg``
trainers) also writes the prostate mask ``NAME_prostate.nii.gz`` on the input image's grid, named
with its volume in the JSON's ``prostate`` entry.  Models are loaded once; the next image is
read and preprocessed in a background thread while the current one runs through the networks.
Existing outputs are skipped unless ``--overwrite``; a same-named file lmkreg did not write
(e.g. a dcm2niix ``NAME.json`` sidecar) stops the run before any work unless ``--overwrite``; ``--num-parts/--part-id`` shard a large
folder over machines.  A case that fails is reported by file name and the run goes on; the
exit status is 1 if any case failed.  Cases flagged unreliable are written and marked
(``reliable: false``, ``flags``, per-landmark ``trust``), listed at the end, and give exit status
3 only with --strict.  Mirror test-time augmentation is on by default: the calibrated error
radius is computed from it (--no-tta turns it off, and the radii become unavailable).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm import tqdm

from lmkreg.cli_utils import (add_device_option, add_progress_option, add_strict_option, check_unique, choose_trainer,
                              error_line, fold_value, friendly_errors, make_parser, positive_float, positive_int)
from lmkreg.dataset.layout import check_dataset_modality, find_dataset
from lmkreg.errors import ConfigurationError, InputError, LmkregError
from lmkreg.geometry import ImageGeometry
from lmkreg.inference.cascade import build_predictor
from lmkreg.inference.interface import Predictor, finish_prediction
from lmkreg.inference.prediction import Prediction
from lmkreg.inference.predictor import LandmarkPredictor
from lmkreg.inference.reuse import for_input, model_provenance, predictor_modality, recorded_flags, reuse_decision
from lmkreg.inference.segmentation import mask_path_for, prostate_record, write_mask
from lmkreg.io.atomic import atomic_path, remove_stale_temporaries, split_suffix
from lmkreg.io.inputs import InputImage, find_input_images, split_by_modality
from lmkreg.io.landmark_files import write_landmarks
from lmkreg.io.landmarks import write_lmkreg_json
from lmkreg.io.ownership import check_replaceable
from lmkreg.io.provenance import Provenance, add_provenance
from lmkreg.paths import results_root
from lmkreg.threads import configure_threads
from lmkreg.trust.summary import STRICT_HELP, exit_status, print_unreliable


@dataclass
class FolderReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreliable: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)     # not this modality (name or DICOM tag): why
    repredicted: dict[str, str] = field(default_factory=dict)  # outputs existed but from another input/model


def output_paths(image: Union[Path, InputImage], out_dir: Path) -> tuple[Path, Path]:
    stem = image.stem if isinstance(image, InputImage) else split_suffix(image)[0]
    return out_dir / f"{stem}.json", out_dir / f"{stem}.mrk.json"


def check_writable(folder: Path) -> None:
    """Fail before any work if the output folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lmkreg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigurationError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


def list_images(folder: Path, num_parts: int = 1, part_id: int = 0, series: Optional[str] = None
                ) -> list[InputImage]:
    """The images of `folder` (image files, DICOM series folders; see lmkreg.io.inputs), this part's share."""
    if not 0 <= part_id < num_parts:
        raise ConfigurationError(f"--part-id must be in 0..{num_parts - 1}, got {part_id}")
    images = find_input_images(folder, series)
    first: dict[str, InputImage] = {}
    for image in images:  # a.nii.gz and a.nrrd would both be written as a.json: refuse before any work
        other = first.setdefault(image.stem, image)
        if other != image:
            stem = image.stem
            raise InputError(image.path, f"same name as {other.label} apart from the file ending, so both would be "
                                         f"written as {stem}.json and {stem}.mrk.json; rename or move one of them")
    return images[part_id::num_parts]


def case_paths(image: Union[Path, InputImage], out_dir: Path, predictor: Predictor) -> tuple[Path, ...]:
    """Every output of a case: ``output_paths`` and, for a model with a segmentation head, the
    ``NAME_prostate.nii.gz`` mask (lmkreg.inference.segmentation)."""
    paths = output_paths(image, out_dir)
    return paths + ((mask_path_for(paths[0]),) if predictor.has_segmentation else ())


def write_case_outputs(pred: Prediction, json_path: Path, mrk_path: Path, mask_path: Optional[Path] = None,
                       provenance: Optional[Provenance] = None) -> None:
    """Write a case's ``NAME.mrk.json`` and ``NAME.json`` (and with `mask_path` and a predicted
    mask, ``NAME_prostate.nii.gz``, named in the JSON's ``prostate`` entry) so that they always
    belong together.

    Both are first written completely to temporaries: a failure there (disk full) leaves any
    previous pair untouched.  Then the old ``NAME.json`` is removed, the ``.mrk.json`` moved into
    place and the ``NAME.json`` last, since it marks the case complete.  A run killed between
    those steps leaves the case without ``NAME.json``, so the next run predicts it again instead
    of skipping a new ``.mrk.json`` next to an old ``.json`` (after ``--overwrite``)."""

    mask = pred.mask if mask_path is not None else None
    with atomic_path(json_path) as tmp_json, contextlib.ExitStack() as stack:
        tmp_mask = stack.enter_context(atomic_path(mask_path)) if mask is not None else None
        with atomic_path(mrk_path) as tmp_mrk:
            write_landmarks(pred.landmarks, tmp_mrk)
            add_descriptions(tmp_mrk, pred)
            write_lmkreg_json(pred.with_extras(), tmp_json)
            if tmp_mask is not None:
                write_mask(mask, tmp_mask)
                doc = json.loads(tmp_json.read_text(encoding="utf-8"))
                doc["prostate"] = prostate_record(json_path, pred.volume_ml)
                tmp_json.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            if provenance is not None:  # where it came from (lmkreg.io.provenance)
                add_provenance(tmp_json, provenance)
                add_provenance(tmp_mrk, provenance)
            json_path.unlink(missing_ok=True)


def add_descriptions(mrk_path: Path, pred: Prediction) -> None:
    """Put each landmark's error radius (and UNRELIABLE) into its control point description of
    a just written ``.mrk.json``, where 3D Slicer's markups table shows it."""
    doc = json.loads(mrk_path.read_text(encoding="utf-8"))
    for cp in doc["markups"][0]["controlPoints"]:
        cp["description"] = pred.describe(cp["label"])
    mrk_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def predict_folder(predictor: Predictor, input_folder: Path, output_folder: Path, overwrite: bool = False,
                   num_parts: int = 1, part_id: int = 0, progress_bar: bool = True,
                   series: Optional[str] = None) -> FolderReport:
    check_writable(output_folder)
    stale = remove_stale_temporaries(output_folder)
    if stale:
        tqdm.write(f"removed {len(stale)} temporary file(s) left by an interrupted run", file=sys.stderr)
    report = FolderReport()
    todo = []
    images = list_images(input_folder, num_parts, part_id, series)
    images, report.excluded = split_by_modality(images, predictor_modality(predictor))  # never US files as MR
    model_record = model_provenance(predictor)
    # never replace a file lmkreg did not write (a dcm2niix NAME.json sidecar): refuse before any work
    check_replaceable([p for image in images for p in case_paths(image, output_folder, predictor)], overwrite)
    for image in images:
        if not overwrite and all(p.is_file() for p in case_paths(image, output_folder, predictor)):
            json_path = output_paths(image, output_folder)[0]
            try:  # reuse only an output of this very input and model (issue 25)
                reuse, why = reuse_decision(json_path, for_input(model_record, image, image.read()))
            except (LmkregError, RuntimeError, OSError) as exc:
                reuse, why = False, str(exc)
            if reuse:
                report.skipped.append(image.label)
                if recorded_flags(json_path):
                    report.unreliable[image.label] = recorded_flags(json_path)
                continue
            report.repredicted[image.label] = why
        todo.append(image)

    def load(image: InputImage):
        img = image.read()
        return (*predictor.preprocess(img), ImageGeometry.from_image(img), img, for_input(model_record, image, img))

    with ThreadPoolExecutor(max_workers=1) as pool:
        future: Optional[Future] = pool.submit(load, todo[0]) if todo else None
        for i, image in enumerate(tqdm(todo, desc=f"predict {predictor.modality}", unit="image", disable=not progress_bar)):
            current = future
            future = pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            try:
                array, grid, image_geometry, source, provenance = current.result()
                # image checks (outside the image or its signal, image extent) and the mask on the input grid
                pred = finish_prediction(predictor, predictor.predict_array(array, grid, image=source), image_geometry, source)
                json_path, mrk_path = output_paths(image, output_folder)
                write_case_outputs(pred, json_path, mrk_path,
                                   mask_path_for(json_path) if predictor.has_segmentation else None, provenance)
                report.done.append(image.label)
                if pred.flags:
                    report.unreliable[image.label] = pred.flags
            except (LmkregError, ValueError, RuntimeError, OSError) as exc:
                report.failed[image.label] = error_line(image.path, exc)
                tqdm.write(f"error: {error_line(image.path, exc)}", file=sys.stderr)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("lmkreg_predict", __doc__)
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="an image file, a folder of images (NIfTI, NRRD, MHA), a folder holding one DICOM series, "
                        "or a folder whose subfolders each hold one DICOM series (one case each)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for landmark files")
    p.add_argument("-d", "--dataset", required=True, help="dataset the models were trained on (id or name)")
    p.add_argument("-m", "--modality", required=True, help="modality, e.g. MR or US")
    p.add_argument("-c", "--configuration", default=None,
                   help="cascade, or one configuration such as MR or MR_localizer (default: the cascade when both "
                        "of its stages are trained, else the single stage)")
    p.add_argument("-tr", "--trainer", default=None,
                   help="trainer of the model (default: the only trainer with a model for this modality, a single "
                        "stage or a localizer + refine cascade; with several, the error lists them)")
    p.add_argument("-f", "--folds", nargs="+", type=fold_value, default=None,
                   help="folds to ensemble (default: all trained)")
    p.add_argument("-chk", "--checkpoint", default="final", choices=["final", "best", "latest"],
                   help="which checkpoint of each fold to use (default final)")
    p.add_argument("--series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="DICOM folders holding several series: read the one with this SeriesInstanceUID or "
                        "series description")
    p.add_argument("--tta", dest="tta", action="store_true", default=True,
                   help="add left-right mirrored predictions (the default; the error radius is calibrated with them)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="no mirrored predictions: half the time, but no calibrated error radius")
    p.add_argument("--max-radius", type=positive_float, default=5.0, metavar="MM",
                   help="flag a landmark whose calibrated error radius is larger than this many mm (default 5)")
    add_strict_option(p, STRICT_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="predict again cases whose outputs exist, and replace same-named files lmkreg did not write")
    p.add_argument("--num-parts", type=positive_int, default=1, help="split the folder into this many parts")
    p.add_argument("--part-id", type=int, default=0, help="which part this process predicts")
    add_device_option(p, "where the networks run (default: cuda if available)")
    p.add_argument("--no-optimize", action="store_true",
                   help="on CPU, run the networks in eager mode instead of as optimised TorchScript modules")
    p.add_argument("--trainer-module", action="append", default=[], help="module (file.py or dotted) with a custom trainer")
    add_progress_option(p)
    return p


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_unique(parser, "-f/--folds", args.folds)
    configure_threads()  # noqa: E702  (threads from the free cores)
    dataset_name = find_dataset(args.dataset).name
    results = results_root() / dataset_name
    check_dataset_modality(args.dataset, args.modality)  # -m mr lists the modalities (dataset/layout.py)
    trainer = args.trainer or choose_trainer(results, args.modality, None, args.configuration)
    list_images(args.input, args.num_parts, args.part_id, args.series)  # bad input fails before models load
    predictor = build_predictor(results, trainer, args.modality, args.configuration,
                                folds=args.folds, checkpoint=args.checkpoint, device=args.device, mirror_tta=args.tta,
                                trainer_modules=args.trainer_module, optimize=not args.no_optimize,
                                max_radius_mm=args.max_radius, predictor_class=LandmarkPredictor)
    report = predict_folder(predictor, args.input, args.output, args.overwrite, args.num_parts, args.part_id,
                            progress_bar=not args.no_progress, series=args.series)
    print(f"{len(report.done)} predicted, {len(report.skipped)} skipped (outputs exist), {len(report.failed)} failed; "
          f"{len(report.unreliable)} flagged unreliable")
    print_bookkeeping(report, args.modality)
    for note in predictor.trust_notes():
        print(f"  note: {note}")
    print_unreliable(report.unreliable, len(report.done) + len(report.skipped))
    for name, msg in report.failed.items():
        print(f"  failed: {msg}", file=sys.stderr)  # msg names the file
    return exit_status(len(report.failed), len(report.unreliable), args.strict)


def print_bookkeeping(report: FolderReport, modality: str) -> None:
    """Say which inputs were left out as another modality and which existing outputs were not reused."""
    if report.excluded:
        print(f"skipped {len(report.excluded)} input(s) that are not {modality}: "
              + "; ".join(f"{k} ({why})" for k, why in report.excluded.items()))
    for label, why in report.repredicted.items():
        print(f"  {label}: predicted again: the existing outputs do not match this input and model ({why})")


if __name__ == "__main__":
    sys.exit(main())
