"""Trust benchmark (issue 26): does the trust layer neither miss nor cry wolf, in every
configuration a user trains and for every landmark file a user brings?

One phantom dataset (the demo's --quick size: preset ``tiny``; 30 training + 20 test pairs by
default).  Two stages, so that the slow one runs once:

* ``train``: per modality, HeatmapMatchingTrainer folds 0-4 and ``all`` for a fixed number of
  epochs (the result does not depend on how busy the machine is).  Cached under ``--root``.
* ``evaluate`` (re-runnable after code changes, minutes): per configuration

  - ``fold0``: fold 0 with mirror TTA (the demo's configuration);
  - ``all_cv``: fold ``all`` with the CV folds present (it borrows their calibration);
  - ``all_alone``: fold ``all`` in a model folder without the fold_0..4 folders (a copy);
  - ``ensemble``: the 5-fold ensemble;
  - ``fold0_notta``: fold 0 without mirror TTA;
  - ``cascade``: the planned two-stage cascade (localizer + refine, the cascade folds trained by
    ``train --cascade-folds``) on a copy of the same phantoms planned with ``cascade=True``
    (the tiny phantoms are framed alike, so the planner alone would not add one);
  - ``bare``: the ensemble's landmark files with the trust block stripped (a clinician's file);

  predicts the test set, registers every pair (lmkreg_register's own API) and measures the
  false-flag rate on clean cases and clean pairs, the recall on cases with a landmark > 5 mm
  and pairs with SRE > 5 mm, and the coverage of the 90 % radii; then the same on corrupted
  inputs: the image shifted out of the planned crop (10-20 mm, landmarks not moved), the other
  modality's image, another patient's US file, domain-shifted images (thick slices, a bias
  field, noise), with ``--families RAW`` the cross-domain benchmark's four protocol families'
  test pairs (other scanners, coils and probes: issue 27), and (bare files) a 15 mm error on one
  landmark.

    python benchmarks/trust_benchmark.py train --root /work/trustbench
    python benchmarks/trust_benchmark.py evaluate --root /work/trustbench

Writes benchmarks/results/trust.json and documentation/benchmark_trust.md.  Nothing is tuned on
the test set.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np

from _common import icp_reference, log, planned_phantoms, use_root  # benchmarks/_common.py (run as a script: on sys.path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "trust.json"
REPORT = REPO / "documentation" / "benchmark_trust.md"
DATASET_ID = 962
NAME = "TrustBench"
CASCADE_ID = 963  # the same phantoms (same preset and seed), planned with a cascade
CASCADE_NAME = "TrustBenchCascade"
TRAINER = "HeatmapMatchingTrainer"
FOLDS = ["0", "1", "2", "3", "4", "all"]
BAD_MM = 5.0


def dataset(args):
    return planned_phantoms(args.root, DATASET_ID, NAME, args.train, args.test, args.preset, args.seed, args.workers)


def cascade_dataset(args):
    """The test phantoms' twin dataset (same preset and seed: the same cases) planned with a cascade."""
    from lmkreg.dataset.layout import Dataset, dataset_folder_name, open_dataset
    from lmkreg.phantoms.generator import generate_dataset
    from lmkreg.planning.plan_and_preprocess import plan_and_preprocess

    folder = args.root / "raw" / dataset_folder_name(CASCADE_ID, CASCADE_NAME)
    if not (folder / "dataset.json").is_file() or len(Dataset(folder).cases("Tr")) != args.train:
        log(f"generating the cascade twin: {args.train} + {args.test} phantom pairs")
        generate_dataset(CASCADE_ID, args.train, args.test, name=CASCADE_NAME, preset=args.preset, seed=args.seed,
                         root=args.root / "raw", overwrite=True, progress=False)
    plan_and_preprocess(str(CASCADE_ID), workers=args.workers, cascade=True)
    return open_dataset(CASCADE_ID)


def trained_epochs(folder: Path) -> int:
    """Epochs in a fold's checkpoint_latest.pth (0 when there is none)."""
    import torch

    path = folder / "checkpoint_latest.pth"
    return int(torch.load(path, map_location="cpu", weights_only=False).get("epoch", 0)) if path.is_file() else 0


def needs_training(folder: Path, epochs: int) -> tuple[bool, bool]:
    """(train, resume): a fold trained for fewer epochs than asked continues from its last epoch
    (the trainer starts a new learning-rate segment), so a longer benchmark reuses a shorter one."""
    if not (folder / "checkpoint_final.pth").is_file():
        return True, (folder / "checkpoint_latest.pth").is_file()
    done = trained_epochs(folder)
    return done < epochs, done < epochs


def stage_train(args) -> None:
    """The cascade's stages for ``--cascade-folds``, then every fold of both modalities that is not
    trained for ``--epochs`` yet."""

    ds = dataset(args)
    if args.cascade_folds:
        cds = cascade_dataset(args)
        for fold in args.cascade_folds:
            for modality in args.modalities:
                for stage in ("localizer", "refine"):
                    train_fold(args, cds, CASCADE_ID, modality, fold, stage)
    for modality in args.modalities:
        for fold in args.folds:
            train_fold(args, ds, DATASET_ID, modality, fold, None)


def train_fold(args, ds, dataset_id: int, modality: str, fold: str, stage: Optional[str]) -> None:
    """One fold of one configuration (the modality's single stage, or its cascade `stage`), unless
    it is trained for args.epochs already; a shorter run continues from its last epoch."""
    from lmkreg.run.train import model_folder, train

    configuration = modality if stage is None else f"{modality}_{stage}"
    todo, resume = needs_training(model_folder(ds.name, TRAINER, configuration) / f"fold_{fold}", args.epochs)
    if not todo:
        return
    t0 = time.perf_counter()
    log(f"training {TRAINER} {configuration} fold {fold} ({args.epochs} epochs x {args.iterations} steps)")
    s = train(str(dataset_id), modality, fold if fold == "all" else int(fold), TRAINER, num_workers=args.workers,
              seed=args.seed, num_epochs=args.epochs, iterations_per_epoch=args.iterations, progress_bar=False,
              configuration=stage, resume=resume)
    log(f"  {configuration} fold {fold}: validation MRE {s['mre_mm']:.2f} mm in {time.perf_counter() - t0:.0f} s")


# -- evaluation ------------------------------------------------------------------------------------

CORRUPTIONS = ("shifted", "other_modality", "thick_slices", "bias_field", "noise")


def corrupt(kind: str, image, other_image, rng):
    """The image of one corrupted input (world geometry kept unless the kind is a shift):
    shifted: 10-20 mm of edge-replicating padding on one side, so the planned crop (centred on the
    image) moves away from the prostate while the true landmarks stay where they are;
    other_modality: the other modality's image; thick_slices: slices 3x thicker (averaged) along
    the image's third axis; bias_field: a smooth multiplicative field from 0.5 to 2 across the
    field of view; noise: Gaussian noise of 0.5 x the image's sd where the image recorded signal."""
    import SimpleITK as sitk

    from calibration_benchmark import shifted

    if kind == "shifted":
        return shifted(image, float(rng.uniform(10.0, 20.0)))
    if kind == "other_modality":
        return other_image
    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    if kind == "thick_slices":
        sp = list(img.GetSpacing())
        size = list(img.GetSize())
        thick = sitk.Resample(sitk.SmoothingRecursiveGaussian(img, [1e-3, 1e-3, 1.2 * sp[2]]),
                              [size[0], size[1], max(2, size[2] // 3)], sitk.Transform(), sitk.sitkLinear,
                              img.GetOrigin(), [sp[0], sp[1], sp[2] * size[2] / max(2, size[2] // 3)],
                              img.GetDirection(), 0.0, sitk.sitkFloat32)
        return thick
    if kind == "bias_field":
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in arr.shape], indexing="ij")
        field = np.exp(np.log(2.0) * (0.6 * x + 0.3 * y - 0.4 * z * z + 0.2 * x * y))
        out = sitk.GetImageFromArray((arr * field).astype(np.float32))
    else:  # noise
        sd = float(arr[arr != 0].std()) if (arr != 0).any() else 1.0
        out = sitk.GetImageFromArray(np.where(arr != 0, arr + rng.normal(0, 0.5 * sd, arr.shape), 0).astype(np.float32))
    out.CopyInformation(img)
    return out


FAMILY_DATASETS = {"family_a_3T_thin": "Dataset970_FamA", "family_b_1.5T_thick": "Dataset971_FamB",
                   "family_c_endorectal": "Dataset972_FamC", "family_d_large_gland": "Dataset973_FamD"}


def protocol_families(args) -> dict:
    """The cross-domain benchmark's protocol families (issue 27; its --root/raw, generated by
    benchmarks/cross_domain_benchmark.py): each family's test pairs are another scanner's, coil's
    or probe's images, none of which the trust benchmark's models saw.  Empty without --families."""
    from lmkreg.dataset.layout import Dataset

    out = {}
    if args.families is None:
        return out
    for kind, name in FAMILY_DATASETS.items():
        folder = args.families / name
        if not (folder / "dataset.json").is_file():
            raise SystemExit(f"{folder}: no protocol-family dataset (run benchmarks/cross_domain_benchmark.py first)")
        fds = Dataset(folder)
        out[kind] = (fds, [c for c in fds.cases("Ts", "MR") if c in fds.cases("Ts", "US")])
    return out


def strip(landmarks):
    """A clinician's file: the points only."""
    from lmkreg.io.landmarks import LandmarkSet

    return LandmarkSet(dict(landmarks.points))


def refresh_statistics(folder: Path, ds) -> None:
    """A model trained before the padding ranges (issue 26) gets them from its own
    preprocessed training cases (lmkreg.run.calibrate.refresh_image_statistics); the rest of its
    statistics stays as trained."""
    from lmkreg.config.plans import Plans
    from lmkreg.paths import preprocessed_folder
    from lmkreg.run.calibrate import refresh_image_statistics
    from lmkreg.trust.plausibility import STATISTICS_FILE

    path = folder / STATISTICS_FILE
    if not path.is_file() or "padding" in json.loads(path.read_text()).get("image", {}):
        return
    conf = Plans.load(folder / "plans.json").configuration(folder.name.partition("__")[2])
    refresh_image_statistics(folder, preprocessed_folder(ds) / conf.data_identifier, ds.cases("Tr", conf.modality))
    log(f"{folder.name}: training statistics given the padding ranges")


def alone_folder(root: Path, folder: Path) -> Path:
    """A copy of the model folder as a user who trained only fold all has it; copied again when the
    model's fold `all` changed since (continued training: an old copy scored an older network)."""
    dst = root / "alone" / folder.name
    ckpt = Path("fold_all") / "checkpoint_final.pth"
    if not (dst / ckpt).is_file() or not filecmp.cmp(folder / ckpt, dst / ckpt, shallow=False):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("fold_0", "fold_1", "fold_2", "fold_3", "fold_4",
                                                                   "calibration.json"))
    return dst


def references(ds, cases, root: Path) -> dict:
    """Per test case: the ICP reference transform (lmkreg_evaluate's ground truth) and MR surface
    points, cached on disk (the matrices)."""
    from lmkreg.geometry.mesh import mask_to_mesh, surface_points
    from lmkreg.geometry.rigid import RigidTransform
    from lmkreg.io.images import read_image
    from lmkreg.io.landmarks import read_lmkreg_json

    cache_file = root / "outputs" / "references.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    out = {}
    for c in cases:
        mr_mesh = mask_to_mesh(read_image(ds.mask_path(c, "MR", "Ts"), is_mask=True))
        if c not in cache:
            us_mesh = mask_to_mesh(read_image(ds.mask_path(c, "US", "Ts"), is_mask=True))
            t = {m: read_lmkreg_json(ds.landmarks_path(c, m, "Ts")) for m in ("MR", "US")}
            cache[c] = icp_reference(mr_mesh, us_mesh, t["MR"], t["US"]).matrix().tolist()
        m = np.asarray(cache[c])
        out[c] = (RigidTransform(m[:3, :3], m[:3, 3]), surface_points(mr_mesh, 3000))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache))
    return out


def case_row(pred, truth, names, modality: str) -> dict:
    """Flag, landmark errors (their largest) and radius coverage of one predicted case."""
    errs = [float(np.linalg.norm(pred.landmarks.points[n] - truth.points[n])) for n in names
            if truth is not None and truth.points.get(n) is not None and pred.landmarks.points.get(n) is not None]
    radii = [pred.radius_mm.get(n) for n in names]
    covered = [e <= r for e, r in zip(errs, radii) if r is not None] if truth is not None else []
    return {"flagged": bool(pred.flags), "max_error_mm": max(errs) if errs else None, "covered": covered,
            "errors_mm": errs, "modality": modality, "flags": list(pred.flags)}


def pair_row(mr, us, names, ref) -> dict:
    """lmkreg_register's verdict for one pair and its SRE against the reference."""
    from lmkreg.evaluation.metrics import surface_registration_error
    from lmkreg.registration.pair_fit import fit_pair

    try:
        fit = fit_pair(mr, us, names)
    except Exception as exc:  # no transform at all: counted as flagged (lmkreg_register fails the case)
        return {"flagged": True, "sre_mm": None, "flags": [f"no registration: {exc}"]}
    sre = surface_registration_error(ref[1], ref[0], fit.transform) if ref is not None else None
    return {"flagged": not fit.trust["reliable"], "sre_mm": sre, "flags": list(fit.trust["flags"])}


def summarise_cases(rows: list[dict]) -> dict:
    bad = [r for r in rows if r["max_error_mm"] is None or r["max_error_mm"] > BAD_MM]
    good = [r for r in rows if r not in bad]
    cov = [c for r in rows for c in r["covered"]]
    mre = {m: [e for r in rows if r["modality"] == m for e in r["errors_mm"]] for m in ("MR", "US")}
    return {"n": len(rows), "flagged": sum(r["flagged"] for r in rows),
            "mre_mm": {m: float(np.mean(e)) if e else None for m, e in mre.items()},
            "clean_n": len(good), "clean_flagged": sum(r["flagged"] for r in good),
            "bad_n": len(bad), "bad_flagged": sum(r["flagged"] for r in bad),
            "coverage": (float(np.mean(cov)) if cov else None), "coverage_n": len(cov)}


def summarise_pairs(rows: list[dict]) -> dict:
    bad = [r for r in rows if r["sre_mm"] is None or r["sre_mm"] > BAD_MM]
    good = [r for r in rows if r not in bad]
    return {"n": len(rows), "flagged": sum(r["flagged"] for r in rows), "clean_n": len(good),
            "clean_flagged": sum(r["flagged"] for r in good), "bad_n": len(bad),
            "bad_flagged": sum(r["flagged"] for r in bad)}


def stage_evaluate(args) -> None:
    """Predict, register and score every configuration whose folds are trained."""
    from lmkreg.inference.predictor import LandmarkPredictor
    from lmkreg.io.images import read_image
    from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json
    from lmkreg.run.train import model_folder

    started = time.perf_counter()
    ds = dataset(args)
    names = list(ds.spec.landmarks)
    cases = [c for c in ds.cases("Ts", "MR") if c in ds.cases("Ts", "US")]
    corrupt_cases = cases[:args.corrupt_cases]
    folders = {m: model_folder(ds.name, TRAINER, m) for m in ("MR", "US")}

    def trained(m, f):
        return (folders[m] / f"fold_{f}" / "checkpoint_final.pth").is_file()

    configs = {}
    if all(trained(m, "0") for m in folders):
        configs["fold0"] = (folders, ["0"], True)
        configs["fold0_noTTA"] = (folders, ["0"], False)
    numeric = [f for f in FOLDS[:5] if all(trained(m, f) for m in folders)]
    if len(numeric) >= 2:
        configs[f"ensemble_{len(numeric)}folds"] = (folders, numeric, True)
    if all(trained(m, "all") for m in folders):
        configs["all_cv"] = (folders, ["all"], True)
        configs["all_alone"] = ({m: alone_folder(args.root, f) for m, f in folders.items()}, ["all"], True)
    from lmkreg.dataset.layout import dataset_folder_name
    from lmkreg.inference.cascade import cascade_folders

    cascade_root = args.root / "res" / dataset_folder_name(CASCADE_ID, CASCADE_NAME)
    if all(cascade_folders(cascade_root, TRAINER, m) for m in folders):
        configs["cascade"] = ({m: cascade_root for m in folders}, None, True)
    if args.only:  # re-score some configurations; the others (and the bare files) stay as the results file has them
        configs = {k: v for k, v in configs.items() if k in args.only}
    cds = cascade_dataset(args) if "cascade" in configs else None
    for label, (fold_folders, _, _) in configs.items():
        for m, f in fold_folders.items():
            if label == "cascade":
                for stage in cascade_folders(cascade_root, TRAINER, m):
                    refresh_statistics(stage, cds)
            else:
                refresh_statistics(f, ds)
    if not configs:
        raise SystemExit("no configuration is trained yet: run the train stage")
    log(f"configurations: {', '.join(configs)}; {len(cases)} test pairs, corruptions on {len(corrupt_cases)}")
    refs = references(ds, cases, args.root)
    families = protocol_families(args)  # kind -> (dataset, cases): another scanner's images, true answers known
    for kind, (fds, fcases) in families.items():
        refs.update({(kind, c): r for c, r in references(fds, fcases, args.root).items()})
    family_inputs = {(kind, c, m): (read_image(fds.image_path(c, m, "Ts")), read_lmkreg_json(fds.landmarks_path(c, m, "Ts")))
                     for kind, (fds, fcases) in families.items() for c in fcases for m in ("MR", "US")}
    truth = {(c, m): read_lmkreg_json(ds.landmarks_path(c, m, "Ts")) for c in cases for m in ("MR", "US")}
    images = {(c, m): read_image(ds.image_path(c, m, "Ts")) for c in cases for m in ("MR", "US")}
    rng = np.random.default_rng(args.seed)
    variants = {(c, m, k): corrupt(k, images[(c, m)], images[(c, "US" if m == "MR" else "MR")], rng)
                for k in CORRUPTIONS for c in corrupt_cases for m in ("MR", "US")}
    results: dict = {"command": "python benchmarks/trust_benchmark.py " + " ".join(sys.argv[1:]),
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                              text=True).stdout.strip(),
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "configurations": {}}
    last_landmarks = None
    for label, (fold_folders, folds, tta) in configs.items():
        t0 = time.perf_counter()
        preds: dict = {}
        case_rows: dict = {"clean": []}
        examples: dict = {}
        for m in ("MR", "US"):
            if label == "cascade":  # lmkreg_predict's own choice: both stages trained -> the cascade
                from lmkreg.inference.cascade import build_predictor

                predictor = build_predictor(fold_folders[m], TRAINER, m, mirror_tta=tta)
                folds = list(predictor.folds)
            else:
                predictor = LandmarkPredictor(fold_folders[m], folds, mirror_tta=tta)
            for c in cases:
                p = predictor.predict(images[(c, m)])
                preds[(c, m, "clean")] = p.with_extras()
                case_rows["clean"].append(case_row(p, truth[(c, m)], names, m))
                if p.error_estimate and (m, "clean") not in examples:
                    examples[(m, "clean")] = p.error_estimate.get("calibration_source")
            for kind, (_, fcases) in families.items():
                case_rows.setdefault(kind, [])
                for c in fcases:
                    image, family_truth = family_inputs[(kind, c, m)]
                    p = predictor.predict(image)
                    preds[(c, m, kind)] = p.with_extras()
                    case_rows[kind].append(case_row(p, family_truth, names, m))
            for k in CORRUPTIONS:
                case_rows.setdefault(k, [])
                for c in corrupt_cases:
                    p = predictor.predict(variants[(c, m, k)])
                    preds[(c, m, k)] = p.with_extras()
                    case_rows[k].append(case_row(p, None if k == "other_modality" else truth[(c, m)], names, m))
        pair_rows: dict = {"clean": [pair_row(preds[(c, "MR", "clean")], preds[(c, "US", "clean")], names, refs[c])
                                     for c in cases]}
        pair_rows["other_patient"] = [pair_row(preds[(c, "MR", "clean")],
                                               preds[(cases[(i + 1) % len(cases)], "US", "clean")], names, None)
                                      for i, c in enumerate(cases)]
        for k in CORRUPTIONS:
            pair_rows[k] = ([pair_row(preds[(c, "MR", k)], preds[(c, "US", "clean")], names,
                                      None if k == "other_modality" else refs[c]) for c in corrupt_cases]
                            + [pair_row(preds[(c, "MR", "clean")], preds[(c, "US", k)], names,
                                        None if k == "other_modality" else refs[c]) for c in corrupt_cases])
        for kind, (fds, fcases) in families.items():
            pair_rows[kind] = [pair_row(preds[(c, "MR", kind)], preds[(c, "US", kind)], names, refs[(kind, c)])
                               for c in fcases]
        block = {"folds": folds, "mirror_tta": tta, "model_folders": {m: str(f) for m, f in fold_folders.items()},
                 "calibration_source": {m: examples.get((m, "clean")) for m in ("MR", "US")},
                 "cases": {k: summarise_cases(v) for k, v in case_rows.items()},
                 "pairs": {k: summarise_pairs(v) for k, v in pair_rows.items()},
                 "clean_pair_flags": [r["flags"] for r in pair_rows["clean"] if r["flagged"]],
                 "clean_case_flags": [r["flags"] for r in case_rows["clean"] if r["flagged"]],
                 "seconds": time.perf_counter() - t0}
        results["configurations"][label] = block
        log(f"{label}: clean cases {block['cases']['clean']}, clean pairs {block['pairs']['clean']} "
            f"({block['seconds']:.0f} s)")
        # bare files come from the configuration whose clean predictions are most accurate
        if tta and (last_landmarks is None or block["cases"]["clean"]["bad_n"] < last_landmarks[2]):
            last_landmarks = (label, {k: v for k, v in preds.items() if k[2] == "clean"},
                              block["cases"]["clean"]["bad_n"])
    # bare files: the best configuration's clean predictions, stripped; and a 15 mm error on one landmark
    source, clean = last_landmarks[:2] if last_landmarks else (None, None)
    if clean and not args.only:
        bare_clean = [pair_row(strip(clean[(c, "MR", "clean")]), strip(clean[(c, "US", "clean")]), names, refs[c])
                      for c in cases]
        erred = []
        for i, c in enumerate(cases):
            m, n = ("MR", "US")[i % 2], names[i % len(names)]
            pts = dict(clean[(c, m, "clean")].points)
            d = rng.normal(size=3)
            pts[n] = pts[n] + 15.0 * d / np.linalg.norm(d)
            mr = strip(clean[(c, "MR", "clean")]) if m == "US" else LandmarkSet(pts)
            us = strip(clean[(c, "US", "clean")]) if m == "MR" else LandmarkSet(pts)
            erred.append(pair_row(mr, us, names, refs[c]))
        other = [pair_row(strip(clean[(c, "MR", "clean")]), strip(clean[(cases[(i + 1) % len(cases)], "US", "clean")]),
                          names, None) for i, c in enumerate(cases)]
        results["configurations"]["bare"] = {
            "from": f"{source}'s clean predictions with the trust block stripped",
            "pairs": {"clean": summarise_pairs(bare_clean), "one_landmark_15mm": summarise_pairs(erred),
                      "other_patient": summarise_pairs(other)},
            "one_landmark_15mm_missed": [r["sre_mm"] for r in erred if not r["flagged"]],
            "clean_pair_flags": [r["flags"] for r in bare_clean if r["flagged"]]}
        log(f"bare: {results['configurations']['bare']['pairs']}")
    results["seconds"] = time.perf_counter() - started
    if args.only and RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        old["configurations"].update(results["configurations"])
        old["rescored"] = {**old.get("rescored", {}), **{k: {"command": results["command"], "commit": results["commit"]}
                                                         for k in results["configurations"]}}
        results = {**old, "notes": NOTES}
    results["notes"] = NOTES
    if args.no_write:  # a scratch copy under --root, the repository's files untouched
        scratch = args.root / "outputs" / "trust_scratch.json"
        scratch.write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.root / "outputs" / "benchmark_trust_scratch.md").write_text(report(results))
        log(f"wrote {scratch}")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    REPORT.write_text(report(results))
    log(f"wrote {RESULTS} and {REPORT}")


TARGET_CLEAN, TARGET_BAD, TARGET_COVERAGE = 0.10, 0.95, (0.85, 0.95)
NOTES = Path(__file__).with_name("trust_benchmark_notes.md").read_text() \
    if Path(__file__).with_name("trust_benchmark_notes.md").is_file() else ""


def _share(k: int, n: int) -> str:
    return "n/a" if not n else f"{k}/{n} ({100 * k / n:.0f} %)"


def _miss_clean(k: int, n: int) -> str:
    return "" if not n or k / n <= TARGET_CLEAN else f" **missed by {100 * (k / n - TARGET_CLEAN):.0f} pp**"


def _miss_bad(k: int, n: int) -> str:
    return "" if not n or k / n >= TARGET_BAD else f" **missed by {100 * (TARGET_BAD - k / n):.0f} pp**"


def _mre(summary: Optional[dict]) -> str:
    """A case summary's mean landmark error, or blank (other-modality inputs; rows scored before
    the error was recorded)."""
    mre = (summary or {}).get("mre_mm") or {}
    return " / ".join("-" if mre.get(m) is None else f"{mre[m]:.2f}" for m in ("MR", "US")) if mre else ""


def accuracy_table(res: dict) -> list[str]:
    """Mean landmark error per configuration on the clean test cases and on the protocol families
    the models never saw: the issue-27 comparison of a single fold with the ensemble (and fold
    `all`), on the same cases."""
    labels = [k for k, b in res["configurations"].items() if k != "bare"]
    inputs = ["clean", *[f for f in FAMILY_DATASETS if any(f in res["configurations"][k]["cases"] for k in labels)]]
    if not any(_mre(res["configurations"][k]["cases"].get(i)) for k in labels for i in inputs):
        return []
    out = ["## Accuracy per configuration", "",
           "Mean landmark error (mm, MR / US) of each configuration on the same inputs: the clean "
           "test cases (the training generator) and the protocol families no configuration was trained on "
           "(single fold vs 5-fold ensemble vs fold `all`).  Blank: the row was scored before errors were "
           "recorded.", "", "| input | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for i in inputs:
        out.append(f"| {i} | " + " | ".join(_mre(res["configurations"][k]["cases"].get(i)) for k in labels) + " |")
    return out + [""]


def report(res: dict) -> str:
    lines = ["# Trust benchmark (issue 26)", "",
             f"Command: `{res['command']}`; commit {res['commit']}; {res['seconds'] / 60:.1f} min for the evaluation "
             f"stage.  Settings: {json.dumps({k: res['settings'][k] for k in ('train', 'test', 'preset', 'epochs', 'iterations', 'corrupt_cases')})}.",
             "",
             f"Targets: clean cases and pairs at most {TARGET_CLEAN:.0%} flagged; bad cases (a landmark > {BAD_MM:g} mm) "
             f"and pairs (SRE > {BAD_MM:g} mm) at least {TARGET_BAD:.0%} flagged; coverage of the 90 % radii "
             f"{TARGET_COVERAGE[0]:.0%}-{TARGET_COVERAGE[1]:.0%}.  'clean' / 'bad' split each input by its own "
             f"measured error; corrupted inputs are listed by kind (all of them, then those whose error is > 5 mm).", ""]
    lines += accuracy_table(res)
    for label, b in res["configurations"].items():
        lines += [f"## {label}", ""]
        if label in res.get("rescored", {}):
            lines += [f"Re-scored: `{res['rescored'][label]['command']}`, commit {res['rescored'][label]['commit']}.", ""]
        if label == "bare":
            lines.append(f"{b['from']}.")
            lines.append("")
            lines += ["| pairs | flagged | clean flagged | bad flagged |", "|---|---|---|---|"]
            for k, v in b["pairs"].items():
                lines.append(f"| {k} | {_share(v['flagged'], v['n'])} | {_share(v['clean_flagged'], v['clean_n'])}"
                             f"{_miss_clean(v['clean_flagged'], v['clean_n']) if k == 'clean' else ''} | "
                             f"{_share(v['bad_flagged'], v['bad_n'])}{_miss_bad(v['bad_flagged'], v['bad_n'])} |")
            lines.append("")
            continue
        lines.append(f"Folds {', '.join(b['folds'])}, mirror TTA {'on' if b['mirror_tta'] else 'off'}; error estimate: "
                     f"MR: {b['calibration_source']['MR']}; US: {b['calibration_source']['US']}.")
        lines += ["", "| input | cases flagged | clean cases flagged | bad cases flagged | coverage | MRE MR / US (mm) | pairs flagged | "
                      "clean pairs flagged | bad pairs flagged |", "|---|---|---|---|---|---|---|---|---|"]
        for k in ["clean", *CORRUPTIONS, "other_patient", *[f for f in FAMILY_DATASETS if f in b["cases"]]]:
            c, p = b["cases"].get(k), b["pairs"].get(k)
            cov = "" if not c or c["coverage"] is None else f"{100 * c['coverage']:.0f} % of {c['coverage_n']}"
            if c and c["coverage"] is not None and k == "clean" and not TARGET_COVERAGE[0] <= c["coverage"] <= TARGET_COVERAGE[1]:
                cov += " **outside target**"
            cells = ([_share(c["flagged"], c["n"]),
                      _share(c["clean_flagged"], c["clean_n"]) + (_miss_clean(c["clean_flagged"], c["clean_n"]) if k == "clean" else ""),
                      _share(c["bad_flagged"], c["bad_n"]) + _miss_bad(c["bad_flagged"], c["bad_n"]), cov,
                      _mre(c)] if c
                     else ["", "", "", "", ""])
            cells += ([_share(p["flagged"], p["n"]),  # targets: clean and bad columns (a corrupted input may stay accurate)
                       _share(p["clean_flagged"], p["clean_n"]) + (_miss_clean(p["clean_flagged"], p["clean_n"]) if k == "clean" else ""),
                       _share(p["bad_flagged"], p["bad_n"]) + _miss_bad(p["bad_flagged"], p["bad_n"])] if p
                      else ["", "", ""])
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [res.get("notes", "")]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "evaluate", "report"],
                   help="report: rewrite documentation/benchmark_trust.md from the results file and the notes")
    p.add_argument("--root", type=Path, default=Path("/work/trustbench"),
                   help="LMKREG_raw/preprocessed/results and the outputs go under this folder")
    p.add_argument("--train", type=int, default=30, help="training pairs (default 30)")
    p.add_argument("--test", type=int, default=20, help="test pairs (default 20)")
    p.add_argument("--preset", default="tiny", help="phantom preset (default tiny, the demo's --quick size)")
    p.add_argument("--epochs", type=int, default=12, help="epochs per fold and modality (default 12)")
    p.add_argument("--iterations", type=int, default=20, help="steps per epoch (default 20)")
    p.add_argument("--workers", type=int, default=1, help="data worker processes (default 1)")
    p.add_argument("--seed", type=int, default=2026, help="phantom and training seed (default 2026)")
    p.add_argument("--modalities", nargs="+", default=["MR", "US"], help="train stage: modalities (default MR US)")
    p.add_argument("--folds", nargs="*", default=FOLDS, help="train stage: folds in this order (default 0-4 all)")
    p.add_argument("--cascade-folds", nargs="*", default=[],
                   help="train stage: folds of the cascade's localizer and refine stages (default none)")
    p.add_argument("--corrupt-cases", type=int, default=10, help="test cases per corruption (default 10)")
    p.add_argument("--families", type=Path, default=None, metavar="RAW",
                   help="the cross-domain benchmark's raw folder (e.g. ~/lmkreg_xdomain/raw): score its four protocol "
                        "families' test pairs as domain-shifted inputs")
    p.add_argument("--only", nargs="+", default=None, metavar="CONFIG",
                   help="evaluate: re-score only these configurations (e.g. cascade) into the existing results file")
    p.add_argument("--no-write", action="store_true", help="do not write the results and report files")
    args = p.parse_args()
    use_root(args.root)
    if args.stage == "report":
        res = json.loads(RESULTS.read_text())
        res["notes"] = NOTES
        REPORT.write_text(report(res))
    elif args.stage == "train":
        stage_train(args)
    else:
        stage_evaluate(args)


if __name__ == "__main__":
    main()
