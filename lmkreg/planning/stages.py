"""Planning of the two-stage cascade: a localizer over the whole image, then a refine crop.

Why two stages: the single-stage grid sits at the image centre plus a fixed offset, so it only
finds the prostate where the training scans framed it, and its field of view, coarsened to the
compute budget, caps the accuracy.  The localizer sees the whole image (every training
image's extent, at the coarse spacing the budget allows) and is trained with translations at
least as large as the spread of gland positions relative to the image centre, so a shifted
gland is normal input.  The refine stage sees a crop centred on the localizer's landmark
centroid at the finest spacing the budget allows, and is trained with its crop centre offset
by up to ``crop_jitter_mm`` so it never depends on the localizer being exact.

Each rule is a small pure function over the fingerprint (documentation/planning.md).
``plan_dataset`` (every modality's single stage from lmkreg.planning.planner, plus its cascade)
lives here so that the planner never imports this module.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np

from lmkreg.config.plans import Configuration, Plans, Stage
from lmkreg.planning.planner import Budget, field_of_view, plan_configuration

LOCALIZER_PAD_MM = 4.0  # room for snapping the localizer grid to its world lattice
TRANSLATION_MARGIN_MM = 10.0  # localizer translations: spread of gland positions + this
LOCALIZER_P_TRANSLATION = 0.8
MIN_JITTER_MM = 8.0  # planned stage-1 error when none has been measured
JITTER_LOCALIZER_VOXELS = 3.0  # ... or this many localizer voxels, if larger
REFINE_MARGIN_MM = 10.0  # refine crop: landmark spread + 2 x (jitter + this)
REFINE_ITERATIONS = 1  # the blend of lattice crops already makes the answer continuous in the anchor
FRAMING_SPREAD_MM = 20.0  # gland centres spread more than this (any axis): frames vary, cascade
FINER_FACTOR = 1.1  # the refine spacing is this much finer than the single stage's: cascade


def case_centroids(cases: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """(N, 3) LPS mm: each case's landmark centroid relative to its image centre (cases
    without landmarks left out), from the fingerprint's per-case landmark offsets."""
    out = []
    for c in cases:
        pts = [c["landmark_offsets_lps"].get(n) for n in names]
        pts = [p for p in pts if p is not None]
        if pts:
            out.append(np.mean(np.asarray(pts, float), axis=0))
    return np.asarray(out, float).reshape(-1, 3)


def centred_landmarks(cases: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """(M, 3) LPS mm: every landmark relative to its case's landmark centroid."""
    out = []
    for c in cases:
        pts = [c["landmark_offsets_lps"].get(n) for n in names]
        pts = np.asarray([p for p in pts if p is not None], float).reshape(-1, 3)
        if len(pts):
            out.append(pts - pts.mean(axis=0))
    return np.concatenate(out) if out else np.zeros((0, 3))


def localizer_translation_mm(centroids_lps: np.ndarray) -> float:
    """Largest gland-centre distance from the image centre along any axis, plus a margin: the
    translation range that makes every framing seen in training normal input."""
    return float(np.abs(centroids_lps).max() + TRANSLATION_MARGIN_MM) if len(centroids_lps) else TRANSLATION_MARGIN_MM


def planned_jitter_mm(localizer_spacing_zyx: Sequence[float]) -> float:
    """Conservative stage-1 error (per axis) to train the refine stage with, before any
    localizer has been cross-validated."""
    return float(max(MIN_JITTER_MM, JITTER_LOCALIZER_VOXELS * max(localizer_spacing_zyx)))


def _set_spatial(conf: Configuration, **values: float) -> None:
    """Set parameters of the planned spatial augmentation of `conf` (none if it is switched off)."""
    aug = copy.deepcopy(conf.training.augmentation) or {}
    spatial = aug.get("spatial")
    if spatial is not None:
        spatial.update(values)
    conf.training = conf.training.with_changes(augmentation=aug)


def plan_cascade(modality: str, fingerprint_modality: dict, names: Sequence[str], budget, dataset_name: str,
                 single: Configuration, force: bool = False) -> dict[str, Configuration]:
    """``{MOD_localizer: ..., MOD_refine: ...}`` or ``{}`` (one stage; ``single.notes`` says why)."""
    summary, cases = fingerprint_modality["summary"], fingerprint_modality["cases"]
    centroids = case_centroids(cases, names)
    rel = centred_landmarks(cases, names)
    if len(centroids) == 0:
        single.notes.append("one stage: no training landmarks to plan a cascade from")
        return {}
    extent = np.asarray(summary["max_extent_mm_zyx"], float)
    loc_name, ref_name = f"{modality}_localizer", f"{modality}_refine"
    loc = plan_configuration(modality, summary, names, budget, dataset_name, name=loc_name,
                             field=((extent + LOCALIZER_PAD_MM).tolist(), [0.0, 0.0, 0.0],
                                    [f"localizer: the whole image (largest extent {np.round(extent, 1).tolist()} mm "
                                     f"+ {LOCALIZER_PAD_MM:g} mm), centred on the image centre snapped to the "
                                     f"spacing's world lattice"]))
    loc.stage = Stage.LOCALIZER
    translation = localizer_translation_mm(centroids)
    _set_spatial(loc, translation_mm=translation, p_translation=LOCALIZER_P_TRANSLATION)
    loc.notes.append(f"localizer translations up to {translation:.1f} mm per axis (p {LOCALIZER_P_TRANSLATION:g}): "
                     f"gland centres lie up to {np.abs(centroids).max():.1f} mm from the image centre "
                     f"+ {TRANSLATION_MARGIN_MM:g} mm")
    jitter = planned_jitter_mm(loc.spacing_zyx)
    fov, centre, notes = field_of_view(rel.min(axis=0), rel.max(axis=0), extent, jitter + REFINE_MARGIN_MM)
    ref = plan_configuration(modality, summary, names, budget, dataset_name, name=ref_name,
                             field=(fov, centre, [f"refine: crop around the landmark centroid = landmark spread + "
                                                  f"2 x ({jitter:.1f} mm jitter + {REFINE_MARGIN_MM:g} mm)"] + notes))
    ref.stage, ref.previous_stage, ref.crop_jitter_mm = Stage.REFINE, loc_name, jitter
    ref.refine_iterations = REFINE_ITERATIONS
    _set_spatial(ref, p_translation=0.0)  # the crop jitter moves the anatomy instead
    ref.notes.append(f"refine: trained with the crop centre offset by up to {jitter:.1f} mm per axis (planned "
                     f"default: max({MIN_JITTER_MM:g} mm, {JITTER_LOCALIZER_VOXELS:g} localizer voxels)); "
                     f"{REFINE_ITERATIONS} refine step(s) at inference")
    spread = centroids.max(axis=0) - centroids.min(axis=0)
    finer = np.asarray(single.spacing_zyx) / np.asarray(ref.spacing_zyx)
    reasons = []
    if np.any(spread > FRAMING_SPREAD_MM):
        reasons.append(f"gland centres spread {np.round(spread, 1).tolist()} mm (LPS) across the training "
                       f"images (> {FRAMING_SPREAD_MM:g} mm): the framing varies")
    if np.any(finer > FINER_FACTOR):
        reasons.append(f"the refine crop fits spacing {np.round(ref.spacing_zyx, 3).tolist()} mm instead of "
                       f"{np.round(single.spacing_zyx, 3).tolist()} mm")
    if not reasons and not force:
        single.notes.append(f"one stage: gland centres spread only {np.round(spread, 1).tolist()} mm across the "
                            f"training images and a crop would not be finer (spacing "
                            f"{np.round(ref.spacing_zyx, 3).tolist()} vs {np.round(single.spacing_zyx, 3).tolist()} "
                            f"mm): the images are already tight around the gland")
        return {}
    why = "; ".join(reasons) if reasons else "asked for (--cascade yes)"
    single.notes.append(f"cascade {loc_name} -> {ref_name} planned as well: {why}")
    ref.notes.append(f"cascade because {why}")
    return {loc_name: loc, ref_name: ref}


def describe_stage(conf: Configuration) -> Optional[str]:
    """One line about a configuration's stage, or None for a single stage."""
    if conf.stage == Stage.LOCALIZER:
        return "stage 1 of a cascade (localizer)"
    if conf.stage == Stage.REFINE:
        return (f"stage 2 of a cascade after {conf.previous_stage}, crop jitter {conf.crop_jitter_mm:.1f} mm, "
                f"{conf.refine_iterations} iteration(s)")
    return None


def plan_dataset(fingerprint: dict, budget: Budget, cascade: Optional[bool] = None) -> Plans:
    """Plans for every modality of a fingerprinted dataset: the single-stage configuration
    (named by the modality) and, where the planner decides it (``cascade`` None) or is told to
    (True), a localizer + refine cascade (lmkreg.planning.stages)."""
    confs = {}
    for m, fp in fingerprint["modalities"].items():
        single = plan_configuration(m, fp["summary"], fingerprint["landmarks"], budget, fingerprint["dataset_name"])
        confs[m] = single
        if cascade is not False:
            confs.update(plan_cascade(m, fp, fingerprint["landmarks"], budget, fingerprint["dataset_name"], single,
                                      force=bool(cascade)))
    return Plans(fingerprint["dataset_name"], list(fingerprint["landmarks"]), budget.to_json(), confs)
