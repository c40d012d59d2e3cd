"""``lmkreg_register``: rigid MR->US transforms from landmark files.

One pair:   lmkreg_register --mr case1_MR.json --us case1_US.json -o out/
Folders:    lmkreg_register --mr-dir pred_MR/ --us-dir pred_US/ -o out/   (matched by case name:
            the file name without suffix and without a trailing _MR / _US)
One shot:   lmkreg_register --mr-image mr.nii.gz --us-image us.nii.gz -d 1 -o out/   (predicts the
            landmarks of both volumes with the dataset's trained models, then registers)

Per case it writes ``CASE_MR_to_US.json`` (4x4 matrix mapping MR world LPS mm to US world
LPS mm, residual per landmark) and ``CASE_MR_to_US.tfm`` (ITK resampling direction: maps US
points to MR points, so SimpleITK's Resample and 3D Slicer show the MR in US space).
``--mr-image/--us-image`` also write the MR (and ``--mr-mask``) resampled into US space.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

from lmkreg.cli_utils import friendly_errors
from lmkreg.dataset.layout import check_case_id
from lmkreg.errors import ConfigurationError, InputError, LmkregError, OutputError
from lmkreg.io.atomic import atomic_path, atomic_write_json, split_suffix
from lmkreg.io.images import read_image, write_image
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.registration.landmark_fit import LandmarkRegistration, register_landmarks
from lmkreg.registration.transform_files import to_sitk_resampling_transform, write_itk_transform
from lmkreg.trust.summary import STRICT_HELP, exit_status, print_unreliable

CASE_SUFFIX = re.compile(r"[_-](MR|MRI|US|TRUS)$", re.IGNORECASE)


def case_name(path: Path) -> str:
    stem, _ = split_suffix(path)
    return CASE_SUFFIX.sub("", stem)


def confidence_weights(landmarks: LandmarkSet, source: Optional[Path] = None) -> Optional[dict[str, float]]:
    """1 / spread^2 from an lmkreg prediction's confidence extras, if it has them.

    A landmark without a spread (``null``, as written for a non-finite one) gets weight 1; a
    spread that is not a finite, non-negative number is refused naming `source`: a NaN weight
    would make the fit fail obscurely, a made-up one would bias it silently."""
    conf = landmarks.extras.get("confidence")
    if not conf:
        return None
    if not isinstance(conf, dict):
        raise InputError(source, f"extras.confidence must map landmark names to confidence values, got "
                                 f"{type(conf).__name__}")
    out = {}
    for n, c in conf.items():
        s = c.get("heatmap_spread_mm") if isinstance(c, dict) else None
        if s is None:
            out[n] = 1.0
            continue
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise InputError(source, f"confidence of {n!r}: heatmap_spread_mm must be a finite, non-negative "
                                     f"number of mm, got {s!r}")
        out[n] = 1.0 / max(float(s), 0.5) ** 2
    return out


def register_pair(mr_file: Path, us_file: Path, out_dir: Path, name: str, weighted: bool = False) -> LandmarkRegistration:
    from lmkreg.io.landmark_files import read_landmarks

    mr, us = read_landmarks(mr_file), read_landmarks(us_file)
    weights = None
    if weighted:
        wm, wu = confidence_weights(mr, mr_file), confidence_weights(us, us_file)
        if wm and wu:
            weights = {n: 1.0 / (1.0 / wm.get(n, 1.0) + 1.0 / wu.get(n, 1.0)) for n in mr.names}
    try:
        reg = register_landmarks(mr, us, weights=weights)
    except InputError as exc:
        raise InputError(f"{mr_file} + {us_file}", exc.problem) from None
    from lmkreg.trust.pair import assess_pair  # pair plausibility, transform uncertainty (issue 14)
    reg.trust = assess_pair(mr, us, reg.names, reg.rms_mm)
    doc = {**reg.transform.to_json(), "landmarks_used": reg.names, "residuals_mm": reg.residuals_mm,
           "rms_residual_mm": reg.rms_mm, "weights": weights, "mr_landmarks": str(mr_file), "us_landmarks": str(us_file),
           "itk_file": f"{name}_MR_to_US.tfm",
           "itk_file_direction": "US world point -> MR world point (ITK resampling convention)", "trust": reg.trust}
    write_transform_pair(reg, doc, out_dir / f"{name}_MR_to_US.json", out_dir / f"{name}_MR_to_US.tfm")
    return reg


def write_transform_pair(reg: LandmarkRegistration, doc: dict, json_path: Path, tfm_path: Path) -> None:
    """Both files complete in temporaries before either replaces anything: a failed write keeps
    the previous pair whole.  The .tfm is moved first, so a JSON (which names its .tfm) is only
    ever newer than, never older than, its .tfm."""
    try:
        with atomic_path(json_path) as tmp_json, atomic_path(tfm_path) as tmp_tfm:
            write_itk_transform(reg.transform, tmp_tfm)
            atomic_write_json(tmp_json, doc)
    except OutputError as exc:
        raise OutputError(json_path, f"{exc.problem} (with {tfm_path.name}); the previous transform files are "
                                     f"unchanged") from None


def resample_into_us(reg: LandmarkRegistration, mr_image: Path, us_image: Path, out: Path, mask: bool) -> Path:
    mr = read_image(mr_image, is_mask=mask)
    us = read_image(us_image)
    interp = sitk.sitkNearestNeighbor if mask else sitk.sitkLinear
    moved = sitk.Resample(mr, us, to_sitk_resampling_transform(reg.transform), interp, 0.0, mr.GetPixelID())
    return write_image(moved, out)


def _output_folder(folder: Path) -> Path:
    """Create the output folder, or fail naming it before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, f"output folder cannot be created ({exc.strerror or exc})") from None
    return folder


def _pairs(mr_dir: Path, us_dir: Path) -> list[tuple[str, Path, Path]]:
    from lmkreg.io.landmark_files import LANDMARK_SUFFIXES

    def index(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise ConfigurationError(f"{folder}: folder not found")
        found: dict[str, Path] = {}
        for f in sorted(folder.iterdir()):
            if f.name.lower().endswith(tuple(LANDMARK_SUFFIXES)):
                first = found.setdefault(case_name(f), f)  # NAME.json and NAME.mrk.json (predict's twins): first wins
                if split_suffix(first)[0] != split_suffix(f)[0]:  # two different files of one case: never guess
                    raise InputError(f, f"a second landmark file of case {case_name(f)!r} (the other is {first.name}); "
                                        f"rename or move one of them")
        return found

    mr, us = index(mr_dir), index(us_dir)
    common = sorted(set(mr) & set(us))
    if not common:
        raise ConfigurationError(f"no case has landmark files in both {mr_dir} and {us_dir}")
    return [(c, mr[c], us[c]) for c in common]


def predict_pair(dataset: str, mr_image: Path, us_image: Path, out_dir: Path, name: str,
                 trainers: dict[str, str], folds: Optional[Sequence[str]] = None) -> tuple[Path, Path]:
    """Landmarks of an MR and a US volume with the trained models: ``NAME_MR.json`` / ``NAME_US.json``
    (lmkreg JSON with confidence) and their ``.mrk.json`` twins in `out_dir`."""
    from lmkreg.dataset.layout import find_dataset
    from lmkreg.inference.predictor import LandmarkPredictor, model_folder_for
    from lmkreg.io.landmark_files import write_landmarks
    from lmkreg.io.landmarks import write_lmkreg_json
    from lmkreg.paths import results_root

    results = results_root() / find_dataset(dataset).name
    written = []
    for modality, image in (("MR", mr_image), ("US", us_image)):
        # one image per model: building the optimised CPU module would cost more than it saves
        predictor = LandmarkPredictor(model_folder_for(results, trainers[modality], modality), folds, optimize=False,
                                      mirror_tta=True)  # mirror TTA: the calibrated radius needs it
        pred = predictor.predict(read_image(image))
        write_landmarks(pred.landmarks, out_dir / f"{name}_{modality}.mrk.json")
        written.append(write_lmkreg_json(pred.with_extras(), out_dir / f"{name}_{modality}.json"))
        for flag in pred.flags:
            print(f"warning: {image}: {flag}", file=sys.stderr)
    return written[0], written[1]


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="lmkreg_register", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mr", type=Path, help="MR landmark file (one pair)")
    p.add_argument("--us", type=Path, help="US landmark file (one pair)")
    p.add_argument("--mr-dir", type=Path, help="folder of MR landmark files")
    p.add_argument("--us-dir", type=Path, help="folder of US landmark files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--name", help="case name for a single pair (default: from the MR file name)")
    p.add_argument("--weighted", action="store_true", help="weight landmarks by predicted confidence")
    p.add_argument("--mr-image", type=Path, help="single pair: MR image to resample into US space")
    p.add_argument("--mr-mask", type=Path, help="single pair: MR mask to resample into US space")
    p.add_argument("--us-image", type=Path, help="single pair: US image defining the output grid")
    p.add_argument("-d", "--dataset", help="one shot: dataset whose trained models predict the landmarks")
    p.add_argument("-tr", "--trainer", default="LandmarkTrainer", help="one shot: trainer of both models")
    p.add_argument("--mr-trainer", help="one shot: MR trainer (default --trainer)")
    p.add_argument("--us-trainer", help="one shot: US trainer (default --trainer)")
    p.add_argument("-f", "--folds", nargs="+", help="one shot: folds to ensemble (default: all trained)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    args = p.parse_args(argv)
    if args.dataset is not None:
        if args.mr or args.us or args.mr_dir or args.us_dir:
            p.error("-d (one shot from images) does not take landmark files")
        if not (args.mr_image and args.us_image):
            p.error("one shot needs --mr-image and --us-image")
        _output_folder(args.output)
        name = check_case_id(args.name or case_name(args.mr_image), "--name")
        trainers = {"MR": args.mr_trainer or args.trainer, "US": args.us_trainer or args.trainer}
        args.mr, args.us = predict_pair(args.dataset, args.mr_image, args.us_image, args.output, name, trainers,
                                        args.folds)
        args.name = name
    single = args.mr is not None or args.us is not None
    if single == (args.mr_dir is not None or args.us_dir is not None):
        p.error("give either --mr and --us (one pair) or --mr-dir and --us-dir (folders)")
    pairs = None if single else _pairs(args.mr_dir, args.us_dir)  # bad folders fail before any output exists
    _output_folder(args.output)
    if single:
        if args.mr is None or args.us is None:
            p.error("--mr and --us go together")
        name = check_case_id(args.name or case_name(args.mr), "--name")
        if (args.mr_image or args.mr_mask) and args.us_image is None:
            p.error("--mr-image/--mr-mask need --us-image for the output grid")
        for image, is_mask in ((args.mr_image, False), (args.mr_mask, True), (args.us_image, False)):
            if image is not None:  # check every input before any output is written
                read_image(image, is_mask=is_mask)
        reg = register_pair(args.mr, args.us, args.output, name, args.weighted)
        print(f"{name}: rotation {reg.transform.rotation_angle_deg():.1f} deg, RMS residual {reg.rms_mm:.2f} mm "
              f"-> {args.output / (name + '_MR_to_US.json')}")
        print_unreliable({name: reg.flags} if reg.flags else {}, 1, "pair")
        if args.mr_image or args.mr_mask:
            for src, mask, suffix in ((args.mr_image, False, "MR_in_US"), (args.mr_mask, True, "MRmask_in_US")):
                if src is not None:
                    print(f"  wrote {resample_into_us(reg, src, args.us_image, args.output / f'{name}_{suffix}.nii.gz', mask)}")
        return exit_status(0, len(reg.flags), args.strict)
    failed, unreliable = 0, {}
    for name, mr_file, us_file in pairs:
        try:
            reg = register_pair(mr_file, us_file, args.output, name, args.weighted)
            print(f"{name}: rotation {reg.transform.rotation_angle_deg():.1f} deg, RMS residual {reg.rms_mm:.2f} mm")
            if reg.flags:
                unreliable[name] = reg.flags
        except LmkregError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    print_unreliable(unreliable, len(pairs) - failed, "pair")
    return exit_status(failed, len(unreliable), args.strict)


if __name__ == "__main__":
    sys.exit(main())
