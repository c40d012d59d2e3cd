"""Evaluate predicted landmarks and the registrations they give, per case and in summary.

For every test case with MR and US ground truth:

* MRE per landmark and modality (predicted vs true landmarks, world mm);
* registration from predicted landmarks (Kabsch) and from the true ("manual") landmarks;
* reference rigid map = ICP between the MR and US prostate meshes, started from the manual
  landmark registration (the paper's ground truth).  When the manual registration is
  impossible (fewer than 3 landmarks annotated in both modalities, e.g. a partial TRUS view)
  ICP is started from several poses built from the meshes alone and the best fit is kept;
* SRE and residual rotation of both registrations against the reference; Dice of the MR mask
  mapped into US space against the US mask;
* with predicted prostate masks (a segmentation model): their Dice and surface distances, and the
  surface-refined and landmarks+surface registrations (lmkreg.evaluation.predicted_masks).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lmkreg.dataset.layout import Dataset
from lmkreg.errors import InputError, LmkregError
from lmkreg.evaluation.metrics import (icp_rigid, radial_errors, registration_dice, residual_rotation_deg,
                                       surface_registration_error)
from lmkreg.geometry.mesh import mask_to_mesh, surface_points
from lmkreg.geometry.rigid import RigidTransform
from lmkreg.io.images import read_image
from lmkreg.io.landmarks import LandmarkSet, read_lmkreg_json
from lmkreg.registration.landmark_fit import register_landmarks
from lmkreg.io.transform_json import read_rigid_transform
from lmkreg.io.landmark_files import LANDMARK_SUFFIXES
from scipy.spatial.transform import Rotation
import trimesh
from scipy.spatial import cKDTree
from lmkreg.evaluation import predicted_masks as pm
from lmkreg.io.landmark_files import read_landmarks
from lmkreg.registration.pair_fit import fit_pair
from lmkreg.evaluation.metrics import radius_coverage, roc_auc
from lmkreg.parallel import parallel_map
from lmkreg.evaluation.metrics import success_rates
from lmkreg.evaluation.predicted_masks import mask_summary
from lmkreg.evaluation.predicted_masks import VARIANT_KEYS
from lmkreg.evaluation.segmentation import SEGMENTATION_KEYS

MODALITIES = ("MR", "US")
METRIC_KEYS = ("sre_predicted_mm", "sre_manual_mm", "rotation_predicted_deg", "rotation_manual_deg",
               "dice_predicted", "dice_manual", "dice_reference", "reference_fit_mm", "icp_vs_true_transform_mm")
TRANSFORM_KEYS = ("predicted_transform", "manual_transform", "reference_transform")


@dataclass
class CaseResult:
    case: str
    errors_mm: dict[str, dict[str, float]]  # modality -> landmark -> radial error
    sre_predicted_mm: float = float("nan")
    sre_manual_mm: float = float("nan")
    rotation_predicted_deg: float = float("nan")
    rotation_manual_deg: float = float("nan")
    dice_predicted: float = float("nan")
    dice_manual: float = float("nan")
    dice_reference: float = float("nan")
    reference_fit_mm: float = float("nan")  # mean distance of the ICP-mapped MR surface to the US surface
    icp_vs_true_transform_mm: float = float("nan")  # phantoms only: how good the ICP reference is
    predicted_transform: Optional[list] = None  # 4x4 MR->US (world LPS mm) from predicted landmarks
    manual_transform: Optional[list] = None  # 4x4 from the true landmarks
    reference_transform: Optional[list] = None  # 4x4 ICP reference
    notes: list[str] = field(default_factory=list)
    radii_mm: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)  # modality -> landmark -> radius
    flagged: dict[str, dict[str, bool]] = field(default_factory=dict)  # modality -> landmark -> unreliable
    pair_flagged: Optional[bool] = None  # lmkreg_register's pair flag for the predicted landmarks
    registration_landmarks: list[str] = field(default_factory=list)  # those the predicted transform used
    # predicted prostate masks (issue 17; lmkreg.evaluation.predicted_masks): segmentation per modality and
    # the surface-refined / landmarks+surface registrations against the same reference
    segmentation: dict[str, dict] = field(default_factory=dict)  # modality -> Dice, surface distances, volumes
    sre_surface_mm: float = float("nan")
    rotation_surface_deg: float = float("nan")
    dice_surface: float = float("nan")
    sre_landmarks_surface_mm: float = float("nan")
    rotation_landmarks_surface_deg: float = float("nan")
    dice_landmarks_surface: float = float("nan")
    refinement: dict[str, dict] = field(default_factory=dict)  # variant -> accepted, reason, distances, transform

    def mre_mm(self, modality: str) -> float:
        """Mean radial error of this case in one modality (mean over landmarks that have an error)."""
        e = np.asarray(list(self.errors_mm.get(modality, {}).values()), float)
        e = e[np.isfinite(e)]
        return float(e.mean()) if e.size else float("nan")


def find_prediction(folder: Path, case: str, modality: str) -> Optional[Path]:
    """The predicted landmark file of a case in `folder`: CASE_MOD.* (as lmkreg_predict names them)
    or CASE.* (as the trainers' validation folders do), lmkreg .json preferred, else .mrk.json, .fcsv.
    Files under both names are two different predictions of one case: refused, never guessed."""

    folder = Path(folder)
    found = []
    for stem in (f"{case}_{modality}", case):
        for suffix in (".json",) + tuple(s for s in LANDMARK_SUFFIXES if s != ".json"):
            p = folder / f"{stem}{suffix}"
            if p.is_file():
                found.append(p)
                break
    if len(found) == 2:
        raise InputError(found[1], f"a second prediction of case {case!r} (the other is {found[0].name}); "
                                   f"rename or move one of them")
    return found[0] if found else None


_predicted = find_prediction  # old private name


def _mesh_starts(mr_mesh, us_mesh) -> list[RigidTransform]:
    """ICP starting poses from the meshes alone: centroids matched, and the principal axes of the
    MR surface turned onto those of the US surface in the 4 proper (det +1) sign combinations."""
    def axes(mesh) -> np.ndarray:
        v = mesh.vertices - mesh.centroid
        _, vecs = np.linalg.eigh(v.T @ v)
        return vecs[:, ::-1]  # columns: major, middle, minor

    a_mr, a_us = axes(mr_mesh), axes(us_mesh)
    starts = [RigidTransform(np.eye(3), us_mesh.centroid - mr_mesh.centroid)]
    for signs in ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1)):
        r = a_us @ np.diag(signs) @ a_mr.T
        if np.linalg.det(r) < 0:  # eigenvector bases of opposite handedness: flip the minor axis
            r = a_us @ np.diag(signs) @ np.diag([1, 1, -1]) @ a_mr.T
        starts.append(RigidTransform(r, us_mesh.centroid - r @ mr_mesh.centroid))
    return starts


def _pair_starts(mr_pts: np.ndarray, us_pts: np.ndarray, steps: int = 6) -> list[RigidTransform]:
    """ICP starting poses from two landmark pairs: the MR segment turned onto the US segment
    (midpoints matched), then `steps` turns about it (two points leave that angle free)."""

    a, b = mr_pts[1] - mr_pts[0], us_pts[1] - us_pts[0]
    align = Rotation.align_vectors([b], [a])[0]
    axis = b / np.linalg.norm(b)
    starts = []
    for k in range(steps):
        r = (Rotation.from_rotvec(axis * 2 * np.pi * k / steps) * align).as_matrix()
        starts.append(RigidTransform(r, us_pts.mean(0) - r @ mr_pts.mean(0)))
    return starts


def surface_fit_mm(mr_points: np.ndarray, us_tree, transform: RigidTransform) -> float:
    """Mean distance from the mapped MR surface points to the nearest US surface sample."""
    d, _ = us_tree.query(transform.apply(mr_points))
    return float(np.mean(d))


LANDMARK_TOLERANCE_MM = 5.0


def reference_registration(mr_mesh, us_mesh, manual: Optional[RigidTransform] = None,
                           mr_landmarks: Optional[np.ndarray] = None, us_landmarks: Optional[np.ndarray] = None,
                           seed: int = 0) -> tuple[RigidTransform, float]:
    """The paper's ground truth: ICP of the MR onto the US prostate surface.

    Started from the manual-landmark registration when there is one.  Otherwise (fewer than
    3 landmarks annotated in both modalities) ICP runs from several starts: turns about the
    segment of two common landmarks if there are two, else poses from the meshes alone
    (centroids, principal axes).  A smooth gland fits itself nearly as well upside down, so
    the surface fit alone cannot choose: only results that keep the common landmarks within
    LANDMARK_TOLERANCE_MM of the best landmark agreement are eligible, and of those the best
    surface fit wins.  Returns the map and its fit (mean MR-surface to US-surface distance, mm).
    """

    us_pts, _ = trimesh.sample.sample_surface(us_mesh, 30000, seed=seed + 7)
    tree = cKDTree(np.asarray(us_pts))
    mr_pts = surface_points(mr_mesh, 3000, seed + 8)
    if manual is not None:
        t = icp_rigid(mr_mesh, us_mesh, initial=manual, seed=seed)
        return t, surface_fit_mm(mr_pts, tree, t)
    lm_mr = np.empty((0, 3)) if mr_landmarks is None else np.asarray(mr_landmarks, float).reshape(-1, 3)
    lm_us = np.empty((0, 3)) if us_landmarks is None else np.asarray(us_landmarks, float).reshape(-1, 3)
    separated = len(lm_mr) >= 2 and min(np.linalg.norm(lm_mr[1] - lm_mr[0]), np.linalg.norm(lm_us[1] - lm_us[0])) > 1
    starts = _pair_starts(lm_mr[:2], lm_us[:2]) if separated else _mesh_starts(mr_mesh, us_mesh)
    found = []
    for start in starts:  # a coarse ICP from every start, then the chosen one refined
        t = icp_rigid(mr_mesh, us_mesh, initial=start, samples=800, target_samples=8000, max_iterations=30,
                      tolerance=1e-5, seed=seed)
        lm = float(np.sqrt(np.mean(np.sum((t.apply(lm_mr) - lm_us) ** 2, 1)))) if len(lm_mr) else 0.0
        found.append((t, surface_fit_mm(mr_pts, tree, t), lm))
    best_lm = min(f[2] for f in found)
    coarse, _, _ = min((f for f in found if f[2] <= best_lm + LANDMARK_TOLERANCE_MM), key=lambda f: f[1])
    t = icp_rigid(mr_mesh, us_mesh, initial=coarse, seed=seed)
    return t, surface_fit_mm(mr_pts, tree, t)


def evaluate_case(dataset: Dataset, case: str, split: str, predictions: dict[str, Path],
                  names: Sequence[str], surface_samples: int = 5000,
                  landmark_weight: Optional[float] = None) -> CaseResult:
    """All metrics for one case; `predictions` maps modality -> folder of predicted landmark files.

    A modality without a prediction file is noted (its MRE and the predicted registration are
    then NaN).  Raises InputError if a ground-truth or prediction file is unreadable.  Predicted
    prostate masks named by the prediction files add segmentation metrics and the surface-refined
    and landmarks+surface registrations (`landmark_weight`: that row's weight, default
    lmkreg.evaluation.predicted_masks.LANDMARKS_SURFACE_WEIGHT).
    """

    truth = {m: read_lmkreg_json(dataset.landmarks_path(case, m, split)) for m in MODALITIES}
    pred: dict[str, LandmarkSet] = {}
    result = CaseResult(case, {})
    pred_files = {}
    for m in MODALITIES:
        f = pred_files[m] = find_prediction(predictions[m], case, m) if m in predictions else None
        if f is None:
            result.notes.append(f"no {m} prediction")
            continue
        pred[m] = read_landmarks(f)
        errors = radial_errors(pred[m], truth[m], names)
        result.errors_mm[m] = dict(zip(names, map(float, errors)))
        result.radii_mm[m], result.flagged[m] = landmark_trust(pred[m], names)
        lost = [n for n in names if truth[m].points.get(n) is not None and pred[m].points.get(n) is None]
        if lost:
            result.notes.append(f"{m} prediction lacks {', '.join(lost)}")
    mr_mask_path, us_mask_path = dataset.mask_path(case, "MR", split), dataset.mask_path(case, "US", split)
    true_masks = {m: read_image(p, is_mask=True) if p.is_file() else None
                  for m, p in (("MR", mr_mask_path), ("US", us_mask_path))}
    pred_masks, no_mask = pm.predicted_mask_files(pred_files)
    if pred_masks:  # a model with a segmentation head: its masks are scored, a missing one noted
        pm.segmentation_of_case(result, pred_masks, true_masks)
        result.notes += [f"{m}: {why}" for m, why in no_mask.items()]
    if not (mr_mask_path.is_file() and us_mask_path.is_file()):
        result.notes.append("no masks: SRE and Dice skipped")
        return result
    mr_mask, us_mask = true_masks["MR"], true_masks["US"]
    try:
        mr_mesh, us_mesh = mask_to_mesh(mr_mask), mask_to_mesh(us_mask)
    except ValueError as exc:
        result.notes.append(f"{exc}: SRE and Dice skipped")
        return result
    common = [n for n in names if truth["MR"].points.get(n) is not None and truth["US"].points.get(n) is not None]
    try:
        manual: Optional[RigidTransform] = register_landmarks(truth["MR"], truth["US"], names).transform
    except InputError as exc:
        manual = None
        result.notes.append(f"no manual registration ({exc.problem}); ICP reference from several starts")
    reference, result.reference_fit_mm = reference_registration(
        mr_mesh, us_mesh, manual, truth["MR"].to_array(common), truth["US"].to_array(common))
    result.reference_transform = reference.matrix().tolist()
    pts = surface_points(mr_mesh, surface_samples)
    result.dice_reference = registration_dice(mr_mask, us_mask, reference)
    if manual is not None:
        result.manual_transform = manual.matrix().tolist()
        result.sre_manual_mm = surface_registration_error(pts, reference, manual)
        result.rotation_manual_deg = residual_rotation_deg(reference, manual)
        result.dice_manual = registration_dice(mr_mask, us_mask, manual)
    true_path = dataset.transform_path(case, split)
    if true_path.is_file():
        result.icp_vs_true_transform_mm = surface_registration_error(pts, read_rigid_transform(true_path), reference)
    if "MR" in pred and "US" in pred:
        try:

            fit = fit_pair(pred["MR"], pred["US"], names)
            predicted = fit.transform
            result.pair_flagged = not fit.trust["reliable"]
            result.registration_landmarks = list(fit.names)
            if fit.trust.get("two_landmarks"):
                result.notes.append(f"registered on {' and '.join(fit.names)}: {fit.trust['two_landmarks']['reason']}")
        except InputError as exc:
            result.notes.append(f"no registration from predictions: {exc.problem}")
        else:
            result.predicted_transform = predicted.matrix().tolist()
            result.sre_predicted_mm = surface_registration_error(pts, reference, predicted)
            result.rotation_predicted_deg = residual_rotation_deg(reference, predicted)
            result.dice_predicted = registration_dice(mr_mask, us_mask, predicted)
            if len(pred_masks) == 2:
                pm.refined_registrations(result, pred_masks, predicted, reference, pts, mr_mask, us_mask,
                                         (pred["MR"].to_array(fit.names), pred["US"].to_array(fit.names)), fit.names,
                                         pm.LANDMARKS_SURFACE_WEIGHT if landmark_weight is None else landmark_weight)
    return result


def landmark_trust(pred: LandmarkSet, names: Sequence[str]) -> tuple[dict, dict]:
    """(radius per landmark, flagged per landmark) from an lmkreg prediction's extras; a file
    without them (another tool's) has no radii and flags nothing."""
    trust = pred.extras.get("trust") if isinstance(pred.extras, dict) else None
    lm = trust.get("landmarks", {}) if isinstance(trust, dict) else {}
    radii, flagged = {}, {}
    for n in names:
        d = lm.get(n) if isinstance(lm.get(n), dict) else {}
        r = d.get("radius_mm")
        radii[n] = float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else None
        flagged[n] = bool(d.get("flagged", pred.extras.get("reliable") is False if isinstance(pred.extras, dict) else False))
    return radii, flagged


def calibration_summary(results: Sequence[CaseResult], names: Sequence[str], error_threshold_mm: float = 5.0) -> dict:
    """Coverage of the error radii and ROC AUC of the flags, per modality and landmark: "unreliable"
    against "error > threshold", and the pair flag against "SRE > threshold"."""

    out: dict = {"error_threshold_mm": error_threshold_mm}
    for m in MODALITIES:
        block: dict = {}
        rows = [(n, r.errors_mm[m].get(n), r.radii_mm.get(m, {}).get(n), r.flagged.get(m, {}).get(n))
                for r in results if m in r.errors_mm for n in names]
        for n in list(names) + ["all"]:
            sel = [x for x in rows if n == "all" or x[0] == n]
            sel_flag = [x for x in sel if x[1] is not None and np.isfinite(x[1]) and x[3] is not None]
            block[n] = {**radius_coverage([x[1] for x in sel], [x[2] for x in sel]),
                        "num_flagged": int(sum(bool(x[3]) for x in sel_flag)),
                        "num_error_above": int(sum(x[1] > error_threshold_mm for x in sel_flag)),
                        "auc_flag_vs_error": roc_auc([float(bool(x[3])) for x in sel_flag],
                                                     [x[1] > error_threshold_mm for x in sel_flag]) if sel_flag else None}
        out[m] = block
    pairs = [(r.sre_predicted_mm, r.pair_flagged) for r in results
             if r.pair_flagged is not None and np.isfinite(r.sre_predicted_mm)]
    out["pair"] = {"n": len(pairs), "num_flagged": int(sum(f for _, f in pairs)),
                   "num_sre_above": int(sum(s > error_threshold_mm for s, _ in pairs)),
                   "auc_flag_vs_sre": roc_auc([float(f) for _, f in pairs], [s > error_threshold_mm for s, _ in pairs])
                   if pairs else None}
    return out


def _evaluate_or_error(case: str, dataset_folder: str, split: str, predictions: dict[str, str],
                       names: Sequence[str], landmark_weight: Optional[float] = None):
    """Worker: a CaseResult, or (case, message) when a file of the case is unusable."""
    try:
        return evaluate_case(Dataset(dataset_folder), case, split, {m: Path(p) for m, p in predictions.items()}, names,
                             landmark_weight=landmark_weight)
    except LmkregError as exc:
        return case, str(exc)


def evaluate_cases(dataset: Dataset, cases: Sequence[str], split: str, predictions: dict[str, Path],
                   names: Sequence[str], workers: int = 1, progress: bool = True,
                   landmark_weight: Optional[float] = None) -> tuple[list[CaseResult], dict[str, str]]:
    """evaluate_case over `cases` in `workers` processes; returns (results, {case: error}) in case order."""

    fn = functools.partial(_evaluate_or_error, dataset_folder=str(dataset.folder), split=split,
                           predictions={m: str(p) for m, p in predictions.items()}, names=list(names),
                           landmark_weight=landmark_weight)
    out = parallel_map(fn, list(cases), workers=workers, desc="evaluating", disable_progress=not progress)
    results = [r for r in out if isinstance(r, CaseResult)]
    failed = {r[0]: r[1] for r in out if not isinstance(r, CaseResult)}
    return results, failed


def stats(values: Sequence[float]) -> dict:
    """n, mean, sd (ddof 1), median and max of the finite values; {"n": 0} if there are none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "max": float(v.max())}


def summarize(results: Sequence[CaseResult], names: Sequence[str]) -> dict:
    """Mean, sd and median of every metric; success detection rates of landmark errors.

    ``mre[MOD]["all"]`` pools every landmark error; ``mre[MOD]["per_case"]`` is over the
    per-case MREs (the mean of a case's landmark errors): same mean when no landmark is
    missing, but its sd is the between-case spread the paper reports.
    """

    out: dict = {"num_cases": len(results), "mre": {}}
    for m in MODALITIES:
        per = {n: [r.errors_mm[m][n] for r in results if m in r.errors_mm] for n in names}
        allv = [e for n in names for e in per[n]]
        out["mre"][m] = {"all": stats(allv), "per_case": stats([r.mre_mm(m) for r in results]),
                         **{n: stats(per[n]) for n in names}, **success_rates(np.array(allv, float))}
    for key in METRIC_KEYS:
        out[key] = stats([getattr(r, key) for r in results])
    # what a user who heeds lmkreg_register's pair flag gets: the same metrics over the pairs it
    # did not flag (a flagged pair is written but marked; it is not silently dropped from the above)
    kept = [r for r in results if r.pair_flagged is False]
    out["pairs_flagged"] = int(sum(r.pair_flagged is True for r in results))
    # pairs registered from two landmarks (one wrong or missing: lmkreg.registration.pair_fit)
    out["pairs_two_landmarks"] = int(sum(len(r.registration_landmarks) == 2 for r in results))
    out["unflagged_pairs"] = {key: stats([getattr(r, key) for r in kept])
                              for key in ("sre_predicted_mm", "dice_predicted", "rotation_predicted_deg")}
    out["calibration"] = calibration_summary(results, names)

    out.update(mask_summary(results))  # "segmentation", "registration_variants" (empty without predicted masks)
    return out


def case_rows(results: Sequence[CaseResult], names: Sequence[str]) -> list[dict]:
    """One flat row per case (the CSV): landmark errors, per-case MRE, registration metrics, notes;
    with predicted masks also segmentation metrics and the surface-refined registrations."""
    rows = []
    with_masks = any(r.segmentation or r.refinement for r in results)
    for r in results:
        row: dict = {"case": r.case}
        for m in MODALITIES:
            for n in names:
                row[f"{m}_{n}_mm"] = r.errors_mm.get(m, {}).get(n, float("nan"))
            row[f"{m}_mre_mm"] = r.mre_mm(m)
        d = asdict(r)
        row.update({k: d[k] for k in METRIC_KEYS})
        if with_masks:  # columns of predicted masks only when there are any (the CSV stays as it was without)

            for m in MODALITIES:
                row.update({f"{m}_seg_{k}": r.segmentation.get(m, {}).get(k, float("nan")) for k in SEGMENTATION_KEYS})
            row.update({k: d[k] for k in VARIANT_KEYS})
            row.update({f"{v}_accepted": r.refinement.get(v, {}).get("accepted", "")
                        for v in ("surface", "landmarks_surface")})
        row["notes"] = "; ".join(r.notes)
        rows.append(row)
    return rows
