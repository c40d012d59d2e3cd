"""Optimised CPU inference (TorchScript trace + optimize_for_inference): for every trainer and
norm layer the predictions equal the eager networks' to 1e-3 mm, with and without mirror TTA;
the optimised modules are what predict_array runs; a module that is wrong or cannot be built
falls back to eager with a warning; ``lmkreg_predict --no-optimize`` turns it off."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

import lmkreg.run.predict as predict_folder_module
import lmkreg.inference.predictor as predictor_module
from lmkreg.config.plans import PLANS_FILE
from lmkreg.inference.predictor import LandmarkPredictor
from lmkreg.training.checkpoint import save_checkpoint
from lmkreg.training.registry import find_trainer

TRAINERS = ["LandmarkTrainer", "LandmarkTrainer_Variance", "LandmarkTrainer_Distance", "DirectRegressionTrainer",
            "HeatmapMatchingTrainer"]
NORMS = ["batch", "group", "none"]  # the plans' default, instance, is covered by the trainers above
FOLDS = ("0", "1")
TOL_MM = 1e-3


def _sharpen(net: nn.Module, seed: int, input_size_zyx) -> None:
    """Make an untrained network's answer depend strongly on its output: random norm
    statistics, heatmap logits with a standard deviation of 3 (peaked heatmaps away from the
    grid centre), regressed coordinates spread by about 20 mm.  Otherwise a wrong module could
    still land near the same (centre) prediction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) and m.affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        regression = not isinstance(net.head, nn.Conv3d)
        head = net.head[-1] if regression else net.head
        out = net.eval()(torch.randn(1, 1, *input_size_zyx, generator=g))
        if regression:
            head.weight.mul_(20.0 / float((out - head.bias.reshape(out.shape[1:])).std()))
        else:
            head.weight.mul_(3.0 / float(out.std()))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Toy dataset 7 planned (no preprocessing); per trainer (and per norm for LandmarkTrainer)
    a model folder with two folds of different random weights."""
    from toydata import planned_toy_mr_dataset

    from lmkreg.config.plans import Plans

    root = tmp_path_factory.mktemp("predictor_fast")
    env, ds, pre = planned_toy_mr_dataset(root)
    results = Path(env["LMKREG_results"]) / ds.name
    plans_doc = json.loads((pre / PLANS_FILE).read_text())
    names = plans_doc["landmarks"]
    folders = {}
    variants = [(t, None) for t in TRAINERS] + [("LandmarkTrainer", n) for n in NORMS]
    for k, (trainer, norm) in enumerate(variants):
        base = results if norm is None else root / f"norm_{norm}"
        folder = base / f"{trainer}__MR"
        doc = json.loads(json.dumps(plans_doc))
        if norm is not None:
            doc["configurations"]["MR"]["network"]["norm"] = norm
        folder.mkdir(parents=True)
        (folder / PLANS_FILE).write_text(json.dumps(doc))
        conf = Plans.load(folder / PLANS_FILE).configuration("MR")
        for f in FOLDS:
            torch.manual_seed(100 * k + int(f))
            net = find_trainer(trainer).build_network(conf, len(names))
            _sharpen(net, 100 * k + int(f), conf.input_size_zyx)
            (folder / f"fold_{f}").mkdir()
            save_checkpoint({"trainer": trainer, "network": net.state_dict(), "epoch": 0},
                            folder / f"fold_{f}" / "checkpoint_final.pth")
        folders[trainer if norm is None else f"{trainer}/{norm}"] = folder
    images = [ds.image_path(c, "MR") for c in ds.cases("Tr", "MR")[:2]]
    return {"env": env, "folders": folders, "images": images}


def _build(folder: Path, **kwargs) -> LandmarkPredictor:
    """A predictor, failing the test on any warning about optimisation or from the tracer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = LandmarkPredictor(folder, device="cpu", **kwargs)
    leaked = [str(w.message) for w in caught
              if issubclass(w.category, torch.jit.TracerWarning) or "optimised" in str(w.message)
              or "torch.jit" in str(w.message)]
    assert not leaked, leaked
    return predictor


def _predict_all(predictor: LandmarkPredictor, images: list[Path]) -> list:
    return [predictor.predict(sitk.ReadImage(str(p))) for p in images]


def _max_differences_mm(a, b) -> tuple[float, float, float]:
    """Largest differences between two prediction lists: landmarks, spread, fold disagreement
    (NaN in both, as for DirectRegression's spread, counts as equal; NaN in one as infinite)."""
    def diff(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        both = np.isnan(x) & np.isnan(y)
        d = np.where(both, 0.0, np.abs(x - y))
        return float(np.nan_to_num(d, nan=np.inf).max())

    out = [0.0, 0.0, 0.0]
    for pa, pb in zip(a, b):
        out[0] = max(out[0], diff(pa.landmarks.to_array(), pb.landmarks.to_array()))
        out[1] = max(out[1], diff(list(pa.spread_mm.values()), list(pb.spread_mm.values())))
        out[2] = max(out[2], diff(list(pa.fold_disagreement_mm.values()), list(pb.fold_disagreement_mm.values())))
    return tuple(out)


@pytest.fixture(scope="module")
def predictors(models):
    """Per model folder: the optimised and the eager predictor (built once; TTA is toggled)."""
    return {key: (_build(folder), _build(folder, optimize=False)) for key, folder in models["folders"].items()}


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "mirror_tta"])
@pytest.mark.parametrize("model", TRAINERS + [f"LandmarkTrainer/{n}" for n in NORMS])
def test_optimized_prediction_equals_eager(models, predictors, model, tta):
    fast, eager = predictors[model]
    assert fast.optimized == [True, True] and eager.optimized == [False, False]
    assert all(isinstance(m, torch.jit.ScriptModule) for m in fast.inference_modules)
    assert all(m is n for m, n in zip(eager.inference_modules, eager.networks))
    fast.mirror_tta = eager.mirror_tta = tta
    got, want = _predict_all(fast, models["images"]), _predict_all(eager, models["images"])
    d_points, d_spread, d_disagreement = _max_differences_mm(got, want)
    print(f"{model} tta={tta}: max difference landmarks {d_points:.2e} mm, spread {d_spread:.2e} mm, "
          f"fold disagreement {d_disagreement:.2e} mm")
    assert d_points < TOL_MM and d_spread < TOL_MM and d_disagreement < TOL_MM, (d_points, d_spread, d_disagreement)
    # the comparison means something: the folds differ by millimetres, the mirror moves the answer
    assert min(np.nanmax(list(p.fold_disagreement_mm.values())) for p in want) > 0.5
    if tta:
        eager.mirror_tta = False
        plain = _predict_all(eager, models["images"])
        assert _max_differences_mm(plain, want)[0] > 0.1


class _Calls(nn.Module):
    """Wraps a module and records the shapes it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.shapes, self.inputs = inner, [], []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        return self.inner(x)


def test_prediction_runs_the_optimized_modules_also_for_the_mirror(models, predictors):
    fast, _ = predictors["LandmarkTrainer"]
    fast.mirror_tta = True
    spies = [_Calls(m) for m in fast.inference_modules]
    eager_calls = []
    hooks = [n.register_forward_hook(lambda *a: eager_calls.append(1)) for n in fast.networks]
    saved = fast.inference_modules
    try:
        fast.inference_modules = spies
        array, grid = fast.preprocess(sitk.ReadImage(str(models["images"][0])))
        fast.predict_array(array, grid)
    finally:
        fast.inference_modules = saved
        for h in hooks:
            h.remove()
    assert not eager_calls
    for spy in spies:
        assert spy.shapes == [fast.input_shape] * 2
        torch.testing.assert_close(spy.inputs[1], torch.flip(spy.inputs[0], dims=[-1]), rtol=0, atol=0)


def test_array_of_another_size_goes_through_the_eager_networks(models, predictors):
    """The trace fixes the shape: anything not of the planned size must not reach it."""
    fast, eager = predictors["LandmarkTrainer"]
    fast.mirror_tta = eager.mirror_tta = False
    array, grid = fast.preprocess(sitk.ReadImage(str(models["images"][0])))
    bigger = np.pad(array, [(0, 0), (0, 0), (0, 0), (0, 8)], mode="edge")
    spies = [_Calls(m) for m in fast.inference_modules]
    saved = fast.inference_modules
    try:
        fast.inference_modules = spies
        got = fast.predict_array(bigger, grid)
    finally:
        fast.inference_modules = saved
    assert all(not s.shapes for s in spies)
    np.testing.assert_array_equal(got.landmarks.to_array(), eager.predict_array(bigger, grid).landmarks.to_array())


class _Mirrored(nn.Module):
    """A 'optimised' module with a plausible but wrong output: the real one, flipped."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flip(self.inner(x), dims=[-1])


def _wrong_optimizer(real):
    return lambda net, example: _Mirrored(real(net, example))


@pytest.mark.parametrize("model", ["LandmarkTrainer", "DirectRegressionTrainer", "HeatmapMatchingTrainer"])
def test_wrong_optimized_output_falls_back_to_eager_with_a_warning(models, predictors, monkeypatch, model):
    monkeypatch.setattr(predictor_module, "optimize_network", _wrong_optimizer(predictor_module.optimize_network))
    with pytest.warns(RuntimeWarning) as caught:
        predictor = LandmarkPredictor(models["folders"][model], device="cpu")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for fold in FOLDS:
        assert any(f"fold {fold}: optimised CPU inference not used, running the network in eager mode (output "
                   f"differs from the eager network" in m for m in messages), messages
    assert predictor.optimized == [False, False]
    assert all(m is n for m, n in zip(predictor.inference_modules, predictor.networks))
    _, eager = predictors[model]
    eager.mirror_tta = False
    got, want = _predict_all(predictor, models["images"]), _predict_all(eager, models["images"])
    assert _max_differences_mm(got, want)[0] == 0.0


@pytest.mark.parametrize("model", ["LandmarkTrainer", "DirectRegressionTrainer", "HeatmapMatchingTrainer"])
def test_the_equality_test_catches_a_wrong_module(models, predictors, monkeypatch, model):
    """Without the check, the wrong module is used and moves the landmarks by far more than
    the tolerance of test_optimized_prediction_equals_eager: that test can fail."""
    monkeypatch.setattr(predictor_module, "optimize_network", _wrong_optimizer(predictor_module.optimize_network))
    monkeypatch.setattr(predictor_module, "_check_optimized", lambda *a: None)
    predictor = LandmarkPredictor(models["folders"][model], device="cpu")
    assert predictor.optimized == [True, True]
    _, eager = predictors[model]
    eager.mirror_tta = False
    got, want = _predict_all(predictor, models["images"]), _predict_all(eager, models["images"])
    assert _max_differences_mm(got, want)[0] > 100 * TOL_MM


def test_optimization_that_raises_falls_back_to_eager_with_the_reason(models, monkeypatch):
    def broken(net, example):
        raise RuntimeError("no MKLDNN here")

    monkeypatch.setattr(predictor_module, "optimize_network", broken)
    with pytest.warns(RuntimeWarning) as caught:
        predictor = LandmarkPredictor(models["folders"]["LandmarkTrainer"], device="cpu")
    assert sum("eager mode (RuntimeError: no MKLDNN here)" in str(w.message) for w in caught) == 2
    assert predictor.optimized == [False, False]
    assert predictor.predict(sitk.ReadImage(str(models["images"][0]))).landmarks.to_array().shape == (3, 3)


def test_one_fold_can_fall_back_while_the_other_is_optimized(models, monkeypatch):
    real = predictor_module.optimize_network
    calls = []

    def second_is_wrong(net, example):
        calls.append(1)
        return real(net, example) if len(calls) == 1 else _Mirrored(real(net, example))

    monkeypatch.setattr(predictor_module, "optimize_network", second_is_wrong)
    with pytest.warns(RuntimeWarning, match="fold 1: optimised"):
        predictor = LandmarkPredictor(models["folders"]["LandmarkTrainer"], device="cpu")
    assert predictor.optimized == [True, False]
    assert isinstance(predictor.inference_modules[0], torch.jit.ScriptModule)
    assert predictor.inference_modules[1] is predictor.networks[1]


@pytest.mark.parametrize("flag", [[], ["--no-optimize"]], ids=["default", "no_optimize"])
def test_predict_cli_no_optimize_flag(models, tmp_path, monkeypatch, flag):
    for k, v in models["env"].items():
        monkeypatch.setenv(k, v)
    built = []

    class Recording(LandmarkPredictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(list(self.optimized))

    monkeypatch.setattr(predict_folder_module, "LandmarkPredictor", Recording)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(models["images"][0], inp / models["images"][0].name)
    argv = ["-i", str(inp), "-o", str(tmp_path / "out"), "-d", "7", "-m", "MR", "-tr", "LandmarkTrainer", "--device", "cpu"]  # several trained: name one
    assert predict_folder_module.main(argv + flag) == 0
    assert built == [[not flag] * 2]
