"""``lmkreg_predict -i IN -o OUT -d ID -m MR|US``: landmarks for every image of a folder.

Writes per image ``NAME.mrk.json`` (3D Slicer markups, LPS) and ``NAME.json`` (lmkreg JSON with
per-landmark confidence and a reliability flag).  Models are loaded once; the next image is
read and preprocessed in a background thread while the current one runs through the networks.
Existing outputs are skipped unless ``--overwrite``; ``--num-parts/--part-id`` shard a large
folder over machines.  A case that fails is reported by file name and the run goes on; the
exit status is 1 if any case failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from lmkreg.cli_utils import friendly_errors
from lmkreg.dataset.layout import find_dataset
from lmkreg.errors import ConfigurationError, InputError, LmkregError
from lmkreg.io.atomic import atomic_path, remove_stale_temporaries, split_suffix
from lmkreg.io.images import is_image_file, read_image
from lmkreg.io.landmarks import write_lmkreg_json
from lmkreg.paths import results_root
from lmkreg.inference.cascade import build_predictor
from lmkreg.inference.predictor import LandmarkPredictor, Prediction, model_folder_for  # noqa: F401  (tests patch it)


@dataclass
class FolderReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreliable: dict[str, list[str]] = field(default_factory=dict)


def output_paths(image: Path, out_dir: Path) -> tuple[Path, Path]:
    stem, _ = split_suffix(image)
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


def list_images(folder: Path, num_parts: int = 1, part_id: int = 0) -> list[Path]:
    if not folder.is_dir():
        raise ConfigurationError(f"{folder}: input folder not found")
    if not 0 <= part_id < num_parts:
        raise ConfigurationError(f"--part-id must be in 0..{num_parts - 1}, got {part_id}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    first: dict[str, Path] = {}
    for image in images:  # a.nii.gz and a.nrrd would both be written as a.json: refuse before any work
        other = first.setdefault(split_suffix(image)[0], image)
        if other != image:
            stem = split_suffix(image)[0]
            raise InputError(image, f"same name as {other.name} apart from the file ending, so both would be "
                                    f"written as {stem}.json and {stem}.mrk.json; rename or move one of them")
    return images[part_id::num_parts]


def write_case_outputs(pred: Prediction, json_path: Path, mrk_path: Path) -> None:
    """Write a case's ``NAME.mrk.json`` and ``NAME.json`` so that they always belong together.

    Both are first written completely to temporaries: a failure there (disk full) leaves any
    previous pair untouched.  Then the old ``NAME.json`` is removed, the ``.mrk.json`` moved into
    place and the ``NAME.json`` last, since it marks the case complete.  A run killed between
    those steps leaves the case without ``NAME.json``, so the next run predicts it again instead
    of skipping a new ``.mrk.json`` next to an old ``.json`` (after ``--overwrite``)."""
    from lmkreg.io.landmark_files import write_landmarks

    with atomic_path(json_path) as tmp_json:
        with atomic_path(mrk_path) as tmp_mrk:
            write_landmarks(pred.landmarks, tmp_mrk)
            write_lmkreg_json(pred.with_extras(), tmp_json)
            json_path.unlink(missing_ok=True)


def predict_folder(predictor: LandmarkPredictor, input_folder: Path, output_folder: Path, overwrite: bool = False,
                   num_parts: int = 1, part_id: int = 0, progress_bar: bool = True) -> FolderReport:
    check_writable(output_folder)
    stale = remove_stale_temporaries(output_folder)
    if stale:
        tqdm.write(f"removed {len(stale)} temporary file(s) left by an interrupted run", file=sys.stderr)
    report = FolderReport()
    todo = []
    for image in list_images(input_folder, num_parts, part_id):
        if not overwrite and all(p.is_file() for p in output_paths(image, output_folder)):
            report.skipped.append(image.name)
        else:
            todo.append(image)

    def load(path: Path):
        return predictor.preprocess(read_image(path))

    with ThreadPoolExecutor(max_workers=1) as pool:
        future: Optional[Future] = pool.submit(load, todo[0]) if todo else None
        for i, image in enumerate(tqdm(todo, desc=f"predict {predictor.modality}", unit="image", disable=not progress_bar)):
            current = future
            future = pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            try:
                array, grid = current.result()
                pred = predictor.predict_array(array, grid)
                json_path, mrk_path = output_paths(image, output_folder)
                write_case_outputs(pred, json_path, mrk_path)
                report.done.append(image.name)
                if pred.flags:
                    report.unreliable[image.name] = pred.flags
            except (LmkregError, ValueError, RuntimeError, OSError) as exc:
                report.failed[image.name] = str(exc)
                tqdm.write(f"error: {image}: {exc}", file=sys.stderr)
    return report


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="lmkreg_predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, type=Path, help="folder of images (NIfTI, NRRD, MHA)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for landmark files")
    p.add_argument("-d", "--dataset", required=True, help="dataset the models were trained on (id or name)")
    p.add_argument("-m", "--modality", required=True, help="modality, e.g. MR or US")
    p.add_argument("-c", "--configuration", default=None,
                   help="cascade, or one configuration such as MR or MR_localizer (default: the cascade when both "
                        "of its stages are trained, else the single stage)")
    p.add_argument("-tr", "--trainer", default="LandmarkTrainer", help="trainer (default LandmarkTrainer)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all trained)")
    p.add_argument("-chk", "--checkpoint", default="final", choices=["final", "best", "latest"])
    p.add_argument("--tta", action="store_true", help="add left-right mirrored predictions")
    p.add_argument("--overwrite", action="store_true", help="predict again cases whose outputs exist")
    p.add_argument("--num-parts", type=int, default=1, help="split the folder into this many parts")
    p.add_argument("--part-id", type=int, default=0, help="which part this process predicts")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--no-optimize", action="store_true",
                   help="on CPU, run the networks in eager mode instead of as optimised TorchScript modules")
    p.add_argument("--trainer-module", action="append", default=[], help="module (file.py or dotted) with a custom trainer")
    args = p.parse_args(argv)
    dataset_name = find_dataset(args.dataset).name
    predictor = build_predictor(results_root() / dataset_name, args.trainer, args.modality, args.configuration,
                                folds=args.folds, checkpoint=args.checkpoint, device=args.device, mirror_tta=args.tta,
                                trainer_modules=args.trainer_module, optimize=not args.no_optimize,
                                predictor_class=LandmarkPredictor)
    report = predict_folder(predictor, args.input, args.output, args.overwrite, args.num_parts, args.part_id)
    print(f"{len(report.done)} predicted, {len(report.skipped)} skipped (outputs exist), {len(report.failed)} failed; "
          f"{len(report.unreliable)} flagged unreliable")
    for name, flags in report.unreliable.items():
        print(f"  unreliable: {name}: {'; '.join(flags)}")
    for name, msg in report.failed.items():
        print(f"  failed: {name}: {msg}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
