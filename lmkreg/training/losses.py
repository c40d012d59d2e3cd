"""Losses of the paper (eq. 2, 3) with missing landmarks masked out of every term."""
from __future__ import annotations

from typing import Sequence

import torch

from lmkreg.training.dsnt import expected_distance, heatmap_variance

REGULARIZERS = ("none", "variance", "distance")


def masked_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L) values over present landmarks; 0 (with gradient) if none is present."""
    w = present.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


def coordinate_loss(pred_mm: torch.Tensor, target_mm: torch.Tensor, present: torch.Tensor,
                    lambda1: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """||P - G||_1 + lambda1 ||P - G||_2 per landmark, averaged over present landmarks."""
    diff = pred_mm - torch.where(present[..., None], target_mm, pred_mm.detach())
    l1 = diff.abs().sum(-1)
    l2 = torch.sqrt((diff ** 2).sum(-1) + 1e-12)
    l1m, l2m = masked_mean(l1, present), masked_mean(l2, present)
    return l1m + lambda1 * l2m, {"l1": l1m.detach(), "l2": l2m.detach()}


def dsnt_loss(heatmaps: torch.Tensor, pred_mm: torch.Tensor, target_mm: torch.Tensor, present: torch.Tensor,
              spacing_zyx: Sequence[float], lambda1: float, lambda2: float,
              regularizer: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Coordinate loss plus lambda2 * R(H), R in {none, variance, distance}."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
    loss, parts = coordinate_loss(pred_mm, target_mm, present, lambda1)
    if regularizer != "none" and lambda2 > 0:
        safe_target = torch.where(present[..., None], target_mm, pred_mm.detach())
        r = (heatmap_variance(heatmaps, spacing_zyx, pred_mm) if regularizer == "variance"
             else expected_distance(heatmaps, spacing_zyx, safe_target))
        rm = masked_mean(r, present)
        loss = loss + lambda2 * rm
        parts["regularizer"] = rm.detach()
    return loss, parts
