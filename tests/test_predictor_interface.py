"""Both predictors implement the one predictor interface (lmkreg.inference.interface.Predictor),
and the commands that run them use nothing else."""
from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmkreg.inference.cascade import CascadePredictor
from lmkreg.inference.interface import Predictor
from lmkreg.inference.predictor import LandmarkPredictor

METHODS = ["preprocess", "predict_array", "check_image", "predict", "trust_notes"]
PROPERTIES = ["folds", "mirror_tta", "description"]


def _stage(folder: str, stage: str, calibrated: bool = True, statistics: bool = True,
           mirror_tta: bool = True) -> LandmarkPredictor:
    """A LandmarkPredictor without networks (no __init__): the attributes the interface reads."""
    p = LandmarkPredictor.__new__(LandmarkPredictor)
    p.model_folder = Path("/results") / folder
    p.names = ["apex", "bladder_neck", "posterior_median"]
    p.modality = folder.partition("__")[2]
    p.has_segmentation = False
    p.folds = ["0", "1"]
    p.mirror_tta = mirror_tta
    p.conf = SimpleNamespace(stage=stage, modality="MR")
    p.calibration = SimpleNamespace(reasons={"apex": "", "bladder_neck": "too few cases"}) if calibrated else None
    p.statistics = object() if statistics else None
    return p


def _signature_names(cls: type, name: str) -> list[str]:
    return list(inspect.signature(getattr(cls, name)).parameters)


@pytest.mark.parametrize("cls", [LandmarkPredictor, CascadePredictor])
def test_both_predictor_classes_have_the_protocols_methods_with_its_parameters(cls):
    for name in METHODS:
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} missing"
        ours, protocol = _signature_names(cls, name), _signature_names(Predictor, name)
        # the protocol's parameters in the same order; extra ones must have defaults
        assert ours[:len(protocol)] == protocol, (cls.__name__, name, ours, protocol)
        extra = list(inspect.signature(getattr(cls, name)).parameters.values())[len(protocol):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (cls.__name__, name)


def test_instances_of_both_predictors_satisfy_the_runtime_checkable_protocol():
    single = _stage("T__MR", "single")
    cascade = CascadePredictor(_stage("T__MR_localizer", "localizer"), _stage("T__MR_refine", "refine"))
    assert isinstance(single, Predictor) and isinstance(cascade, Predictor)
    assert cascade.folds == ["0", "1"] and cascade.mirror_tta is True
    assert cascade.description == "T__MR_localizer + T__MR_refine" and single.description == "T__MR"
    # the check can fail: an object missing one member is not a Predictor
    del single.has_segmentation
    assert not isinstance(single, Predictor)


def test_trust_notes_of_a_cascade_name_the_stage_that_lacks_what():
    """The notes lmkreg_predict printed before the interface (hand-written expectations)."""
    ok = CascadePredictor(_stage("T__MR_localizer", "localizer"), _stage("T__MR_refine", "refine"))
    assert ok.trust_notes() == ["no error radius for bladder_neck: too few cases"]
    no_refine_cal = CascadePredictor(_stage("T__MR_localizer", "localizer"),
                                     _stage("T__MR_refine", "refine", calibrated=False, mirror_tta=False))
    assert no_refine_cal.trust_notes() == [
        "T__MR_refine has no calibration.json: the landmarks carry the localizer's error radii (T__MR_localizer), "
        "usually larger than their errors",
        "mirror test-time augmentation off (--no-tta): no error radii"]
    neither = CascadePredictor(_stage("T__MR_localizer", "localizer", calibrated=False),
                               _stage("T__MR_refine", "refine", calibrated=False, statistics=False))
    assert neither.trust_notes() == [
        "T__MR_localizer has no calibration.json: the stages' disagreement is checked against the refine crop offset "
        "it was trained for, not the localizer's error radius",
        "T__MR_refine has no calibration.json: no error radii (retrain, or see documentation/inference.md)",
        "T__MR_refine has no training_statistics.json: no plausibility checks"]


def test_predict_folder_and_one_shot_register_do_not_probe_the_predictor():
    import lmkreg.run.predict as predict_folder
    from lmkreg.run.register import predict_pair

    for source in (inspect.getsource(predict_folder), inspect.getsource(predict_pair)):
        assert "hasattr(" not in source and "getattr(" not in source
