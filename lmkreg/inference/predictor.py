"""Landmark prediction for one image with the models of one trainer: folds ensembled, optional
left-right mirroring as test-time augmentation, confidence per landmark.

Input: any 3D SimpleITK image in any orientation.  It goes through exactly the planned
preprocessing (normalise, resample onto the canonical planned grid), the networks' outputs
are decoded to grid mm, then mapped to world LPS mm through the grid's affine.

On CPU each fold's network is run as a traced, frozen TorchScript module prepared by
``torch.jit.optimize_for_inference`` (MKLDNN layout, conv/norm/activation fusions), which is
about twice as fast as eager mode.  That is possible because the preprocessed input always has
the planned size.  The optimised module is checked against the eager network on a random
input of that size when the predictor is built; if it cannot be built or does not agree, the
eager network is used and a warning says why.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from lmkreg.errors import ConfigurationError
from lmkreg.geometry import ImageGeometry
from lmkreg.inference import segmentation as seg
from lmkreg.inference.interface import finish_prediction
from lmkreg.inference.prediction import Prediction
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.config.plans import PLANS_FILE, Plans, Stage
from lmkreg.preprocessing.preprocessor import stage_input
from lmkreg.trust.calibration import Calibration, signal_scale
from lmkreg.trust.error_estimate import error_estimate
from lmkreg.trust.image_support import not_imaged_flags
from lmkreg.trust.plausibility import (CROP_ZERO, IMAGED_CONSTANT, NEAR_ZERO, TrainingStatistics, crop_features,
                                      grid_centre_world, image_extent_lps, imaged_constant_share,
                                      near_landmarks_zero_fraction)
from lmkreg.training.checkpoint import load_checkpoint
from lmkreg.training.dsnt import flat_softmax
from lmkreg.training.registry import find_trainer
from lmkreg.training.runtime import select_device
from lmkreg.trust.flags import IMAGE, PREDICTOR, landmark_flag

# a landmark is flagged when its heatmap is this wide or the folds disagree this much (mm)
SPREAD_FLAG_MM = 10.0
DISAGREEMENT_FLAG_MM = 5.0
# ... or when its calibrated error radius is larger than this (mm): the "error > 5 mm" the
# evaluation counts as a failure
RADIUS_FLAG_MM = 5.0

# a refine stage's crop "did not hold" a landmark when more than BORDER_MASS_FLAG of its heatmap
# lies in the outer BORDER_VOXELS voxels of the crop (training never puts a landmark there: the
# planned crop keeps every landmark >= 10 mm inside); see crop_border_mass
BORDER_VOXELS = 2
BORDER_MASS_FLAG = 0.5

# the optimised module must reproduce the eager output to this fraction of its largest magnitude
# (at least 1): float reassociation in MKLDNN gives ~1e-6; anything near this is a real fault
OPTIMIZE_TOLERANCE = 1e-4


def crop_border_mass(outputs: torch.Tensor, vox_zyx: np.ndarray, grid_shape_zyx: Sequence[int],
                     band: int = BORDER_VOXELS) -> np.ndarray:
    """Per landmark (L,): the share of the network's heatmap in the outer `band` voxels of its
    grid (shape `grid_shape_zyx`), for a batch of one.  Heatmap networks: the softmax of the
    output over the grid (the DSNT heatmap itself; for heatmap matching it is dominated by the
    peak).  Networks without a heatmap (regression): 1 when the decoded point `vox_zyx` (L, 3
    voxel indices) lies in that band or outside the grid, else 0.  Why: a landmark outside a
    crop is pushed to the crop's border, whatever the network, and its spread can stay small."""
    shape = [int(n) for n in grid_shape_zyx]
    bands = [min(band, (n - 1) // 2) for n in shape]
    if outputs.dim() == 5 and list(outputs.shape[2:]) == shape:
        h = flat_softmax(outputs[:1].float())[0]  # (L, Z, Y, X)
        inner = tuple(slice(b, n - b) for b, n in zip(bands, shape))
        return (1.0 - h[(slice(None),) + inner].sum(dim=(1, 2, 3))).clamp(0.0, 1.0).double().cpu().numpy()
    v = np.asarray(vox_zyx, float)
    lo = np.asarray(bands, float) - 0.5
    hi = np.asarray(shape, float) - np.asarray(bands, float) - 0.5
    return (~((v >= lo) & (v <= hi)).all(axis=-1)).astype(float)


def available_folds(model_folder: Path, checkpoint: str) -> list[str]:
    return sorted(p.parent.name.removeprefix("fold_") for p in model_folder.glob(f"fold_*/checkpoint_{checkpoint}.pth"))


def optimize_network(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """Trace ``net`` (eval mode) on ``example`` and let TorchScript freeze it and convert it for
    CPU inference (MKLDNN convolutions, folded norms, fused activations).  The trace fixes every
    shape, so the result is only valid for inputs shaped like ``example``."""
    with warnings.catch_warnings():
        # shape checks inside the norm layers become constants: right, as the shape is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch deprecates torch.jit; users cannot act on that, and a failure here falls back to eager
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)  # _check_optimized compares outputs
            return torch.jit.optimize_for_inference(traced.eval())


def _check_optimized(optimized: nn.Module, net: nn.Module, example: torch.Tensor) -> Optional[str]:
    """None when ``optimized`` gives the eager output on ``example``, else the reason it does not.

    ``optimized`` is run twice and both outputs are checked: TorchScript's profiling executor
    runs the first call unoptimised and compiles the graph that later calls (the predictions)
    use; this also takes that compilation out of the first prediction."""
    with torch.inference_mode():
        reference = net(example).float()
        scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
        for _ in range(2):
            out = optimized(example)
            if not isinstance(out, torch.Tensor) or out.shape != reference.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                return f"output shape {got} instead of {tuple(reference.shape)}"
            out = out.float()
            if not torch.allclose(out, reference, rtol=0.0, atol=OPTIMIZE_TOLERANCE * scale, equal_nan=True):
                diff = float(torch.nan_to_num((out - reference).abs(), nan=float("inf")).max())
                return f"output differs from the eager network by up to {diff:.3g} (scale {scale:.3g})"
    return None


class LandmarkPredictor:
    """Loads the networks once; ``predict(image)`` for every image of a folder.

    ``optimize`` (CPU only): run each network as a verified TorchScript module built for the
    planned input size (see ``optimize_network``); ``optimized[i]`` tells whether fold
    ``folds[i]`` got one.  On CUDA the eager networks run under autocast as before."""

    def __init__(self, model_folder: Union[str, Path], folds: Optional[Sequence[str]] = None,
                 checkpoint: str = "final", device: Optional[str] = None, mirror_tta: bool = False,
                 trainer_modules: Sequence[str] = (), optimize: bool = True,
                 max_radius_mm: float = RADIUS_FLAG_MM, recentre: bool = True):
        self.model_folder = Path(model_folder)
        self.recentre = recentre  # a second pass on an off-centre answer (_recentred)
        self.max_radius_mm = float(max_radius_mm)
        # stored with the model at training time; absent for models trained before them
        self.calibration = Calibration.load(self.model_folder)
        self.statistics = TrainingStatistics.load(self.model_folder)
        self.plans = Plans.load(self.model_folder / PLANS_FILE)
        trainer_name, _, modality = self.model_folder.name.partition("__")
        self.modality = modality
        self.conf = self.plans.configuration(modality)
        self.names = list(self.plans.landmarks)
        self.trainer = find_trainer(trainer_name, trainer_modules)
        self.has_segmentation = seg.has_segmentation(self.trainer)
        self.device = select_device(device)
        self.mirror_tta = mirror_tta
        self.checkpoint = checkpoint  # recorded in every output's provenance (lmkreg.inference.reuse)
        folds = [str(f) for f in folds] if folds else available_folds(self.model_folder, checkpoint)
        if not folds:
            raise ConfigurationError(f"{self.model_folder}: no fold_*/checkpoint_{checkpoint}.pth found; train first")
        self.networks = []
        for f in folds:
            path = self.model_folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pth"
            state = load_checkpoint(path, self.device)
            if state.get("trainer") != trainer_name:
                raise ConfigurationError(f"{path}: written by {state.get('trainer')}, expected {trainer_name}")
            net = self.trainer.build_network(self.conf, len(self.names))
            net.load_state_dict(state["network"])
            self.networks.append(net.to(self.device).eval())
        self.folds = folds
        self.input_shape = (1, 1, *(int(n) for n in self.conf.input_size_zyx))
        # what predict_array runs per fold: the optimised module, or the eager network
        self.inference_modules: list[nn.Module] = list(self.networks)
        self.optimized = [False] * len(self.networks)
        if optimize and self.device.type == "cpu":
            for i, net in enumerate(self.networks):
                self.inference_modules[i], self.optimized[i] = self._optimized(net, folds[i])

    @property
    def description(self) -> str:
        return self.model_folder.name

    def trust_notes(self) -> list[str]:
        """What a run with this model cannot check, said once instead of per case."""
        notes = []
        if self.calibration is None:
            notes.append(f"{self.model_folder.name} has no calibration.json: no error radii (retrain, or see "
                         f"documentation/inference.md)")
        else:
            notes += [f"no error radius for {n}: {r}" for n, r in self.calibration.reasons.items() if r]
        notes += self._run_notes()
        return notes

    def _run_notes(self) -> list[str]:
        """The notes on mirroring and plausibility checks (a cascade's are its refine stage's)."""
        notes = []
        if not self.mirror_tta:
            notes.append("mirror test-time augmentation off (--no-tta): no error radii")
        if self.statistics is None:
            notes.append(f"{self.model_folder.name} has no training_statistics.json: no plausibility checks")
        return notes

    def _optimized(self, net: nn.Module, fold: str) -> tuple[nn.Module, bool]:
        """The optimised module for one fold's network and True, or the eager network and False
        (with a warning) when it cannot be built or does not reproduce the eager output."""
        example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        try:
            optimized = optimize_network(net, example)
            problem = _check_optimized(optimized, net, example)
        except Exception as exc:  # any failure of TorchScript only costs speed
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return optimized, True
        warnings.warn(f"{self.model_folder.name} fold {fold}: optimised CPU inference not used, running the "
                      f"network in eager mode ({problem})", RuntimeWarning, stacklevel=3)
        return net, False

    def preprocess(self, image: sitk.Image, anchor_lps: Optional[np.ndarray] = None) -> tuple[np.ndarray, ImageGeometry]:
        """Planned preprocessing: normalised array (1, Z, Y, X) and its grid (a refine stage's
        grid is centred on `anchor_lps`, world LPS mm: see lmkreg.inference.cascade)."""
        array, grid = stage_input(image, self.conf, anchor_lps)
        return array[None], grid

    def predict_array(self, array: np.ndarray, grid: ImageGeometry, image: Optional[sitk.Image] = None,
                      image_geometry: Optional[ImageGeometry] = None,
                      source_geometry: Optional[ImageGeometry] = None) -> Prediction:
        """Run every fold (and mirror) on a preprocessed array and ensemble in world space.

        The optimised modules are traced for the planned input size; an array of any other
        size (not produced by ``preprocess``) goes through the eager networks.  The mirrored
        input has the same shape, so it uses the optimised module too.  ``image_geometry`` (the
        source image's grid) lets a landmark outside the image be flagged, and ``image`` itself
        one where the image recorded nothing (see ``check_image``).  ``source_geometry`` (default:
        ``image_geometry``, else ``image``'s) is the grid `array` was resampled from, for the
        padding check only (a cascade's refine crops: the image checks come once, for the blend).

        Given ``image``, a single-stage model whose answer lies off where training had the gland in
        the crop predicts again on a crop centred on that answer (``_recentred``)."""
        if source_geometry is None:
            source_geometry = image_geometry or (ImageGeometry.from_image(image) if image is not None else None)
        pred = self._one_pass(array, grid, source_geometry)
        if image is not None:
            pred = self._recentred(pred, grid, image, source_geometry)
        if image_geometry is not None:
            finish_prediction(self, pred, image_geometry, image)
        return pred

    def _recentred(self, first: Prediction, grid: ImageGeometry, image: sitk.Image,
                   source_geometry: ImageGeometry) -> Prediction:
        """The prediction again on a crop placed by `first`'s landmarks, when they lie farther from
        where the training cases had the gland in their crops than the plausibility check allows
        (``TrainingStatistics.centre_offset``: a scan framed otherwise, a gland larger than any in
        training); else `first`.  `grid`: the first crop's; `source_geometry`: `image`'s grid.

        Why: a single-stage crop sits at the image centre plus the planned offset, so a gland
        framed elsewhere lies near the crop's edge, where DSNT's expectation is pulled inwards.  The
        second crop puts the first answer's centre where training had it on average.  Decided on
        the cross-domain and trust benchmarks (documentation/inference.md, "Framing"): images
        shifted 10-20 mm 3 -> 1 wrong answers of 20, the unseen large-gland family's MR error
        11.4 -> 8.3 mm, answers whose first pass lay in place unchanged; its cost, a clean case
        whose gland really lies off the training place is re-centred too (1 of 80 on the accuracy
        benchmark, US 2.22 -> 3.59 mm).  The second answer is the one returned, with what happened
        in ``recentring``; a landmark that moved more than DISAGREEMENT_FLAG_MM is flagged (the
        answer depends on the framing)."""
        if not self.recentre or self.conf.stage != Stage.SINGLE or self.statistics is None:
            return first
        points = first.landmarks.to_array(self.names)
        offset = self.statistics.centre_offset(points, grid_centre_world(grid))
        if offset is None or not offset.beyond:
            return first
        centre = points.mean(0) - offset.training_mean_lps  # world LPS mm: the new crop's centre
        array, new_grid = self.preprocess(image, centre - np.asarray(self.conf.fov_offset_lps, float))
        second = self._one_pass(array, new_grid, source_geometry)
        moved = np.linalg.norm(second.landmarks.to_array(self.names) - points, axis=1)
        second.recentring = {"first_centre_offset_mm": offset.distance_mm, "limit_mm": offset.limit_mm,
                             "crop_moved_mm": float(np.linalg.norm(grid_centre_world(new_grid) - grid_centre_world(grid))),
                             "landmarks_moved_mm": {n: float(m) for n, m in zip(self.names, moved)},
                             "first_landmarks_lps": {n: points[i].tolist() for i, n in enumerate(self.names)}}
        second.flags += [landmark_flag(PREDICTOR, n, "recentred_move_mm",
                                       f"moved {m:.1f} mm when the crop was re-centred on the first answer "
                                       f"(> {DISAGREEMENT_FLAG_MM} mm): the answer depends on where the crop lies",
                                       float(m), DISAGREEMENT_FLAG_MM, "mm")
                         for n, m in zip(self.names, moved) if m > DISAGREEMENT_FLAG_MM]
        return second

    @torch.inference_mode()
    def _one_pass(self, array: np.ndarray, grid: ImageGeometry,
                  source_geometry: Optional[ImageGeometry] = None) -> Prediction:
        """Every fold (and mirror) on one preprocessed array, ensembled in world space, with its
        signals, radii and plausibility checks; before the source image checks."""
        x = torch.from_numpy(np.ascontiguousarray(array[None])).to(self.device)
        planned = tuple(x.shape) == self.input_shape
        spacing = list(self.conf.spacing_zyx)
        worlds, spreads = [], []
        per_fold_mean, per_fold_gap, per_fold_spread = [], [], []
        borders = []  # refine stage: heatmap share at the crop border per pass (crop_border_mass)
        probabilities = []  # segmentation head: prostate probability per pass, unmirrored
        affine = grid.index_to_world_affine()
        for net, module in zip(self.networks, self.inference_modules):
            run = module if planned else net
            variants = [(x, False)] + ([(torch.flip(x, dims=[-1]), True)] if self.mirror_tta else [])
            fold_worlds, fold_spreads = [], []
            for xi, flipped in variants:
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    out = run(xi)
                mm, spread = self.trainer.decode(out.float(), spacing)
                vox = mm[0].double().cpu().numpy() / np.asarray(spacing)
                if flipped:
                    vox[:, 2] = array.shape[-1] - 1 - vox[:, 2]
                landmark_out = out
                if self.has_segmentation:
                    landmark_out, prob = seg.split(out)
                    probabilities.append(torch.flip(prob, dims=[-1]) if flipped else prob)
                if self.conf.stage == Stage.REFINE:  # the band is symmetric: the flip does not matter
                    borders.append(crop_border_mass(landmark_out, vox, array.shape[-3:]))
                fold_worlds.append(vox @ affine[:3, :3].T + affine[:3, 3])
                fold_spreads.append(spread[0].double().cpu().numpy())
            worlds += fold_worlds
            spreads += fold_spreads
            per_fold_mean.append(np.mean(fold_worlds, 0))
            per_fold_gap.append(np.linalg.norm(fold_worlds[0] - fold_worlds[1], axis=-1) / 2 if len(fold_worlds) > 1
                                else np.full(len(self.names), np.nan))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN spreads of a regression network
                per_fold_spread.append(np.nanmean(np.stack(fold_spreads), 0))
        worlds_arr = np.stack(worlds)  # (n_models, L, 3)
        mean = worlds_arr.mean(0)
        disagreement = np.sqrt(((worlds_arr - mean) ** 2).sum(-1).mean(0)) if len(worlds_arr) > 1 else np.full(len(self.names), np.nan)
        spread = np.nanmean(np.stack(spreads), 0) if np.isfinite(np.stack(spreads)).any() else np.full(len(self.names), np.nan)
        flags = []
        inside = grid.contains_world(mean)
        for i, n in enumerate(self.names):
            if not inside[i]:
                flags.append(landmark_flag(PREDICTOR, n, "outside_planned_field_of_view",
                                           "outside the planned field of view"))
            if np.isfinite(spread[i]) and spread[i] > SPREAD_FLAG_MM:
                flags.append(landmark_flag(PREDICTOR, n, "heatmap_spread_mm",
                                           f"heatmap spread {spread[i]:.1f} mm > {SPREAD_FLAG_MM} mm",
                                           spread[i], SPREAD_FLAG_MM, "mm"))
            if np.isfinite(disagreement[i]) and disagreement[i] > DISAGREEMENT_FLAG_MM:
                what = "folds disagree" if len(self.networks) > 1 else "mirror prediction disagrees"  # one fold: TTA
                flags.append(landmark_flag(PREDICTOR, n, "fold_disagreement_mm",
                                           f"{what} by {disagreement[i]:.1f} mm > {DISAGREEMENT_FLAG_MM} mm",
                                           disagreement[i], DISAGREEMENT_FLAG_MM, "mm"))
        pred = Prediction(LandmarkSet.from_array(self.names, mean), dict(zip(self.names, map(float, spread))),
                          dict(zip(self.names, map(float, disagreement))), flags)
        self._assess(pred, array, grid, np.stack(per_fold_mean), np.stack(per_fold_gap), np.stack(per_fold_spread),
                     source_geometry)
        if borders:
            for n, share in zip(self.names, np.mean(borders, axis=0)):
                pred.signals[n]["crop_border_mass"] = float(share)
        if probabilities:
            pred.seg_layers = [seg.SegLayer(torch.stack(probabilities).mean(0).cpu().numpy(), grid)]
        return pred

    def check_image(self, pred: Prediction, image_geometry: ImageGeometry, image: Optional[sitk.Image] = None) -> None:
        """Checks that need the source image (which ``predict_array`` does not see): a landmark
        outside the image, the image's extent against training and, given the image itself, a
        landmark where the scan recorded nothing (beyond a TRUS fan).  Adds flags."""
        inside = image_geometry.contains_world(pred.landmarks.to_array(self.names))
        pred.flags += [landmark_flag(IMAGE, n, "outside_image", "outside the image") for n, ok in zip(self.names, inside)
                       if not ok and pred.landmarks.points.get(n) is not None]
        if image is not None:
            pred.flags += not_imaged_flags(image, pred.landmarks, self.names)
        if self.statistics is not None:
            pred.flags += self.statistics.check_image({}, image_extent_lps(image_geometry))

    def _assess(self, pred: Prediction, array: np.ndarray, grid: ImageGeometry, fold_means: np.ndarray,
                gaps: np.ndarray, spreads: np.ndarray, source: Optional[ImageGeometry] = None) -> None:
        """Signals, calibrated radii and plausibility checks of one prediction (adds flags)."""
        mean = pred.landmarks.to_array(self.names)
        between = (np.sqrt(((fold_means - mean) ** 2).sum(-1).mean(0)) if len(fold_means) > 1
                   else np.full(len(self.names), np.nan))
        pred.coverage = self.calibration.coverage if self.calibration else None
        cal = self.calibration  # issue 26: say where the error estimate comes from
        pred.error_estimate = error_estimate(None if cal is None else cal.folds, self.folds, self.mirror_tta,
                                             cal is not None and any(q is not None for q in cal.quantiles.values())
                                             ).to_json()
        for i, n in enumerate(self.names):
            scale = (float(np.sqrt(np.mean([signal_scale(g, s) ** 2 for g, s in zip(gaps[:, i], spreads[:, i])])))
                     if self.mirror_tta else None)
            pred.signals[n] = {"mirror_gap_mm": float(np.sqrt(np.mean(gaps[:, i] ** 2))) if self.mirror_tta else None,
                               "heatmap_spread_mm": float(np.nanmean(spreads[:, i])) if np.isfinite(spreads[:, i]).any() else None,
                               "between_folds_mm": float(between[i]) if np.isfinite(between[i]) else None,
                               "scale_mm": scale}
            if self.calibration is None:
                r, note = None, "the model has no calibration.json (trained before calibration existed)"
            else:
                r, note = self.calibration.radius(n, scale)
            pred.radius_mm[n] = r
            if note:
                pred.radius_note[n] = note
            if self.calibration is not None:
                pred.validation_median_mm[n] = self.calibration.median_error_mm.get(n)
            if r is not None and r > self.max_radius_mm:
                pred.flags.append(landmark_flag(PREDICTOR, n, "error_radius_mm", f"{pred.coverage:.0%} error radius "
                                                f"{r:.1f} mm > {self.max_radius_mm:g} mm", r, self.max_radius_mm, "mm"))
            if r is not None and np.isfinite(between[i]) and between[i] > r:
                pred.flags.append(landmark_flag(PREDICTOR, n, "between_folds_over_radius_mm",
                                                f"folds disagree by {between[i]:.1f} mm, more than the error radius "
                                                f"{r:.1f} mm", between[i], r, "mm"))
        if self.statistics is not None:
            pred.training_pair_rms_mm = self.statistics.pair_residuals()
            pred.training_pair_rotation = self.statistics.pair_rotation()
            if not np.isnan(mean).any():
                pred.flags += self.statistics.check_landmarks(mean, grid_centre_world(grid))
            crop = crop_features(array)
            near = None if np.isnan(mean).any() else near_landmarks_zero_fraction(array, grid, mean)
            imaged = None if source is None else imaged_constant_share(array, grid, source)
            pred.image_signals = {CROP_ZERO: crop[CROP_ZERO], IMAGED_CONSTANT: imaged, NEAR_ZERO: near}
            pred.flags += self.statistics.check_image(crop, near_landmarks_zero=near, imaged_constant=imaged)

    def predict(self, image: sitk.Image) -> Prediction:
        """Preprocess, predict and finish one image (lmkreg.inference.interface.finish_prediction)."""
        array, grid = self.preprocess(image)
        return self.predict_array(array, grid, image, ImageGeometry.from_image(image))


def model_folder_for(results_dataset_folder: Path, trainer: str, modality: str) -> Path:
    folder = Path(results_dataset_folder) / f"{trainer}__{modality}"
    if not folder.is_dir():
        options = sorted(p.name for p in Path(results_dataset_folder).glob("*__*")) if Path(results_dataset_folder).is_dir() else []
        raise ConfigurationError(f"no trained model {folder.name} in {results_dataset_folder}; found: {options or 'none'}")
    return folder
