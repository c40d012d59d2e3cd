"""``lmkreg_register``: rigid MR->US transforms from landmark files.

One pair:   lmkreg_register --mr case1_MR.json --us case1_US.json -o out/
Folders:    lmkreg_register --mr-dir pred_MR/ --us-dir pred_US/ -o out/   (matched by case name:
            the file name without suffix and without a trailing _MR / _US)
One shot:   lmkreg_register --mr-image mr.nii.gz --us-image us.nii.gz -d 1 -o out/   (predicts the
            landmarks of both volumes with the dataset's trained models, a modality's cascade when
            both of its stages are trained, then registers; an image may be a folder holding a
            DICOM series)

Only the dataset's landmark names are fitted (-d; default apex, bladder_neck, posterior_median
or --landmark-names); labels of other tools are renamed with --landmark-map Apex=apex BN=...,
and the labels used and ignored are printed.

Per case it writes ``CASE_MR_to_US.json`` (4x4 matrix mapping MR world LPS mm to US world
LPS mm, residual per landmark) and ``CASE_MR_to_US.tfm`` (ITK resampling direction: maps US
points to MR points, so SimpleITK's Resample and 3D Slicer show the MR in US space).
``--mr-image/--us-image`` also write the MR (and ``--mr-mask``) resampled into US space.
``--refine surface --mr-mask M --us-mask U`` refines the landmark transform by rigid ICP between
the prostate surfaces and keeps it only if it fits the surfaces better within a bound of the
landmark transform (lmkreg.registration.surface); the JSON records both transforms and the
surface distance before and after.  Without --mr-mask/--us-mask the masks are the predicted ones
(a segmentation model's ``STEM_prostate.nii.gz``, named in the landmark JSON; in one shot the
predictor's masks); a case without them keeps its landmark transform and says why.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

from lmkreg.cli_utils import (add_progress_option, add_strict_option, check_unique, choose_trainer, fold_value,
                              friendly_errors, make_parser)
from lmkreg.dataset.layout import check_case_id, find_dataset, open_dataset
from lmkreg.errors import ConfigurationError, InputError, LmkregError, OutputError
from lmkreg.inference.cascade import build_predictor
from lmkreg.inference.reuse import one_shot_provenance
from lmkreg.io.atomic import atomic_path, atomic_write_json, split_suffix
from lmkreg.io.dicom import read_image_or_series
from lmkreg.io.images import write_image
from lmkreg.io.inputs import CASE_SUFFIX
from lmkreg.io.landmark_files import LANDMARK_SUFFIXES, read_landmarks, write_landmarks
from lmkreg.io.landmark_names import parse_landmark_map, rename_landmarks
from lmkreg.io.landmarks import DEFAULT_LANDMARK_NAMES, LandmarkSet, write_lmkreg_json
from lmkreg.io.ownership import LMKREG_RESAMPLED_NOTE, check_replaceable, written_by_lmkreg
from lmkreg.io.provenance import add_provenance, pair_record, read_provenance
from lmkreg.io.twins import choose_twin
from lmkreg.parallel import hide_progress
from lmkreg.paths import results_root
from lmkreg.registration.landmark_fit import LandmarkRegistration
from lmkreg.registration.pair_checks import check_pair, takes_role
from lmkreg.registration.pair_fit import fit_pair
from lmkreg.registration.predicted_masks import attach_mask
from lmkreg.registration.transform_files import to_sitk_resampling_transform, write_itk_transform
from lmkreg.run.surface_options import SurfaceRequest, add_surface_options, surface_request
from lmkreg.trust.flags import add_flags
from lmkreg.trust.summary import STRICT_HELP, exit_status, print_unreliable


def case_name(path: Path) -> str:
    stem = Path(path).name if Path(path).is_dir() else split_suffix(path)[0]  # a DICOM folder: its name
    return CASE_SUFFIX.sub("", stem)


def choose_landmark_names(mr: LandmarkSet, us: LandmarkSet, wanted: Optional[Sequence[str]],
                          mr_file: Path, us_file: Path) -> list[str]:
    """The landmark names to fit: `wanted` (the dataset's or model's), else lmkreg's standard three
    when both files hold them, else every shared name when both files are lmkreg's own landmark JSON
    (written for one dataset).  Never a stray Slicer click such as F-1 by default."""

    if wanted:
        return list(wanted)
    if all(n in mr.points and n in us.points for n in DEFAULT_LANDMARK_NAMES):
        return list(DEFAULT_LANDMARK_NAMES)
    shared = [n for n in mr.names if n in us.points]
    if written_by_lmkreg(mr_file) and written_by_lmkreg(us_file) and not str(mr_file).endswith(".mrk.json"):
        return shared
    raise InputError(f"{mr_file} + {us_file}", f"which landmarks to fit? the files share {shared}; give -d DATASET "
                                               f"(its landmark names) or --landmark-names, and --landmark-map to "
                                               f"rename labels such as Apex=apex")


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


def register_pair(mr_file: Path, us_file: Path, out_dir: Path, name: str, weighted: bool = False,
                  names: Optional[Sequence[str]] = None, landmark_map: Optional[dict[str, str]] = None,
                  surface: Optional[SurfaceRequest] = None, overwrite: Optional[bool] = None) -> LandmarkRegistration:
    """Fit the MR->US transform of one pair of landmark files on the landmark `names` only (see
    choose_landmark_names); labels are renamed by `landmark_map` first.  Says which labels it used
    and which it ignored.  ``NAME_MR_to_US.json/.tfm`` are lmkreg's by their name and are replaced."""


    pair_flags = check_pair(mr_file, us_file)  # same file/image, swapped, wrong modality (issue 25)
    wanted = names or DEFAULT_LANDMARK_NAMES  # labels equal to these apart from case are these
    mr = rename_landmarks(read_landmarks(mr_file), landmark_map or {}, wanted, mr_file)
    us = rename_landmarks(read_landmarks(us_file), landmark_map or {}, wanted, us_file)
    fit_names = choose_landmark_names(mr, us, names, mr_file, us_file)
    absent = [n for n in fit_names if n not in mr.points or n not in us.points]
    if names and len(absent) == len(fit_names):
        raise InputError(f"{mr_file} + {us_file}", f"none of the landmarks {list(fit_names)} is in both files "
                                                   f"(MR has {mr.names}, US has {us.names}); rename labels with "
                                                   f"--landmark-map, e.g. Apex=apex")
    fit_names = [n for n in fit_names if n not in absent]
    ignored = sorted({*mr.names, *us.names} - set(fit_names))
    print(f"{name}: landmarks used: {', '.join(fit_names)}"
          + (f"; ignored: {', '.join(ignored)}" if ignored else ""))
    weights = None
    if weighted:
        wm, wu = confidence_weights(mr, mr_file), confidence_weights(us, us_file)
        if wm and wu:
            weights = {n: 1.0 / (1.0 / wm.get(n, 1.0) + 1.0 / wu.get(n, 1.0)) for n in mr.names}
    try:
        reg = fit_pair(mr, us, fit_names, weights)
    except InputError as exc:
        raise InputError(f"{mr_file} + {us_file}", exc.problem) from None
    if pair_flags:
        reg.trust = reg.trust if isinstance(reg.trust, dict) else {}
        add_flags(reg.trust, pair_flags)
    left = (reg.trust or {}).get("two_landmarks")
    if left:
        print(f"{name}: {left['reason']}; transform from {' and '.join(reg.names)} with the training orientation "
              f"(flagged)")
    doc = {**reg.transform.to_json(), "landmarks_used": reg.names, "residuals_mm": reg.residuals_mm,
           "rms_residual_mm": reg.rms_mm, "weights": weights, "mr_landmarks": str(mr_file), "us_landmarks": str(us_file),
           "itk_file": f"{name}_MR_to_US.tfm",
           "itk_file_direction": "US world point -> MR world point (ITK resampling convention)", "trust": reg.trust,
           "provenance": pair_record(read_provenance(mr_file), read_provenance(us_file))}
    if surface is not None:  # --refine surface (issue 17): the transform to use, both recorded in doc
        reg, doc = surface.refine_pair(reg, doc, mr, us, name, mr_file, us_file)
    if overwrite is not None:  # inputs are judged first; a foreign file of the same name is never replaced
        check_replaceable(register_outputs(out_dir, name), overwrite)
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


def resample_into_us(reg: LandmarkRegistration, mr_image: Path, us_image: Path, out: Path, mask: bool,
                     mr_series: Optional[str] = None, us_series: Optional[str] = None) -> Path:
    mr = read_image_or_series(mr_image, mr_series, is_mask=mask)
    us = read_image_or_series(us_image, us_series)
    interp = sitk.sitkNearestNeighbor if mask else sitk.sitkLinear
    moved = sitk.Resample(mr, us, to_sitk_resampling_transform(reg.transform), interp, 0.0, mr.GetPixelID())
    moved.SetMetaData("ITK_FileNotes", LMKREG_RESAMPLED_NOTE)  # lmkreg's own file (lmkreg.io.ownership)
    return write_image(moved, out)


def _name_source(name: Optional[str], mr: Path) -> str:
    """What a bad case name came from: --name, or the MR file whose name gave it (--mr 'Pätient 1_MR.json'
    must not blame a --name that was not given)."""
    return "--name" if name else f"the case name taken from {Path(mr).name!r} (give --name CASE)"


def _output_folder(folder: Path) -> Path:
    """Create the output folder, or fail naming it before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, f"output folder cannot be created ({exc.strerror or exc})") from None
    return folder


def _pairs(mr_dir: Path, us_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """The (case, MR file, US file) pairs of two folders and the unmatched cases (listed; see
    lmkreg.registration.pair_checks for which files are taken)."""

    def index(folder: Path, role: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise ConfigurationError(f"{folder}: folder not found")
        found: dict[str, Path] = {}
        left_out: dict[str, str] = {}
        for f in sorted(folder.iterdir()):
            if f.name.lower().endswith(tuple(LANDMARK_SUFFIXES)) and not f.name.startswith("."):
                ok, why = takes_role(f, role)  # never an _MR file as US (issue 25)
                if not ok:
                    left_out[f.name] = why
                    continue
                first = found.setdefault(case_name(f), f)
                if first == f:
                    continue
                if split_suffix(first)[0] != split_suffix(f)[0]:  # two different files of one case: never guess
                    raise InputError(f, f"a second landmark file of case {case_name(f)!r} (the other is {first.name}); "
                                        f"rename or move one of them")
                chosen, note = choose_twin(first, f)  # NAME.json and NAME.mrk.json: the newer edit wins
                found[case_name(f)] = chosen
                if note:
                    print(f"{case_name(f)}: {note}")
        if left_out:
            print(f"{folder}: {len(left_out)} file(s) not taken as {role}: "
                  + "; ".join(f"{k} ({v})" for k, v in left_out.items()))
        return found

    mr, us = index(mr_dir, "MR"), index(us_dir, "US")
    common = sorted(set(mr) & set(us))
    if not common:
        raise ConfigurationError(f"no case has landmark files in both {mr_dir} (MR) and {us_dir} (US)")
    unmatched = [f"{c} (only in {mr_dir})" for c in sorted(set(mr) - set(us))] + \
                [f"{c} (only in {us_dir})" for c in sorted(set(us) - set(mr))]
    if unmatched:
        print(f"unmatched: {len(unmatched)} case(s) with landmarks on one side only: {', '.join(unmatched)}",
              file=sys.stderr)
    return [(c, mr[c], us[c]) for c in common], unmatched


def register_outputs(out_dir: Path, name: str, images: Sequence[str] = ()) -> list[Path]:
    """The files a pair writes (``NAME_MR_to_US.json/.tfm`` and resampled ``NAME_SUFFIX.nii.gz``):
    checked with lmkreg.io.ownership before any is replaced."""
    return [out_dir / f"{name}_MR_to_US.json", out_dir / f"{name}_MR_to_US.tfm",
            *(out_dir / f"{name}_{suffix}.nii.gz" for suffix in images)]


def predict_pair(dataset: str, mr_image: Path, us_image: Path, out_dir: Path, name: str,
                 trainers: dict[str, Optional[str]], folds: Optional[Sequence[str]] = None,
                 series: Optional[dict[str, Optional[str]]] = None, overwrite: bool = False,
                 masks: Optional[dict] = None) -> tuple[Path, Path]:
    """Landmarks of an MR and a US volume with the trained models: ``NAME_MR.json`` / ``NAME_US.json``
    (lmkreg JSON with confidence) and their ``.mrk.json`` twins in `out_dir`.  Like
    ``lmkreg_predict``, a modality's cascade is used when both of its stages are trained.  A model
    with a segmentation head also gives its prostate mask: written as ``NAME_MOD_prostate.nii.gz``
    (named in the JSON like lmkreg_predict does) and, when `masks` is a dict, put there by
    modality so a surface refinement uses it directly."""


    results = results_root() / find_dataset(dataset).name
    # NAME_MOD_prostate.nii.gz is lmkreg's by its name (like NAME_MR_to_US.tfm) and is replaced
    check_replaceable([out_dir / f"{name}_{m}{ext}" for m in ("MR", "US") for ext in (".json", ".mrk.json")],
                      overwrite)
    written = []
    for modality, image in (("MR", mr_image), ("US", us_image)):
        # one image per model: building the optimised CPU module would cost more than it saves
        trainer = choose_trainer(results, modality, trainers.get(modality))
        predictor = build_predictor(results, trainer, modality, None, folds=folds, optimize=False,
                                    mirror_tta=True)  # mirror TTA: the calibrated radius needs it
        read = read_image_or_series(image, (series or {}).get(modality))
        pred = predictor.predict(read)
        write_landmarks(pred.landmarks, out_dir / f"{name}_{modality}.mrk.json")
        written.append(write_lmkreg_json(pred.with_extras(), out_dir / f"{name}_{modality}.json"))
        record = one_shot_provenance(predictor, image, read, (series or {}).get(modality))  # issue 25
        for path in (out_dir / f"{name}_{modality}.mrk.json", written[-1]):
            add_provenance(path, record)
        mask = pred.mask if predictor.has_segmentation else None
        if mask is not None:
            print(f"  {modality}: predicted prostate mask -> {attach_mask(written[-1], mask).name}")
            if masks is not None:
                masks[modality] = mask
        elif masks is not None:
            print(f"note: the {modality} model ({trainer}) has no segmentation head, so no predicted prostate "
                  f"mask; --refine surface will keep the landmark transform (train a {trainer}_Seg model, or give "
                  f"--mr-mask and --us-mask)", file=sys.stderr)
        for flag in pred.flags:
            print(f"warning: {image}: {flag.text}", file=sys.stderr)
    return written[0], written[1]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("lmkreg_register", __doc__)
    p.add_argument("--mr", type=Path, help="MR landmark file (one pair)")
    p.add_argument("--us", type=Path, help="US landmark file (one pair)")
    p.add_argument("--mr-dir", type=Path, help="folder of MR landmark files")
    p.add_argument("--us-dir", type=Path, help="folder of US landmark files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--name", help="case name for a single pair (default: from the MR file name)")
    p.add_argument("--weighted", action="store_true", help="weight landmarks by predicted confidence")
    p.add_argument("--mr-image", type=Path,
                   help="single pair: MR image (file or DICOM series folder) to resample into US space")
    p.add_argument("--mr-mask", type=Path, help="MR prostate mask: for one pair resampled into US space with "
                                                "--us-image; for --refine surface its surface (a folder of masks "
                                                "matched by case name with --mr-dir/--us-dir; without --mr-mask and "
                                                "--us-mask the masks predicted with the landmarks are used)")
    p.add_argument("--us-image", type=Path,
                   help="single pair: US image (file or DICOM series folder) defining the output grid")
    p.add_argument("--mr-series", help="DICOM folder with several series: the MR series (UID or description)")
    p.add_argument("--us-series", help="DICOM folder with several series: the US series (UID or description)")
    p.add_argument("-d", "--dataset",
                   help="dataset whose landmark names are fitted; without landmark files (one shot), its trained "
                        "models predict the landmarks of --mr-image and --us-image first")
    p.add_argument("--landmark-names", nargs="+", metavar="NAME",
                   help="fit only these landmarks (default: the dataset's with -d, else apex bladder_neck "
                        "posterior_median)")
    p.add_argument("--landmark-map", nargs="+", metavar="FILE_NAME=DATASET_NAME",
                   help="rename labels of the files first, e.g. Apex=apex BN=bladder_neck PM=posterior_median "
                        "(ignoring upper/lower case)")
    p.add_argument("-tr", "--trainer", default=None,
                   help="one shot: trainer of both models (default: the only one with a model per modality, a "
                        "single stage or a cascade)")
    p.add_argument("--mr-trainer", help="one shot: MR trainer (default --trainer)")
    p.add_argument("--us-trainer", help="one shot: US trainer (default --trainer)")
    p.add_argument("-f", "--folds", nargs="+", type=fold_value, help="one shot: folds to ensemble (default: all trained)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace same-named output files lmkreg did not write (NAME_MR_to_US.json/.tfm, "
                        "NAME_MR_in_US.nii.gz; one shot also NAME_MR.json / NAME_US.json and .mrk.json)")
    add_strict_option(p, STRICT_HELP)
    add_progress_option(p)
    add_surface_options(p)
    return p


@friendly_errors
def main(argv: Optional[Sequence[str]] = None) -> int:

    p = build_parser()
    args = p.parse_args(argv)
    check_unique(p, "-f/--folds", args.folds)
    if args.no_progress:
        hide_progress()
    surface = surface_request(args, p)  # --refine surface: masks and bounds checked before any work
    landmark_map = parse_landmark_map(args.landmark_map)
    names = args.landmark_names
    if args.dataset is not None and not names:

        names = list(open_dataset(find_dataset(args.dataset).name).spec.landmarks)
    one_shot = args.dataset is not None and not (args.mr or args.us or args.mr_dir or args.us_dir)
    if one_shot:
        if not (args.mr_image and args.us_image):
            p.error("one shot needs --mr-image and --us-image")
        _output_folder(args.output)
        name = check_case_id(args.name or case_name(args.mr_image), _name_source(args.name, args.mr_image))
        trainers = {"MR": args.mr_trainer or args.trainer, "US": args.us_trainer or args.trainer}
        masks = {} if surface is not None and surface.predicted else None
        args.mr, args.us = predict_pair(args.dataset, args.mr_image, args.us_image, args.output, name, trainers,
                                        args.folds, {"MR": args.mr_series, "US": args.us_series}, args.overwrite,
                                        masks)
        if masks:  # the predictor's masks feed the refinement directly
            surface.images[name] = masks
        args.name = name
    single = args.mr is not None or args.us is not None
    if single == (args.mr_dir is not None or args.us_dir is not None):
        p.error("give either --mr and --us (one pair) or --mr-dir and --us-dir (folders)")
    pairs, unmatched = (None, []) if single else _pairs(args.mr_dir, args.us_dir)  # bad folders fail first
    _output_folder(args.output)
    if single:
        if args.mr is None or args.us is None:
            p.error("--mr and --us go together")
        name = check_case_id(args.name or case_name(args.mr), _name_source(args.name, args.mr))
        if (args.mr_image or (args.mr_mask and surface is None)) and args.us_image is None:
            p.error("--mr-image/--mr-mask need --us-image for the output grid")
        for image, is_mask, series in ((args.mr_image, False, args.mr_series), (args.mr_mask, True, None),
                                       (args.us_image, False, args.us_series)):
            if image is not None:  # check every input before any output is written
                read_image_or_series(image, series, is_mask=is_mask)
        images = [sfx for src, sfx in ((args.mr_image, "MR_in_US"), (args.mr_mask, "MRmask_in_US")) if src is not None]
        check_replaceable(register_outputs(args.output, name, images if args.us_image else ())[2:], args.overwrite)
        reg = register_pair(args.mr, args.us, args.output, name, args.weighted, names, landmark_map, surface,
                            args.overwrite)
        print(f"{name}: rotation {reg.transform.rotation_angle_deg():.1f} deg, RMS residual {reg.rms_mm:.2f} mm "
              f"-> {args.output / (name + '_MR_to_US.json')}")
        print_unreliable({name: reg.flags} if reg.flags else {}, 1, "pair")
        if (args.mr_image or args.mr_mask) and args.us_image is not None:
            for src, mask, suffix in ((args.mr_image, False, "MR_in_US"), (args.mr_mask, True, "MRmask_in_US")):
                if src is not None:
                    print(f"  wrote {resample_into_us(reg, src, args.us_image, args.output / f'{name}_{suffix}.nii.gz', mask, args.mr_series if not mask else None, args.us_series)}")
        return exit_status(0, len(reg.flags), args.strict)
    check_replaceable([p for name, _, _ in pairs for p in register_outputs(args.output, name)], args.overwrite)
    failed, unreliable, outcomes = 0, {}, []
    for name, mr_file, us_file in pairs:
        try:
            reg = register_pair(mr_file, us_file, args.output, name, args.weighted, names, landmark_map, surface)
            print(f"{name}: rotation {reg.transform.rotation_angle_deg():.1f} deg, RMS residual {reg.rms_mm:.2f} mm")
            if reg.flags:
                unreliable[name] = reg.flags
            outcomes.append((reg.trust or {}).get("surface") if isinstance(reg.trust, dict) else None)
        except LmkregError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    if surface is not None and outcomes:
        done = [o for o in outcomes if o and not o.get("not_done")]
        print(f"surface refinement: {sum(bool(o['accepted']) for o in done)} of {len(outcomes)} pair(s) refined, "
              f"{sum(not o['accepted'] for o in done)} refused (landmark transform kept), "
              f"{len(outcomes) - len(done)} not done (no usable masks; landmark transform kept)")
    print_unreliable(unreliable, len(pairs) - failed, "pair")
    return exit_status(failed, len(unreliable) + len(unmatched), args.strict)  # unmatched: problems under --strict


if __name__ == "__main__":
    sys.exit(main())
