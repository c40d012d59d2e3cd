"""Landmark weight of the surface refinement across protocol families (issue 27, "defaults decided
across domains"): which ``lmkreg_register --refine surface --landmark-weight W`` default.

No model is fitted.  For every case (training and test, 12 + 6 per family) of the four phantom
protocol families of the cross-domain benchmark (benchmarks/cross_domain_benchmark.py, folders
Dataset970_FamA .. Dataset973_FamD under --root/raw, documentation/phantoms.md):

* landmarks, source ``simulated``: the true landmarks plus errors like a trained model's, drawn
  independently per modality and landmark: isotropic Gaussian with RMS 2.0 mm (MR) / 3.0 mm (US)
  per landmark (sigma per coordinate RMS/sqrt(3)), and with probability 0.1 per landmark an outlier
  instead: 8-10 mm (uniform) in a uniformly random direction.  ``--draws`` draws per case.
* landmarks, source ``cross_domain``: for a test case of family H, the predictions of the models that
  never saw H (--root/outputs/pred/Dataset98{H}_XDomain{H}/HeatmapMatchingTrainer__MR|US/), when
  that held-out run has written them.
* masks: ``perturbed``: each true gland mask eroded or dilated by a smooth random amount, MR and US
  independently (:func:`perturb_mask`: the mask's signed distance map is thresholded at a smooth
  random offset field of Gaussian noise smoothed over 10 mm plus a random over/under-segmentation
  bias, scaled so that the Dice with the true mask is a target drawn uniformly in [0.90, 0.93],
  like a segmentation network's error that is regional, not voxel noise); ``true``: the unperturbed
  masks (control).
* the landmark fit as lmkreg_register / lmkreg_evaluate do it (lmkreg.registration.pair_fit.fit_pair),
  then ``refine_on_surfaces`` with SurfaceSettings(landmark_weight=W) for W in --weights, the same
  surface samples (settings seed 0) for every W; the transform used is the refinement's (the
  landmark one when refused, a rescue when rescued), as lmkreg_register uses it.
* scored as lmkreg_evaluate scores it: SRE = mean distance between the reference and the tested
  map over 5000 points of the TRUE MR surface, the reference being lmkreg.evaluation.evaluate.
  reference_registration (ICP of the true MR onto the true US surface started from the true-landmark
  fit), residual rotation against it, whether the refinement was accepted, and its time.

Decision rule (written before any number was seen): the default DEFAULT_LANDMARK_WEIGHT (0.0)
changes to W only if W beats 0.0 in mean SRE on every one of the four families (a tie, a mean SRE
not lower but less than 0.05 mm higher, allowed on at most one family) and does not raise the share of residual rotations
>= 10 degrees on any family.  Judged on the primary condition: simulated landmarks + perturbed
masks (all 18 cases x draws per family), the condition a user with predicted landmarks and
predicted masks is in.  If several weights pass, the one with the lowest mean SRE over the four
families.  The cross-domain predictions and the true-mask control are reported beside it.

    nice -n 10 python benchmarks/surface_weight_benchmark.py --root /work/xd2 --draws 1 --workers 2

Writes benchmarks/results/surface_weight.json (--out to change).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Optional

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
import SimpleITK as sitk

from lmkreg.evaluation.metrics import dice as mask_dice

from _common import icp_reference, log  # benchmarks/_common.py (run as a script: on sys.path)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "surface_weight.json"
FAMILIES = ("FamA", "FamB", "FamC", "FamD")
POOL_ID = 970  # + family index, as benchmarks/cross_domain_benchmark.py
LOFO_ID = 980
TRAINER = "HeatmapMatchingTrainer"
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5)
LANDMARK_RMS_MM = {"MR": 2.0, "US": 3.0}
OUTLIER_PROBABILITY = 0.1
OUTLIER_RANGE_MM = (8.0, 10.0)
DICE_RANGE = (0.90, 0.93)
SMOOTHING_MM = 10.0
BIAS_SD = 0.5  # over/under-segmentation bias, in units of the field's SD on the surface band
ROTATION_LIMIT_DEG = 10.0
TIE_MM = 0.05


# -- pure helpers (tests/test_surface_weight_benchmark.py) -----------------------------------------

def simulate_landmark_errors(points: np.ndarray, rms_mm: float, rng: np.random.Generator,
                             outlier_probability: float = OUTLIER_PROBABILITY,
                             outlier_range_mm: tuple[float, float] = OUTLIER_RANGE_MM) -> np.ndarray:
    """`points` (N, 3, world LPS mm; NaN rows stay NaN) plus a trained model's kind of error:
    isotropic Gaussian of RMS `rms_mm` per landmark (3D), or with `outlier_probability` an error of
    uniform length in `outlier_range_mm` in a uniformly random direction."""
    pts = np.asarray(points, float)
    err = rng.normal(0.0, rms_mm / math.sqrt(3.0), pts.shape)
    direction = rng.normal(size=pts.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    outlier = rng.random(len(pts)) < outlier_probability
    length = rng.uniform(*outlier_range_mm, len(pts))
    err[outlier] = direction[outlier] * length[outlier, None]
    return pts + err


def perturb_mask(mask: sitk.Image, target_dice: float, seed: int, smoothing_mm: float = SMOOTHING_MM,
                 bias_sd: float = BIAS_SD) -> sitk.Image:
    """A segmentation network's kind of error on a true gland mask: the surface moved in or out by a
    smooth random amount (millimetres varying over ~`smoothing_mm`), scaled so that the Dice with
    `mask` is `target_dice` (within about 0.002).

    The mask's signed distance map d (mm, negative inside; scipy's exact Euclidean distance to the
    nearest voxel of the other side) is thresholded at s * f, f = a random bias
    (over- or under-segmentation, N(0, bias_sd)) + Gaussian noise smoothed with `smoothing_mm` and
    normalised to SD 1 within 3 mm of the surface; s is found by bisection (the Dice falls
    monotonically with s: the voxels that change are those with d between 0 and s * f).  Same
    geometry as `mask`; deterministic in `seed`."""
    from scipy.ndimage import distance_transform_edt

    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    truth = sitk.GetArrayFromImage(binary).astype(bool)
    if not truth.any():
        raise ValueError("perturb_mask: the mask is empty")
    spacing = binary.GetSpacing()[::-1]  # (z, y, x) mm
    # distance of each voxel centre to the nearest voxel of the other side (never 0): at s = 0 nothing
    # changes, and each voxel flips at its own s (no whole boundary layer at once)
    dist = np.where(truth, -distance_transform_edt(truth, sampling=spacing),
                    distance_transform_edt(~truth, sampling=spacing))
    rng = np.random.default_rng(seed)
    noise = sitk.GetImageFromArray(rng.normal(size=truth.shape).astype(np.float32))
    noise.CopyInformation(binary)
    field = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, smoothing_mm)).astype(float)
    band = np.abs(dist) < 3.0
    field = (field - field[band].mean()) / max(field[band].std(), 1e-12) + rng.normal(0.0, bias_sd)

    def dice_at(s: float) -> tuple[float, np.ndarray]:
        out = dist < s * field
        return mask_dice(out, truth), out

    lo, hi = 0.0, 1.0
    while dice_at(hi)[0] > target_dice and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if dice_at(mid)[0] > target_dice:
            lo = mid
        else:
            hi = mid
    out = sitk.GetImageFromArray(dice_at(hi)[1].astype(np.uint8))
    out.CopyInformation(binary)
    return out


def paired(base: np.ndarray, other: np.ndarray) -> dict:
    """Weight 0 (`base`) vs another weight on the same cases: mean difference (other - base, mm),
    wins/losses/ties of `other` (lower SRE wins; |diff| < 1e-6 mm ties) and the Wilcoxon signed-rank
    p (scipy, two-sided, zero differences dropped)."""
    from scipy.stats import wilcoxon

    d = np.asarray(other, float) - np.asarray(base, float)
    out = {"n": int(len(d)), "mean_diff_mm": float(d.mean()) if len(d) else None,
           "wins": int((d < -1e-6).sum()), "losses": int((d > 1e-6).sum()), "ties": int((np.abs(d) <= 1e-6).sum())}
    try:
        out["wilcoxon_p"] = float(wilcoxon(d, zero_method="wilcox").pvalue) if (np.abs(d) > 1e-6).sum() >= 2 else None
    except ValueError:
        out["wilcoxon_p"] = None
    return out


def decide(per_family: dict, weights=WEIGHTS) -> dict:
    """The decision rule of the module doc on per_family[family][weight] = {"sre_mean", "rot10_share"}
    (weights as strings).  Returns {"weight": chosen or None, "why": {weight: reason}}."""
    why, passing = {}, []
    for w in weights[1:]:
        ties, fails = [], []
        for fam, rows in per_family.items():
            base, cand = rows[f"{weights[0]:g}"], rows[f"{w:g}"]
            if cand["rot10_share"] > base["rot10_share"] + 1e-12:
                fails.append(f"{fam}: rotations >= {ROTATION_LIMIT_DEG:g} deg {base['rot10_share']:.3f} -> "
                             f"{cand['rot10_share']:.3f}")
            diff = cand["sre_mean"] - base["sre_mean"]
            if diff >= TIE_MM:
                fails.append(f"{fam}: mean SRE {base['sre_mean']:.3f} -> {cand['sre_mean']:.3f} mm")
            elif diff > -1e-9:
                ties.append(fam)
        if len(ties) > 1:
            fails.append(f"ties (within {TIE_MM} mm, not better) on {len(ties)} families: {', '.join(ties)}")
        why[f"{w:g}"] = "; ".join(fails) if fails else "passes"
        if not fails:
            passing.append(w)
    chosen = min(passing, key=lambda w: np.mean([r[f"{w:g}"]["sre_mean"] for r in per_family.values()])) \
        if passing else None
    return {"weight": chosen, "why": why}


# -- the run ------------------------------------------------------------------------------------

def share_surface_samples() -> None:
    """refine_on_surfaces samples both surfaces per call; the samples depend on the surfaces and the
    settings' seed / point counts only, not on the landmark weight, so they are drawn once per pair of
    surfaces here (the same points for every weight: a paired comparison, and 0.5 s saved per call)."""
    import lmkreg.registration.surface as surface

    original, memo = surface.sample_surfaces, {}

    def shared(mr, us, settings):
        key = (id(mr), id(us), settings.seed, settings.source_points, settings.target_points)
        if key not in memo:
            memo.clear()  # one pair of surfaces at a time
            memo[key] = (mr, us, original(mr, us, settings))  # mr, us kept alive: their ids stay unique
        return memo[key][2]

    surface.sample_surfaces = shared


def reference(mr_mask: sitk.Image, us_mask: sitk.Image, truth: dict, names: list[str]):
    """lmkreg_evaluate's reference and the 5000 true MR surface points SRE is measured on."""
    from lmkreg.geometry.mesh import mask_to_mesh, surface_points

    mr_mesh, us_mesh = mask_to_mesh(mr_mask), mask_to_mesh(us_mask)
    return icp_reference(mr_mesh, us_mesh, truth["MR"], truth["US"], names), surface_points(mr_mesh, 5000)


def score_source(lm: dict, names: list[str], surfaces: dict, ref, pts, weights) -> dict:
    """Landmark fit, then the refinement per weight on each mask condition: SRE, rotation, accepted."""
    from lmkreg.errors import InputError
    from lmkreg.evaluation.metrics import residual_rotation_deg, surface_registration_error
    from lmkreg.registration.icp import SurfaceSettings
    from lmkreg.registration.pair_fit import fit_pair
    from lmkreg.registration.surface import refine_on_surfaces

    try:
        fit = fit_pair(lm["MR"], lm["US"], names)
    except InputError as exc:
        return {"skipped": f"no landmark fit: {exc.problem}"}
    t0 = fit.transform
    out: dict = {"landmarks": {"sre_mm": surface_registration_error(pts, ref, t0),
                               "rotation_deg": residual_rotation_deg(ref, t0)}, "fit_names": list(fit.names)}
    pairs = (lm["MR"].to_array(fit.names), lm["US"].to_array(fit.names))
    for cond, (mr, us) in surfaces.items():
        rows = {}
        for w in weights:
            t = time.perf_counter()
            r = refine_on_surfaces(t0, mr, us, SurfaceSettings(landmark_weight=w), pairs, fit.names)
            seconds = time.perf_counter() - t
            rows[f"{w:g}"] = {"sre_mm": surface_registration_error(pts, ref, r.transform),
                              "rotation_deg": residual_rotation_deg(ref, r.transform), "accepted": r.accepted,
                              "rescued": r.rescued, "beyond_bound": r.beyond_bound, "seconds": seconds}
        out[cond] = rows
    return out


def run_case(ds, case: str, split: str, fam: int, draws: int, weights, pred_dirs: Optional[dict]) -> dict:
    from lmkreg.io.images import read_image
    from lmkreg.io.landmark_files import read_landmarks
    from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json
    from lmkreg.registration.icp import gland_surface

    names = list(ds.spec.landmarks)
    truth = {m: read_lmkreg_json(ds.landmarks_path(case, m, split)) for m in ("MR", "US")}
    masks = {m: read_image(ds.mask_path(case, m, split), is_mask=True) for m in ("MR", "US")}
    ref, pts = reference(masks["MR"], masks["US"], truth, names)
    base_seed = 100000 * fam + 1000 * int(case.rsplit("_", 1)[1])
    rng = np.random.default_rng(base_seed)
    target = {m: float(rng.uniform(*DICE_RANGE)) for m in ("MR", "US")}
    perturbed = {m: perturb_mask(masks[m], target[m], base_seed + i) for i, m in enumerate(("MR", "US"))}
    dice = {m: mask_dice(sitk.GetArrayFromImage(perturbed[m]) > 0, sitk.GetArrayFromImage(masks[m]) > 0)
            for m in ("MR", "US")}
    surfaces = {"perturbed": (gland_surface(perturbed["MR"], "perturbed MR"), gland_surface(perturbed["US"], "perturbed US")),
                "true": (gland_surface(masks["MR"], "true MR"), gland_surface(masks["US"], "true US"))}
    row = {"family": FAMILIES[fam], "case": case, "split": split, "mask_dice": dice, "sources": {}}
    for d in range(draws):
        lm = {}
        for m in ("MR", "US"):
            arr = simulate_landmark_errors(truth[m].to_array(names), LANDMARK_RMS_MM[m], rng)
            lm[m] = LandmarkSet({n: (None if not np.all(np.isfinite(p)) else p) for n, p in zip(names, arr)})
        row["sources"][f"simulated_{d}"] = score_source(lm, names, surfaces, ref, pts, weights)
    if pred_dirs:
        files = {m: pred_dirs[m] / f"{case}_{m}.json" for m in ("MR", "US")}
        if all(f.is_file() for f in files.values()):
            lm = {m: read_landmarks(f) for m, f in files.items()}
            errs = {m: [float(np.linalg.norm(lm[m].points[n] - truth[m].points[n])) for n in names
                        if lm[m].points.get(n) is not None and truth[m].points.get(n) is not None] for m in lm}
            row["sources"]["cross_domain"] = {**score_source(lm, names, surfaces, ref, pts, weights),
                                              "mre_mm": {m: float(np.mean(e)) if e else None for m, e in errs.items()}}
    return row


def summarise(rows: list[dict], weights) -> dict:
    """Per source kind (simulated / cross_domain), mask condition, family and weight."""
    out: dict = {}
    for kind in ("simulated", "cross_domain"):
        for cond in ("perturbed", "true"):
            block: dict = {}
            for fam in FAMILIES:
                items = [s for r in rows if r["family"] == fam for k, s in r["sources"].items()
                         if k.startswith(kind) and cond in s]
                if not items:
                    continue
                fb: dict = {"n": len(items),
                            "landmarks_only": {"sre_mean": float(np.mean([s["landmarks"]["sre_mm"] for s in items])),
                                               "rotation_mean": float(np.mean([s["landmarks"]["rotation_deg"]
                                                                               for s in items]))}}
                base = np.array([s[cond][f"{weights[0]:g}"]["sre_mm"] for s in items])
                for w in weights:
                    sel = [s[cond][f"{w:g}"] for s in items]
                    sre = np.array([x["sre_mm"] for x in sel])
                    rot = np.array([x["rotation_deg"] for x in sel])
                    fb[f"{w:g}"] = {"sre_mean": float(sre.mean()), "sre_median": float(np.median(sre)),
                                    "rotation_mean": float(rot.mean()),
                                    "rot10_share": float(np.mean(rot >= ROTATION_LIMIT_DEG)),
                                    "accepted_share": float(np.mean([x["accepted"] for x in sel])),
                                    "rescued_share": float(np.mean([x["rescued"] for x in sel])),
                                    "seconds_median": float(np.median([x["seconds"] for x in sel]))}
                    if w != weights[0]:
                        fb[f"{w:g}"]["vs_0"] = paired(base, sre)
                block[fam] = fb
            if block:
                out[f"{kind}/{cond}"] = block
    return out


def _task(task: tuple) -> dict:
    from lmkreg.dataset.layout import Dataset

    folder, case, split, fam, draws, weights, pred_dirs = task
    return run_case(Dataset(folder), case, split, fam, draws, weights, pred_dirs)


def _line(row: dict) -> str:
    s = row["sources"]["simulated_0"]
    msg = "skipped" if "skipped" in s else " ".join(f"{w}:{s['perturbed'][w]['sre_mm']:.2f}" for w in s["perturbed"])
    return (f"{row['case']}: Dice MR {row['mask_dice']['MR']:.3f} US {row['mask_dice']['US']:.3f}; perturbed SRE "
            f"{msg}{' (+cross-domain)' if 'cross_domain' in row['sources'] else ''}")


def main() -> None:
    from multiprocessing import get_context

    from lmkreg.dataset.layout import Dataset, dataset_folder_name

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path.home() / "lmkreg_xdomain", help="the cross-domain benchmark's --root (raw/, outputs/; default ~/lmkreg_xdomain, as that benchmark)")
    p.add_argument("--draws", type=int, default=1, help="simulated landmark draws per case")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    p.add_argument("--cases", type=int, default=None, help="at most this many cases per family (a quick look)")
    p.add_argument("--workers", type=int, default=2, help="processes (cases in parallel)")
    p.add_argument("-o", "--out", type=Path, default=RESULTS)
    args = p.parse_args()
    weights = tuple(args.weights)
    if weights[0] != 0.0:
        p.error("the first weight must be 0 (the baseline of the paired comparison)")
    started = time.time()
    old = {}  # rows of an earlier run with the same settings: kept unless cross-domain predictions appeared
    if args.out.is_file():
        prev = json.loads(args.out.read_text())
        if prev.get("weights") == list(weights) and prev.get("draws") == args.draws:
            old = {r["case"]: r for r in prev.get("cases", [])}
    tasks, rows = [], []
    for fam in range(len(FAMILIES)):
        folder = args.root / "raw" / dataset_folder_name(POOL_ID + fam, FAMILIES[fam])
        ds = Dataset(folder)
        pred_root = args.root / "outputs" / "pred" / dataset_folder_name(LOFO_ID + fam, f"XDomain{FAMILIES[fam][-1]}")
        pred_dirs = {m: pred_root / f"{TRAINER}__{m}" for m in ("MR", "US")}
        cases = [(c, "Tr") for c in ds.cases("Tr")] + [(c, "Ts") for c in ds.cases("Ts")]
        for case, split in cases[:args.cases]:
            preds = pred_dirs if split == "Ts" else None
            has_pred = preds is not None and all((preds[m] / f"{case}_{m}.json").is_file() for m in ("MR", "US"))
            if case in old and ("cross_domain" in old[case]["sources"] or not has_pred):
                rows.append(old[case])
            else:
                tasks.append((folder, case, split, fam, args.draws, weights, preds))
    log(f"{len(rows)} case(s) kept from {args.out}, {len(tasks)} to run in {args.workers} process(es)")
    with get_context("spawn").Pool(args.workers, initializer=share_surface_samples) as pool:
        for row in pool.imap_unordered(_task, tasks):
            rows.append(row)
            log(_line(row))
    rows.sort(key=lambda r: r["case"])
    summary = summarise(rows, weights)
    primary = summary.get("simulated/perturbed", {})
    decision = decide(primary, weights) if len(primary) == len(FAMILIES) else {"weight": None,
                                                                                "why": "not every family run"}
    from lmkreg.io.atomic import atomic_write_json
    atomic_write_json(args.out, {
        "command": "nice -n 10 python benchmarks/surface_weight_benchmark.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("root", args.root), ("draws", args.draws), ("workers", args.workers))),
        "machine": platform.platform(), "seconds": time.time() - started, "weights": list(weights), "draws": args.draws,
        "landmark_errors": {"rms_mm": LANDMARK_RMS_MM, "outlier_probability": OUTLIER_PROBABILITY,
                            "outlier_range_mm": list(OUTLIER_RANGE_MM)},
        "mask_perturbation": {"dice_range": list(DICE_RANGE), "smoothing_mm": SMOOTHING_MM, "bias_sd": BIAS_SD},
        "decision_rule": "change the default only if one weight beats 0 in mean SRE on all four families (a tie "
                         f"within {TIE_MM} mm on at most one) and raises the share of rotations >= "
                         f"{ROTATION_LIMIT_DEG:g} deg on none; judged on simulated landmarks + perturbed masks",
        "decision": decision, "summary": summary, "cases": rows})
    print(json.dumps({"decision": decision, "summary": summary}, indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
