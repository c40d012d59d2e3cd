"""Where a refine stage's training crop sits: off the true crop centre by the localizer's
measured out-of-fold error (issue 13), or by the planned uniform jitter when none is measured.

Why: at inference the refine crop is centred on the localizer's estimate (landmark centroid
plus the planned ``fov_offset_lps``), not on the truth, so the refine network must have seen
crops that are off by as much as the localizer is.  The plan can only guess that error
(``crop_jitter_mm``, a conservative default).  Once the localizer has been cross-validated,
its error on every case it did not train on is known: that case's training crop is offset by
exactly that error, plus a small random jitter (``RESIDUAL_JITTER_VOXELS``), so the refine
stage trains on the crops it will meet.

Read, never written (the report goes to the refine fold's folder, see ``record``):

* the localizer model folder beside the refine one, ``TRAINER__<previous_stage>`` (the same
  trainer, as ``lmkreg_predict`` pairs them): ``fold_K/validation/CASE.json`` of every numeric
  fold K that finished (``validation/summary.json`` exists), for the cases that
  ``splits_final.json`` lists as fold K's validation cases: the world LPS landmarks the fold's
  final model predicted for a case it never trained on.  Fold 'all' saw every case and is
  never used;
* the refine stage's preprocessed ``CASE.json``: ``anchor_lps`` (the true landmark centroid the
  stored box is centred on), ``index_to_world`` and ``geometry.shape_zyx`` (the stored box).

Offset of a case's crop in refine-grid voxels (z, y, x)::

    inv(A) @ (predicted_centroid + fov_offset_lps - stored_centre)

with A the 3x3 part of the stored index->world matrix and ``stored_centre`` the world centre
of the stored box (the true centroid plus the offset, snapped to the lattice): the crop is
placed where the localizer's estimate would put it.  Offsets beyond the stored margin
(``crop_margin_zyx``) cannot be cut from the stored box: they are clamped to it and the report
says for how many cases and by how much.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lmkreg.config.plans import Stage
from lmkreg.errors import InputError
from lmkreg.io.atomic import atomic_write_json
from lmkreg.training.data import crop_sample, jittered_crop
from lmkreg.io.landmarks import read_lmkreg_json

RESIDUAL_JITTER_VOXELS = 1.0  # uniform +- this many refine voxels on top of a measured offset
MIN_MEASURED_CASES = 3  # fewer out-of-fold errors than this: too few to stand for the localizer
REPORT_FILE = "refine_crop_offsets.json"  # in the refine fold's folder
SUMMARY_KEY = "refine_crop_offsets"  # in fold_F/validation/summary.json
AXES_LPS = ("L", "P", "S")


@dataclass
class CaseOffset:
    """One training case: how world mm map to its stored box's voxels, and its measured error."""

    case: str
    world_to_voxels: np.ndarray  # (3, 3): world LPS mm -> refine voxels (z, y, x)
    snap_world: np.ndarray  # (3,) true centroid + fov offset - stored centre (lattice snap), LPS mm
    error_world: Optional[np.ndarray] = None  # localizer centroid - true centroid, LPS mm (None: not measured)
    localizer_fold: Optional[str] = None

    def offset_voxels(self, error_world: np.ndarray) -> np.ndarray:
        """Crop offset (refine voxels z, y, x) that places the crop where a localizer with this
        error (LPS mm) would put it."""
        return self.world_to_voxels @ (np.asarray(error_world, float) + self.snap_world)


@dataclass
class RefineCropOffsets:
    """How one refine fold's training crops are placed, and the numbers behind it.

    ``source`` 'measured': each case's crop is offset by its own out-of-fold localizer error
    (cases without one draw a measured error of another case at random), plus uniform
    +-``residual_jitter_voxels``, rounded stochastically to whole voxels (the rounding is
    unbiased, like the trilinear blend of lattice crops at inference) and clamped to the
    margin.  'planned': a uniform whole-voxel offset of up to the margin (``jittered_crop``)."""

    source: str
    configuration: str
    localizer: str
    crop_jitter_mm: float
    margin_zyx: list[int]
    spacing_zyx: list[float]
    reason: str
    cases: dict[str, CaseOffset] = field(default_factory=dict)
    residual_jitter_voxels: float = RESIDUAL_JITTER_VOXELS

    def __post_init__(self) -> None:
        self._pool = [c.error_world for c in self.cases.values() if c.error_world is not None]

    # ---- the crop ----------------------------------------------------------------------------

    def crop(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The refine training input of `sample` (a stored box with its margin)."""
        margin = np.asarray(sample.get("crop_margin", (0, 0, 0)), int)
        c = self.cases.get(sample.get("case", ""))
        if self.source != "measured" or c is None or not margin.any() or not self._pool:
            return jittered_crop(sample, rng)
        error = c.error_world if c.error_world is not None else self._pool[int(rng.integers(len(self._pool)))]
        x = np.clip(c.offset_voxels(error), -margin, margin)  # the clamp the report counts
        x = x + rng.uniform(-self.residual_jitter_voxels, self.residual_jitter_voxels, 3)
        low = np.floor(x)
        whole = low + (rng.random(3) < x - low)  # stochastic rounding: E[whole] = x
        whole = np.clip(whole, -margin, margin).astype(int)
        return crop_sample(sample, margin + whole, np.asarray(sample["image"].shape[1:]) - 2 * margin)

    # ---- the report --------------------------------------------------------------------------

    def measured(self) -> list[CaseOffset]:
        return [c for c in self.cases.values() if c.error_world is not None]

    def clamped(self) -> list[dict]:
        """Cases whose measured offset lies beyond the stored margin: by how much (mm, z y x)."""
        out = []
        margin, spacing = np.asarray(self.margin_zyx, float), np.asarray(self.spacing_zyx, float)
        for c in self.measured():
            excess = np.maximum(np.abs(c.offset_voxels(c.error_world)) - margin, 0.0) * spacing
            if np.any(excess > 1e-9):
                out.append({"case": c.case, "beyond_margin_mm_zyx": [round(float(v), 3) for v in excess],
                            "beyond_margin_mm": round(float(excess.max()), 3)})
        return out

    def error_statistics(self) -> Optional[dict]:
        """Localizer crop-centre error (predicted minus true landmark centroid, LPS mm) over the
        measured cases: per axis median, 95th percentile and max of |error|, and the distance."""
        m = self.measured()
        if not m:
            return None
        e = np.array([c.error_world for c in m], float)
        a, d = np.abs(e), np.linalg.norm(e, axis=1)
        worst = np.unravel_index(int(np.argmax(a)), a.shape)
        return {"num_cases": len(m),
                "per_axis_lps": {ax: {"median_abs_mm": float(np.median(a[:, i])),
                                      "p95_abs_mm": float(np.percentile(a[:, i], 95)),
                                      "max_abs_mm": float(a[:, i].max()), "mean_mm": float(e[:, i].mean())}
                                 for i, ax in enumerate(AXES_LPS)},
                "distance_mm": {"median": float(np.median(d)), "p95": float(np.percentile(d, 95)),
                                "max": float(d.max())},
                "largest": {"case": m[worst[0]].case, "axis": AXES_LPS[worst[1]], "abs_mm": float(a[worst])}}

    def warning(self) -> Optional[str]:
        """The message when the measured error exceeds the planned crop jitter, else None."""
        stats = self.error_statistics()
        if self.source != "measured" or stats is None or stats["largest"]["abs_mm"] <= self.crop_jitter_mm:
            return None
        worst = stats["largest"]
        p95 = max(v["p95_abs_mm"] for v in stats["per_axis_lps"].values())
        n = len(self.clamped())
        return (f"warning: the localizer {self.localizer} errs by up to {worst['abs_mm']:.1f} mm along "
                f"{worst['axis']} (case {worst['case']}, out of fold; 95th percentile {p95:.1f} mm), more than "
                f"the planned crop jitter of {self.crop_jitter_mm:.1f} mm of {self.configuration}: the crop may "
                f"then not hold the landmarks. Re-plan: set crop_jitter_mm of {self.configuration} in plans.json "
                f"to at least {np.ceil(worst['abs_mm']):.0f} mm, preprocess again (lmkreg_plan_and_preprocess) and "
                f"train the refine stage again. {n} training crop(s) were clamped to the planned margin.")

    def describe(self) -> list[str]:
        """Lines for the training log."""
        mm = [round(m * s, 1) for m, s in zip(self.margin_zyx, self.spacing_zyx)]
        if self.source != "measured":
            return [f"refine crop offsets: planned, uniform whole-voxel offsets up to {self.margin_zyx} voxels "
                    f"(z y x; {mm} mm, crop_jitter_mm {self.crop_jitter_mm:.1f}): {self.reason}"]
        stats = self.error_statistics() or {}
        own = len(self.measured())
        lines = [f"refine crop offsets: measured, {own} of {len(self.cases)} training case(s) offset by their own "
                 f"out-of-fold error of {self.localizer} ({self.reason}); "
                 f"{len(self.cases) - own} draw a measured error of another case; "
                 f"+ uniform +-{self.residual_jitter_voxels:g} voxel, within the margin {self.margin_zyx} voxels "
                 f"({mm} mm)"]
        axes = stats.get("per_axis_lps", {})
        lines.append("localizer crop-centre error (LPS mm, |error| per axis): " + ", ".join(
            f"{ax} median {v['median_abs_mm']:.2f} p95 {v['p95_abs_mm']:.2f} max {v['max_abs_mm']:.2f}"
            for ax, v in axes.items()) + f"; distance median {stats['distance_mm']['median']:.2f} "
            f"p95 {stats['distance_mm']['p95']:.2f} max {stats['distance_mm']['max']:.2f}")
        clamped = self.clamped()
        if clamped:
            worst = max(clamped, key=lambda c: c["beyond_margin_mm"])
            lines.append(f"{len(clamped)} of {own} measured offset(s) clamped to the margin, by up to "
                         f"{worst['beyond_margin_mm']:.2f} mm (case {worst['case']}); the refine stage never saw "
                         f"crops that far off")
        else:
            lines.append("no measured offset needed clamping to the margin")
        warning = self.warning()
        if warning:
            lines.append(warning)
        return lines

    def to_json(self, per_case: bool = False) -> dict:
        stats = self.error_statistics()
        doc = {"source": self.source, "reason": self.reason, "configuration": self.configuration,
               "localizer": self.localizer, "crop_jitter_mm": self.crop_jitter_mm,
               "crop_margin_zyx": list(self.margin_zyx), "spacing_zyx": list(self.spacing_zyx),
               "num_training_cases": len(self.cases), "num_measured_cases": len(self.measured()),
               "residual_jitter_voxels": self.residual_jitter_voxels if self.source == "measured" else None,
               "localizer_error": stats, "clamped": self.clamped(), "warning": self.warning()}
        if per_case:
            doc["cases"] = {c.case: {"localizer_fold": c.localizer_fold,
                                     "error_lps_mm": None if c.error_world is None else c.error_world.tolist(),
                                     "offset_voxels_zyx": None if c.error_world is None
                                     else c.offset_voxels(c.error_world).tolist()}
                            for c in self.cases.values()}
        return doc

    def record(self, fold_folder: Path, summary: Optional[dict] = None) -> None:
        """Write ``REPORT_FILE`` (with every case) and add the report to the fold's
        ``validation/summary.json`` and to `summary` (the dict ``lmkreg_train`` returns)."""
        fold_folder = Path(fold_folder)
        atomic_write_json(fold_folder / REPORT_FILE, self.to_json(per_case=True))
        doc = self.to_json()
        path = fold_folder / "validation" / "summary.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            stored[SUMMARY_KEY] = doc
            atomic_write_json(path, stored)
        if summary is not None:
            summary[SUMMARY_KEY] = doc


# ---- building it from the files --------------------------------------------------------------

def localizer_folder(refine_model_folder: Path, previous_stage: str) -> Path:
    """``TRAINER__<previous_stage>`` beside ``TRAINER__<refine>``."""
    trainer = Path(refine_model_folder).name.partition("__")[0]
    return Path(refine_model_folder).parent / f"{trainer}__{previous_stage}"


def localizer_out_of_fold(folder: Path, splits: Sequence[dict],
                          names: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
    """{case: (fold, (L, 3) world LPS)}: each case's prediction by the localizer fold that held
    it out, from finished numeric folds only."""

    out: dict[str, tuple[str, np.ndarray]] = {}
    for k, split in enumerate(splits):
        vdir = Path(folder) / f"fold_{k}" / "validation"
        if not (vdir / "summary.json").is_file():
            continue
        for case in split.get("val", []):
            p = vdir / f"{case}.json"
            if p.is_file():
                pts = read_lmkreg_json(p).to_array(list(names))
                if not np.isnan(pts).any():
                    out[case] = (str(k), pts)
    return out


def case_geometry(data_folder: Path, case: str,
                  fov_offset_lps: Sequence[float]) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(world->voxel 3x3, snap residual LPS mm, true centroid or None) of one stored refine box."""
    path = Path(data_folder) / f"{case}.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        affine = np.asarray(meta["index_to_world"], float)
        shape = np.asarray(meta["geometry"]["shape_zyx"], float)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"cannot read the preprocessed refine case {case!r} ({exc}); run preprocessing "
                               f"again") from exc
    centre = affine[:3, :3] @ ((shape - 1) / 2) + affine[:3, 3]
    has_truth = any(p is not None for p in meta.get("landmarks_world_lps", []))
    truth = np.asarray(meta["anchor_lps"], float) if has_truth and meta.get("anchor_lps") is not None else None
    snap = (truth + np.asarray(fov_offset_lps, float) - centre) if truth is not None else np.zeros(3)
    return np.linalg.inv(affine[:3, :3]), snap, truth


def refine_crop_offsets(conf, configuration: str, names: Sequence[str], splits: Sequence[dict],
                        refine_model_folder: Path, data_folder: Path,
                        train_cases: Sequence[str]) -> Optional[RefineCropOffsets]:
    """How the training crops of one refine fold (its `train_cases`) are placed; None for any
    other stage.  `conf`: the configuration (from the Plans API) named `configuration`."""
    if getattr(conf, "stage", Stage.SINGLE) != Stage.REFINE:
        return None
    loc = localizer_folder(refine_model_folder, conf.previous_stage)
    common = dict(configuration=configuration, localizer=loc.name, crop_jitter_mm=float(conf.crop_jitter_mm),
                  margin_zyx=[int(m) for m in conf.crop_margin_zyx], spacing_zyx=[float(s) for s in conf.spacing_zyx])
    oof = localizer_out_of_fold(loc, splits, names) if loc.is_dir() else {}
    cases: dict[str, CaseOffset] = {}
    for case in train_cases:
        to_vox, snap, truth = case_geometry(data_folder, case, conf.fov_offset_lps)
        c = CaseOffset(case, to_vox, snap)
        if truth is not None and case in oof:
            fold_k, pts = oof[case]
            c.error_world, c.localizer_fold = pts.mean(axis=0) - truth, fold_k
        cases[case] = c
    measured = [c for c in cases.values() if c.error_world is not None]
    if len(measured) < MIN_MEASURED_CASES:
        if not loc.is_dir():
            why = f"{loc.name} is not trained yet"
        elif not oof:
            folds = sorted(p.name.removeprefix("fold_") for p in loc.glob("fold_*") if p.is_dir())
            why = (f"{loc.name} has no finished cross-validation fold (folds found: {folds or 'none'}; fold 'all' "
                   f"saw every case, so its errors are not out of fold)")
        else:
            why = (f"only {len(measured)} of the {len(cases)} training case(s) have an out-of-fold prediction of "
                   f"{loc.name} (at least {MIN_MEASURED_CASES} needed)")
        for c in cases.values():
            c.error_world = c.localizer_fold = None
        return RefineCropOffsets("planned", reason=why + ": the planned default jitter is used", cases=cases, **common)
    folds = sorted({c.localizer_fold for c in measured})
    why = f"localizer fold(s) {', '.join(folds)}, validation predictions of cases they did not train on"
    return RefineCropOffsets("measured", reason=why, cases=cases, **common)


class StageHook:
    """What a configuration's cascade stage adds to a trainer's run; the trainer calls it at
    two points (``LandmarkTrainer.run``).  This base adds nothing: single stages and
    localizers train as they are.  Trainers stay free of per-stage code."""

    def prepare(self, trainer) -> None:
        """Called once the trainer's network, data and log are set up, before the first step."""

    def finish(self, trainer, summary: dict) -> None:
        """Called on the main process after the final validation; `summary` is the dict
        ``write_validation`` returned and wrote to ``validation/summary.json``."""


class RefineCropOffsetsHook(StageHook):
    """Refine stage: measure where each training case's crop sits (``refine_crop_offsets``),
    make the training data use it, log the report (with a warning on the console), and at the
    end record it beside the fold's summary (``RefineCropOffsets.record``).

    `refine_model_folder`: ``TRAINER__<refine>``, whose sibling ``TRAINER__<previous_stage>``
    holds the localizer's cross-validation; `splits`: ``splits_final.json``'s folds."""

    def __init__(self, refine_model_folder: Path, splits: Sequence[dict]):
        self.refine_model_folder = Path(refine_model_folder)
        self.splits = list(splits)
        self.offsets: Optional[RefineCropOffsets] = None

    def prepare(self, trainer) -> None:
        self.offsets = refine_crop_offsets(trainer.conf, trainer.configuration, trainer.names, self.splits,
                                           self.refine_model_folder, trainer.data_folder, trainer.train_cases)
        trainer.refine_crop_offsets = self.offsets
        if self.offsets is None:
            return
        trainer.train_data.crop_offsets = self.offsets
        for line in self.offsets.describe():
            trainer.log.write(line)
        warning = self.offsets.warning()
        main = getattr(getattr(trainer, "ddp", None), "is_main", True)
        if warning and main and not trainer.log.echo:  # echo already printed it
            print(warning, file=sys.stderr, flush=True)

    def finish(self, trainer, summary: dict) -> None:
        if self.offsets is not None and summary:
            self.offsets.record(trainer.output_folder, summary)  # fold_F/refine_crop_offsets.json, summary.json


def stage_hook(conf, model_folder: Path, splits: Sequence[dict]) -> StageHook:
    """The hook of `conf`'s stage: the refine stage's crop offsets, nothing for the others.
    `model_folder`: the trainer's ``TRAINER__CONFIGURATION`` folder (its fold folder's parent)."""
    if getattr(conf, "stage", Stage.SINGLE) == Stage.REFINE:
        return RefineCropOffsetsHook(model_folder, splits)
    return StageHook()


__all__ = ["RefineCropOffsets", "CaseOffset", "refine_crop_offsets", "StageHook", "RefineCropOffsetsHook",
           "stage_hook", "localizer_out_of_fold",
           "localizer_folder", "REPORT_FILE", "SUMMARY_KEY", "RESIDUAL_JITTER_VOXELS"]
