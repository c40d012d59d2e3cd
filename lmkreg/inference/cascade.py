"""Two-stage prediction: the localizer finds the landmarks in the whole image, the refine
stage predicts them again in a fine crop centred on the localizer's landmark centroid.

Same anatomy, same answer, whatever the image frame: the localizer's grid and every refine
crop are centred on points of their spacing's world lattice, and the refine crop normalises
its intensities from its own voxels.  Two framings of one scan therefore give the refine
networks exactly the same input as soon as their anchors snap to the same lattice point; the
crop is re-centred on the refine stage's own estimate ``refine_iterations`` times (planned: 1, no re-centring).  Each step
blends the crops at the (up to 8) lattice points around the anchor with trilinear weights,
so the answer is a continuous function of the anchor: two localizer estimates that differ a
little give answers that differ a little, never by a jump of one crop voxel.

``CascadePredictor`` implements the predictor interface of ``LandmarkPredictor``
(lmkreg.inference.interface.Predictor), so ``predict_folder`` runs either (reading and the localizer's
preprocessing of the next image overlap the networks of the current one).  Its predictions
record the localizer's landmarks and every crop centre in the output JSON (``cascade``).

Trust (issue 14, lmkreg.inference.stage_trust): a refine landmark further from the localizer's
than the two stages' calibrated radii allow (without a localizer radius: the crop offset the
refine stage was trained for), or whose heatmap sits at its crop's border, is flagged; the
distance, the limit and the border share are recorded per landmark.  A refine stage without a
calibration borrows the localizer's (larger) radius, and says so.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from lmkreg.errors import ConfigurationError
from lmkreg.geometry import ImageGeometry
from lmkreg.inference.interface import finish_prediction
from lmkreg.inference.prediction import Prediction
from lmkreg.inference.predictor import BORDER_MASS_FLAG, LandmarkPredictor, available_folds, model_folder_for
from lmkreg.inference.segmentation import SegLayer
from lmkreg.inference.stage_trust import LOCALIZER, StageCheck, borrow_localizer_radii, check_stages
from lmkreg.io.json_values import finite_or_none
from lmkreg.io.landmarks import LandmarkSet
from lmkreg.config.plans import PLANS_FILE, Plans, Stage
from lmkreg.preprocessing.preprocessor import landmark_anchor
from lmkreg.trust.flags import flag_texts, unique_flags


@dataclass
class CascadePrediction(Prediction):
    """The refine stage's prediction, with the localizer's landmarks, the crop centres and the
    stage check (``stage_check``: distance, limit and crop-border share per landmark;
    ``radius_from``: which stage's calibrated radius each landmark carries)."""

    stage1: Optional[Prediction] = None
    crop_centres_lps: list[list[float]] = field(default_factory=list)
    configurations: tuple[str, str] = ("", "")
    stage_check: Optional[StageCheck] = None
    radius_from: dict[str, str] = field(default_factory=dict)

    def trust_document(self) -> dict:
        doc = super().trust_document()
        for n, lm in doc["landmarks"].items():
            if self.radius_from.get(n):
                lm["radius_from"] = self.radius_from[n]
            if self.radius_from.get(n) == LOCALIZER:
                lm["radius_note"] = self.radius_note.get(n, "")
        return doc

    def describe(self, name: str) -> str:
        r = self.radius_mm.get(name)
        if self.radius_from.get(name) != LOCALIZER or r is None or not self.coverage:
            return super().describe(name)
        return (f"within {r:.1f} mm at {self.coverage:.0%} (the localizer's radius: the refine stage is not "
                f"calibrated)" + ("; UNRELIABLE" if self.landmark_flagged(name) else ""))

    def with_extras(self) -> LandmarkSet:
        out = super().with_extras()
        extras = dict(out.extras)
        stage1 = self.stage1.landmarks if self.stage1 is not None else LandmarkSet({})
        check = self.stage_check or StageCheck()
        names = self.landmarks.names
        moved = {n: _distance(stage1.points.get(n), self.landmarks.points.get(n)) for n in names}
        extras["cascade"] = {
            "localizer": self.configurations[0], "refine": self.configurations[1],
            "stage1_landmarks_lps": {n: None if p is None else [round(float(v), 4) for v in p]
                                     for n, p in stage1.points.items()},
            "stage1_flags": flag_texts(self.stage1.flags) if self.stage1 is not None else [],
            "stage1_radius_mm": {n: finite_or_none(self.stage1.radius_mm.get(n)) if self.stage1 is not None else None
                                 for n in names},
            "crop_centres_lps": [[round(float(v), 4) for v in c] for c in self.crop_centres_lps],
            "stage2_moved_mm": moved,
            "stage2_moved_limit_mm": {n: finite_or_none(check.limit_mm.get(n)) for n in names},
            "stage2_moved_limit_from": {n: check.limit_from.get(n) for n in names},
            "crop_border_mass": {n: finite_or_none(check.border_mass.get(n)) for n in names},
            "crop_border_mass_limit": BORDER_MASS_FLAG}
        return LandmarkSet(dict(out.points), extras)


def _distance(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[float]:
    if a is None or b is None:
        return None
    return round(float(np.linalg.norm(np.asarray(a) - np.asarray(b))), 4)


@dataclass
class StagedInput:
    """What the background reader prepares for a cascade: the image (the refine crops are
    taken from it) and the localizer's preprocessed array."""

    image: sitk.Image
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


class CascadePredictor:
    """Localizer + refine predictors of one modality (see the module docstring)."""

    def __init__(self, localizer: LandmarkPredictor, refiner: LandmarkPredictor):
        if refiner.conf.stage != Stage.REFINE:
            raise ConfigurationError(f"{refiner.model_folder}: configuration is a {refiner.conf.stage} stage, "
                                     f"not a refine stage")
        if localizer.conf.modality != refiner.conf.modality:
            raise ConfigurationError(f"{localizer.model_folder} and {refiner.model_folder} are for different "
                                     f"modalities ({localizer.conf.modality}, {refiner.conf.modality})")
        self.localizer, self.refiner = localizer, refiner
        self.modality = refiner.conf.modality
        self.names = list(refiner.names)
        self.conf = refiner.conf
        # the mask is the refine crops' where they reach, the localizer's elsewhere (lmkreg.inference.segmentation)
        self.has_segmentation = refiner.has_segmentation or localizer.has_segmentation

    @property
    def folds(self) -> list[str]:
        """The refine stage's folds (the answer is the refine stage's)."""
        return self.refiner.folds

    @property
    def mirror_tta(self) -> bool:
        return self.refiner.mirror_tta

    @property
    def description(self) -> str:
        return f"{self.localizer.model_folder.name} + {self.refiner.model_folder.name}"

    def trust_notes(self) -> list[str]:
        """What the run could not check, said once instead of per case: a cascade's answer and
        its radii are the refine stage's, the stage check needs the localizer's radii."""
        localizer, refiner = self.localizer, self.refiner
        notes = []
        if localizer.calibration is None:
            notes.append(f"{localizer.model_folder.name} has no calibration.json: the stages' disagreement is "
                         f"checked against the refine crop offset it was trained for, not the localizer's error radius")
        if refiner.calibration is None and localizer.calibration is not None:
            notes.append(f"{refiner.model_folder.name} has no calibration.json: the landmarks carry the localizer's "
                         f"error radii ({localizer.model_folder.name}), usually larger than their errors")
            return notes + refiner._run_notes()
        return notes + refiner.trust_notes()

    def preprocess(self, image: sitk.Image) -> tuple[StagedInput, ImageGeometry]:
        if image.GetPixelID() != sitk.sitkFloat32:  # once, not once per refine crop
            image = sitk.Cast(image, sitk.sitkFloat32)
        array, grid = self.localizer.preprocess(image)
        return StagedInput(image, array), grid

    def predict_array(self, array: StagedInput, grid: ImageGeometry,
                      image: Optional[sitk.Image] = None) -> CascadePrediction:
        """The refine prediction for an image prepared by ``preprocess`` (`array`: the image and the
        localizer's input; `grid`: the localizer's grid), before the source image checks.  `image`
        is not needed: the staged input carries it, and the refine stage centres its crops itself."""
        staged = array
        stage1 = self.localizer.predict_array(staged.array, grid,
                                              source_geometry=ImageGeometry.from_image(staged.image))
        anchor = landmark_anchor(stage1.landmarks.to_array(self.names))
        if anchor is None:  # pragma: no cover - the localizer always gives every landmark
            anchor = ImageGeometry.from_image(staged.image).index_to_world(
                (np.asarray(ImageGeometry.from_image(staged.image).shape_zyx, float) - 1) / 2)
        centres: list[np.ndarray] = []
        for _ in range(max(1, int(self.conf.refine_iterations))):
            pred, blended = self._blend(staged.image, anchor)
            centres += blended
            anchor = landmark_anchor(pred.landmarks.to_array(self.names))
        values = {f.name: getattr(pred, f.name) for f in dataclasses.fields(pred)}
        for key in ("flags", "signals", "radius_mm", "radius_note"):  # own copies: the stage check edits them
            values[key] = copy.deepcopy(values[key])
        out = CascadePrediction(**values, stage1=stage1, crop_centres_lps=[c.tolist() for c in centres],
                                configurations=(self.localizer.model_folder.name.partition("__")[2],
                                                self.refiner.model_folder.name.partition("__")[2]))
        # stage disagreement and crop border (issue 14), judged with the refine stage's own radii
        out.stage_check = check_stages(stage1, out, self.names, self.conf.crop_jitter_mm)
        out.flags += out.stage_check.flags
        out.radius_from = borrow_localizer_radii(out, stage1, self.names, self.refiner.max_radius_mm)
        out.seg_fallback = stage1.seg_layers[0] if stage1.seg_layers else None
        return out

    def check_image(self, pred: Prediction, image_geometry: ImageGeometry, image: Optional[sitk.Image] = None) -> None:
        """Landmarks outside the image or where it recorded nothing, image extent against
        training (the refine model's statistics); see LandmarkPredictor.check_image."""
        self.refiner.check_image(pred, image_geometry, image)

    def _blend(self, image: sitk.Image, anchor: np.ndarray) -> tuple[Prediction, list[np.ndarray]]:
        """The refine prediction for a crop centred anywhere: the predictions of the crops at
        the (up to 8) lattice points around the centre, weighted trilinearly.  It changes
        continuously with `anchor`, so a slightly different localizer estimate gives a
        slightly different answer, never a jump of one crop voxel."""
        spacing = np.asarray(self.conf.spacing_zyx[::-1], float)
        offset = np.asarray(self.conf.fov_offset_lps, float)
        centre = np.asarray(anchor, float) + offset
        base = np.floor(centre / spacing) * spacing
        frac = np.clip((centre - base) / spacing, 0.0, 1.0)
        preds, weights, centres = [], [], []
        source = ImageGeometry.from_image(image)  # for the padding check of each crop
        for corner in itertools.product((0, 1), repeat=3):
            c = np.asarray(corner)
            w = float(np.prod(np.where(c == 1, frac, 1 - frac)))
            if w <= 1e-9:
                continue
            lattice_point = base + c * spacing
            array, crop = self.refiner.preprocess(image, lattice_point - offset)
            preds.append(self.refiner.predict_array(array, crop, source_geometry=source))
            weights.append(w)
            centres.append(lattice_point)
        wts = np.asarray(weights) / np.sum(weights)
        world = sum(w * p.landmarks.to_array(self.names) for w, p in zip(wts, preds))

        def mean_of(attr: str) -> dict[str, float]:
            return {n: float(sum(w * getattr(p, attr).get(n, np.nan) for w, p in zip(wts, preds))) for n in self.names}

        order = np.argsort(-wts)  # each flag (check and landmark) once, as the crop of largest weight says it
        flags = unique_flags(f for i in order[::-1] for f in preds[i].flags)
        main = preds[int(order[0])]
        signals = copy.deepcopy(main.signals)
        for n in self.names:  # the crop-border share of the blend: weighted like the landmarks
            shares = [p.signals.get(n, {}).get("crop_border_mass") for p in preds]
            if all(v is not None for v in shares) and n in signals:
                signals[n]["crop_border_mass"] = float(sum(w * v for w, v in zip(wts, shares)))
        layers = [SegLayer(layer.probability, layer.grid, float(w))  # segmentation head: the crops' masks, weighted
                  for w, p in zip(wts, preds) for layer in p.seg_layers]
        out = dataclasses.replace(main, landmarks=LandmarkSet.from_array(self.names, world),
                                  spread_mm=mean_of("spread_mm"), fold_disagreement_mm=mean_of("fold_disagreement_mm"),
                                  flags=flags, signals=signals, seg_layers=layers)
        return out, centres

    def predict(self, image: sitk.Image) -> CascadePrediction:
        """Preprocess, predict and finish one image (lmkreg.inference.interface.finish_prediction)."""
        staged, grid = self.preprocess(image)
        return finish_prediction(self, self.predict_array(staged, grid), ImageGeometry.from_image(image), image)


def cascade_folders(results_dataset_folder: Path, trainer: str, modality: str,
                    checkpoint: str = "final") -> Optional[tuple[Path, Path]]:
    """(localizer, refine) model folders of `trainer` for `modality` when both are trained
    (a refine folder whose plans name the localizer as its previous stage), else None."""
    root = Path(results_dataset_folder)
    for folder in sorted(root.glob(f"{trainer}__{modality}_*")):
        plans_path = folder / PLANS_FILE
        if not plans_path.is_file():
            continue
        name = folder.name.partition("__")[2]
        plans = Plans.load(plans_path)
        conf = plans.configurations.get(name)
        if conf is None or conf.stage != Stage.REFINE or conf.modality != modality:
            continue
        localizer = root / f"{trainer}__{conf.previous_stage}"
        if available_folds(folder, checkpoint) and localizer.is_dir() and available_folds(localizer, checkpoint):
            return localizer, folder
    return None


def build_predictor(results_dataset_folder: Path, trainer: str, modality: str, configuration: Optional[str] = None,
                    **kwargs: Any) -> Union[LandmarkPredictor, CascadePredictor]:
    """The predictor ``lmkreg_predict`` runs.  `configuration` None: the cascade when both of
    its stages are trained, else the single stage.  'cascade' (or a refine configuration's
    name): the cascade, or an error naming what is missing.  Any other name (the modality
    itself, or a localizer) predicts with that one configuration.  `kwargs` go to
    LandmarkPredictor (folds, checkpoint, device, mirror_tta, trainer_modules, optimize);
    `predictor_class` builds each stage (LandmarkPredictor or a subclass)."""
    root = Path(results_dataset_folder)
    make = kwargs.pop("predictor_class", None) or LandmarkPredictor
    checkpoint = kwargs.get("checkpoint", "final")
    wants_cascade = configuration in ("cascade", "refine") or (configuration or "").endswith("_refine")
    if configuration is None or wants_cascade:
        found = cascade_folders(root, trainer, modality, checkpoint)
        if found is not None:
            return CascadePredictor(make(found[0], **kwargs), make(found[1], **kwargs))
        if wants_cascade:
            raise ConfigurationError(f"no trained cascade of {trainer} for {modality} in {root}: train both stages "
                                     f"(lmkreg_train D {modality} FOLD -c localizer and -c refine)")
        configuration = modality
    name = configuration if configuration == modality or configuration.startswith(f"{modality}_") \
        else f"{modality}_{configuration}"
    return make(model_folder_for(root, trainer, name), **kwargs)


def read_cascade_record(path: Union[str, Path]) -> dict:
    """The ``cascade`` record of an lmkreg prediction JSON ({} for a single-stage one)."""
    return json.loads(Path(path).read_text(encoding="utf-8")).get("extras", {}).get("cascade", {})


__all__ = ["CascadePredictor", "CascadePrediction", "StagedInput", "build_predictor", "cascade_folders",
           "read_cascade_record"]
