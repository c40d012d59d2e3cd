"""DSNT and the paper's losses against brute-force numpy references and hand-made heatmaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lmkreg.training.dsnt import dsnt, expected_distance, flat_softmax, heatmap_variance
from lmkreg.training.losses import coordinate_loss, dsnt_loss

SPACING = (2.0, 1.25, 0.8)


def _numpy_reference(logits: np.ndarray, spacing, target):
    """Softmax over the volume, then sums over an explicit (Z, Y, X, 3) grid of mm positions."""
    b, l = logits.shape[:2]
    flat = logits.reshape(b, l, -1)
    h = np.exp(flat - flat.max(-1, keepdims=True))
    h = (h / h.sum(-1, keepdims=True)).reshape(logits.shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(logits.shape[2:], spacing)], indexing="ij"), -1)
    p = np.einsum("blzyx,zyxc->blc", h, grid)
    var = np.einsum("blzyx,blzyx->bl", h, ((grid[None, None] - p[:, :, None, None, None]) ** 2).sum(-1))
    dist = np.einsum("blzyx,blzyx->bl", h, np.linalg.norm(grid[None, None] - target[:, :, None, None, None], axis=-1))
    return h, p, var, dist


def test_dsnt_matches_bruteforce_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7, 9, 11)) * 3
    target = rng.uniform(0, 8, size=(2, 3, 3))
    h_ref, p_ref, var_ref, dist_ref = _numpy_reference(logits, SPACING, target)
    h = flat_softmax(torch.tensor(logits))
    np.testing.assert_allclose(h.numpy(), h_ref, atol=1e-12)
    p = dsnt(h, SPACING)
    np.testing.assert_allclose(p.numpy(), p_ref, atol=1e-5)
    np.testing.assert_allclose(heatmap_variance(h, SPACING, p).numpy(), var_ref, atol=1e-5)
    np.testing.assert_allclose(expected_distance(h, SPACING, torch.tensor(target)).numpy(), dist_ref, atol=1e-5)


def test_dsnt_in_float32_matches_float64_to_1e5_mm():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 3, 32, 40, 48)) * 4
    p64 = dsnt(flat_softmax(torch.tensor(logits)), SPACING)
    p32 = dsnt(flat_softmax(torch.tensor(logits, dtype=torch.float32)), SPACING)
    assert float((p64 - p32.double()).abs().max()) < 1e-5


def test_hand_made_heatmap():
    """Mass 0.25 at voxel (1, 2, 3) and 0.75 at voxel (3, 2, 1): the expectation is the
    weighted mean of their mm positions, and the variance is p(1-p)|a-b|^2."""
    h = torch.zeros(1, 1, 5, 5, 5, dtype=torch.float64)
    h[0, 0, 1, 2, 3] = 0.25
    h[0, 0, 3, 2, 1] = 0.75
    a = np.array([1, 2, 3]) * SPACING
    b = np.array([3, 2, 1]) * SPACING
    expected = 0.25 * a + 0.75 * b
    p = dsnt(h, SPACING)
    np.testing.assert_allclose(p[0, 0].numpy(), expected, atol=1e-12)
    var = heatmap_variance(h, SPACING, p)
    assert float(var) == pytest.approx(0.25 * 0.75 * np.sum((a - b) ** 2))
    dist = expected_distance(h, SPACING, torch.tensor(a)[None, None])
    assert float(dist) == pytest.approx(0.75 * np.linalg.norm(a - b))


def test_peaked_logits_give_subvoxel_position():
    """A Gaussian logit bump centred between voxels yields its centre (sub-voxel)."""
    centre = np.array([4.3, 6.7, 5.5])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (10, 14, 12)], indexing="ij"), -1)
    logits = -((idx - centre) ** 2).sum(-1) / (2 * 0.8 ** 2)
    p = dsnt(flat_softmax(torch.tensor(logits)[None, None]), SPACING)
    np.testing.assert_allclose(p[0, 0].numpy(), centre * SPACING, atol=1e-3)


def test_coordinate_loss_hand_computed_and_masks_missing():
    pred = torch.tensor([[[1.0, 2.0, 2.0], [5.0, 5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]]])
    present = torch.tensor([[True, False]])
    loss, parts = coordinate_loss(pred, target, present, lambda1=1.0)
    assert float(parts["l1"]) == pytest.approx(5.0)
    assert float(parts["l2"]) == pytest.approx(3.0)
    assert float(loss) == pytest.approx(8.0)
    pred.requires_grad_(True)
    loss, _ = coordinate_loss(pred, target, present, 1.0)
    loss.backward()
    assert torch.all(pred.grad[0, 1] == 0)  # the missing landmark contributes nothing


@pytest.mark.parametrize("reg", ["none", "variance", "distance"])
def test_dsnt_loss_gradients_reach_logits_and_regularizers_add(reg):
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(2, 3, 6, 7, 8)), requires_grad=True)
    target = torch.tensor(rng.uniform(0, 6, size=(2, 3, 3)))
    present = torch.tensor([[True, True, False], [True, True, True]])
    h = flat_softmax(logits)
    p = dsnt(h, SPACING)
    loss, parts = dsnt_loss(h, p, target, present, SPACING, 1.0, 0.01, reg)
    base, _ = coordinate_loss(p, target, present, 1.0)
    if reg == "none":
        assert float(loss.detach()) == pytest.approx(float(base.detach()))
    else:
        assert float(loss.detach()) == pytest.approx(float(base.detach()) + 0.01 * float(parts["regularizer"]))
        assert float(parts["regularizer"]) > 0
    loss.backward()
    assert torch.all(torch.isfinite(logits.grad)) and float(logits.grad.abs().sum()) > 0
    assert float(logits.grad[0, 2].abs().max()) == 0.0  # missing landmark's heatmap gets no gradient
