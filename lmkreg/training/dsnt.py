"""DSNT: differentiable spatial to numerical transform (Nibali et al. 2018), in 3D and in mm.

Each raw heatmap is normalised by a softmax over the *whole* volume; the landmark is the
expectation of the voxel positions under it.  Positions are millimetres of the preprocessed
grid, ``v = index_zyx * spacing_zyx`` (voxel (0, 0, 0) at 0 mm), so the loss and the paper's
regularisation weights are in mm whatever the planned spacing.

Moments are computed from the marginals along each axis, which is exact (the expectation of
a coordinate only depends on the marginal of that coordinate) and avoids materialising a
(Z, Y, X, 3) grid.
"""
from __future__ import annotations

from typing import Sequence

import torch


def flat_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over all spatial voxels of (B, L, Z, Y, X) logits; each heatmap sums to 1."""
    b, l = logits.shape[:2]
    if logits.dtype in (torch.float16, torch.bfloat16):  # under AMP: normalise in float32
        logits = logits.float()
    return torch.softmax(logits.reshape(b, l, -1), dim=-1).reshape(logits.shape)


def axis_positions(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], device=None,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Millimetre position of every voxel centre along z, y and x."""
    return [torch.arange(n, device=device, dtype=dtype) * float(s) for n, s in zip(shape_zyx, spacing_zyx)]


def marginals(heatmaps: torch.Tensor) -> list[torch.Tensor]:
    """Marginal distributions along z, y, x: three tensors (B, L, n_axis)."""
    return [heatmaps.sum(dim=(3, 4)), heatmaps.sum(dim=(2, 4)), heatmaps.sum(dim=(2, 3))]


def dsnt(heatmaps: torch.Tensor, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Expected position (B, L, 3) in mm (z, y, x) of normalised heatmaps (B, L, Z, Y, X)."""
    pos = axis_positions(heatmaps.shape[2:], spacing_zyx, heatmaps.device, heatmaps.dtype)
    centre = [float(p[-1]) / 2 for p in pos]  # sum offsets from the grid centre: less float32 rounding
    return torch.stack([((m * (p - c)).sum(-1) / m.sum(-1)) + c
                        for m, p, c in zip(marginals(heatmaps), pos, centre)], dim=-1)


def heatmap_variance(heatmaps: torch.Tensor, spacing_zyx: Sequence[float], centre_mm: torch.Tensor) -> torch.Tensor:
    """Sum_j H_j ||v_j - c||^2 (mm^2) per heatmap, (B, L); with c = the DSNT expectation this
    is the heatmap's total variance (the paper's variance regulariser, eq. 4)."""
    pos = axis_positions(heatmaps.shape[2:], spacing_zyx, heatmaps.device, heatmaps.dtype)
    out = 0.0
    for a, (m, p) in enumerate(zip(marginals(heatmaps), pos)):
        out = out + (m * (p[None, None, :] - centre_mm[..., a:a + 1]) ** 2).sum(-1)
    return out


def expected_distance(heatmaps: torch.Tensor, spacing_zyx: Sequence[float], target_mm: torch.Tensor) -> torch.Tensor:
    """Sum_j H_j ||v_j - G|| (mm) per heatmap, (B, L): the paper's distance-map regulariser
    (eq. 5).  The Euclidean norm does not separate by axis, so the full volume is used."""
    z, y, x = axis_positions(heatmaps.shape[2:], spacing_zyx, heatmaps.device, heatmaps.dtype)
    g = target_mm[..., None, None, None, :]  # (B, L, 1, 1, 1, 3)
    d2 = ((z[:, None, None] - g[..., 0]) ** 2 + (y[None, :, None] - g[..., 1]) ** 2
          + (x[None, None, :] - g[..., 2]) ** 2)
    return (heatmaps * torch.sqrt(d2 + 1e-12)).flatten(2).sum(-1)
