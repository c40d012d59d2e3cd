"""Multi-task trainers: the landmark U-Net also segments the prostate (issue 17).

``<Trainer>_Seg`` is ``<Trainer>`` with one more 1x1x1 convolution on the last decoder features
(beside the landmark head): **one logit per voxel**, the prostate probability is its sigmoid.
The network's output is the landmark channels followed by that logit, one tensor of
``L + 1`` channels, so every caller that moves outputs around (validation, TorchScript
tracing, the predictor's folds and mirroring) keeps working; ``decode`` and the landmark loss
read the first ``L`` channels, the segmentation loss the last one.

Loss: ``landmark loss + w * mean over cases with a mask of (1 - soft Dice + binary
cross-entropy)``, soft Dice per case over its whole grid, ``w`` = the plan's
``training.segmentation_weight`` (default: the trainer's ``default_segmentation_weight``, 25
for the DSNT trainers, 2 for heatmap matching, whose losses have different scales; plans
written before the key work unchanged).  A case without a mask file for this modality (``CASE_mask.b2nd`` of the
preprocessed folder) is left out of the segmentation term, like a missing landmark is left out
of the landmark term; a batch without any mask adds exactly 0.  Training fails at the start
when no training case has a mask.

Validation reports each case's Dice of the thresholded (0.5) mask in ``validation/summary.json``
(``segmentation_dice_per_case``, ``segmentation_dice_mean``) and its mean in the log.

``DirectRegressionTrainer`` has no ``_Seg`` variant: its network is the encoder and a fully
connected layer, with no decoder output map a voxel-wise head could read.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkreg.config.plans import Configuration
from lmkreg.errors import ConfigurationError, LmkregError
from lmkreg.io.atomic import atomic_write_json
from lmkreg.preprocessing.storage import ARRAY_SUFFIX
from lmkreg.training.network import UNet3D
from lmkreg.training.trainers import (HeatmapMatchingTrainer, LandmarkTrainer, LandmarkTrainer_Distance,
                                      LandmarkTrainer_Variance)

SEG_CHANNELS = 1  # one logit per voxel: prostate probability = sigmoid(logit)
# default of the plan key training.segmentation_weight for the DSNT trainers, whose landmark loss
# is in mm (about 10-40 early in training); heatmap matching's MSE has another scale, so its
# trainer has its own default (HeatmapMatchingTrainer_Seg.default_segmentation_weight).  Measured
# on 20 tiny MR phantoms, 200 steps, fold 0 (documentation/training.md): DSNT w 1 -> Dice 0.00,
# 10 -> 0.17, 25 -> 0.88, 50 -> 0.90 (MRE 3.99 mm single-task; 3.93 / 3.78 / 3.96 / 4.14 mm);
# heatmap matching (MRE 3.11 mm single-task) w 1 -> 0.61, 2 -> 0.76, 5 -> 0.80 (2.95 / 3.02 / 3.00 mm),
# 15 -> MRE 11.7 mm; on US w 5 broke the apex (MRE 8.0 mm, apex 19.1 mm, vs 2.54 single-task), w 2 did not (2.69 mm).
DEFAULT_SEGMENTATION_WEIGHT = 25.0
DICE_EPS = 1e-5
THRESHOLD = 0.5


# ---- network and loss -----------------------------------------------------------------------

class MultiTaskUNet(nn.Module):
    """A landmark U-Net plus a prostate logit from its last decoder features.

    Built after the landmark network from the same seed, so the landmark part starts from the
    same weights as the single-task trainer's."""

    def __init__(self, unet: UNet3D):
        super().__init__()
        self.unet = unet
        self.seg_head = nn.Conv3d(unet.head.in_channels, SEG_CHANNELS, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.unet.features(x)
        return torch.cat([self.unet.head(f), self.seg_head(f)], dim=1)


def split_outputs(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(landmark channels, prostate logit (B, 1, Z, Y, X)) of a multi-task output."""
    return outputs[:, :-SEG_CHANNELS], outputs[:, -SEG_CHANNELS:]


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Per case (B,): (2 sum p t + eps) / (sum p + sum t + eps) over all voxels."""
    dims = tuple(range(1, prob.dim()))
    return (2 * (prob * target).sum(dims) + eps) / (prob.sum(dims) + target.sum(dims) + eps)


def segmentation_loss(logits: torch.Tensor, target: Optional[torch.Tensor],
                      present: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over cases with a mask of (1 - soft Dice) + voxel-mean BCE; exactly 0 (still connected
    to the graph, so distributed training sees a gradient for the head) when no case has one."""
    zero = logits.sum() * 0.0
    if target is None or present is None or not bool(present.any()):
        return zero, {"dice_loss": zero.detach(), "bce": zero.detach()}
    keep = present.bool()
    lg, tg = logits[keep].float(), target[keep].float()
    dice_loss = (1.0 - soft_dice(torch.sigmoid(lg), tg)).mean()
    bce = F.binary_cross_entropy_with_logits(lg, tg, reduction="none").flatten(1).mean(1).mean()
    return dice_loss + bce, {"dice_loss": dice_loss.detach(), "bce": bce.detach()}


def hard_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary arrays (1.0 when both are empty)."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


# ---- trainers -------------------------------------------------------------------------------

class SegmentationMixin:
    """Adds the prostate head, its loss and its validation Dice to a landmark trainer (see the
    module docstring).  Put it first: ``class X_Seg(SegmentationMixin, X)``."""

    uses_masks = True
    has_segmentation = True
    default_segmentation_weight = DEFAULT_SEGMENTATION_WEIGHT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        weight = self.settings.segmentation_weight  # None: this trainer's default
        self.segmentation_weight = float(self.default_segmentation_weight if weight is None else weight)
        self._seg_target: Optional[torch.Tensor] = None
        self._seg_present: Optional[torch.Tensor] = None
        self.val_dice: dict[str, Optional[float]] = {}

    @classmethod
    def build_network(cls, conf: Configuration, n_landmarks: int) -> nn.Module:
        net = super().build_network(conf, n_landmarks)
        if not isinstance(net, UNet3D):
            raise ConfigurationError(f"{cls.__name__}: the segmentation head needs a U-Net with a decoder, "
                                     f"got {type(net).__name__}")
        return MultiTaskUNet(net)

    @classmethod
    def decode(cls, outputs: torch.Tensor, spacing_zyx: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        return super().decode(split_outputs(outputs)[0], spacing_zyx)

    def compute_loss(self, outputs: torch.Tensor, target_mm: torch.Tensor,
                     present: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        landmark_out, logits = split_outputs(outputs)
        loss, parts = super().compute_loss(landmark_out, target_mm, present)
        seg, seg_parts = segmentation_loss(logits, self._seg_target, self._seg_present)
        return loss + self.segmentation_weight * seg, {**parts, "landmarks": loss.detach(),
                                                       "segmentation": seg.detach(), **seg_parts}

    def _setup(self) -> None:
        super()._setup()
        n = sum(self.train_data.full(i).get("mask") is not None for i in range(len(self.train_data)))
        if n == 0:
            raise LmkregError(f"{type(self).__name__}: none of the {len(self.train_data)} training cases of fold "
                              f"{self.fold} in {self.data_folder} has a prostate mask (CASE_mask{ARRAY_SUFFIX}); "
                              f"import the dataset with masks for {self.modality} and preprocess again, or use "
                              f"{type(self).__name__.removesuffix('_Seg')}")
        self.log.write(f"segmentation head: {n} of {len(self.train_data)} training cases have a prostate mask, "
                       f"weight {self.segmentation_weight:g}")

    def train_step(self, batch: dict) -> float:
        self._seg_target = batch["mask"].to(self.device).float()
        self._seg_present = batch["mask_present"].to(self.device).bool()
        try:
            return super().train_step(batch)
        finally:
            self._seg_target = self._seg_present = None

    def validation_outputs(self, case: str, sample: dict, outputs: torch.Tensor) -> None:
        mask = sample.get("mask")
        if mask is None:
            self._seg_target, self._seg_present = None, None
            self.val_dice[case] = None
            return
        self._seg_target = torch.from_numpy(np.asarray(mask, np.float32)[None]).to(outputs.device)
        self._seg_present = torch.ones(1, dtype=torch.bool, device=outputs.device)
        prob = torch.sigmoid(split_outputs(outputs)[1])[0].cpu().numpy()
        self.val_dice[case] = hard_dice(prob > THRESHOLD, mask)

    def validate(self):
        self.val_dice = {}
        try:
            result = super().validate()
        finally:
            self._seg_target = self._seg_present = None
        mean = self.mean_val_dice()
        if mean is not None:
            self.log.write(f"validation prostate Dice {mean:.3f} (mean of {self._n_dice()} cases with a mask)")
        return result

    def _n_dice(self) -> int:
        return sum(v is not None for v in self.val_dice.values())

    def mean_val_dice(self) -> Optional[float]:
        values = [v for v in self.val_dice.values() if v is not None]
        return float(np.mean(values)) if values else None

    def write_validation(self) -> dict:
        summary = super().write_validation()
        if summary:
            summary["segmentation_dice_per_case"] = {c: None if v is None else float(v)
                                                     for c, v in self.val_dice.items()}
            summary["segmentation_dice_mean"] = self.mean_val_dice()
            summary["segmentation_weight"] = self.segmentation_weight
            atomic_write_json(self.output_folder / "validation" / "summary.json", summary)
        return summary


class LandmarkTrainer_Seg(SegmentationMixin, LandmarkTrainer):
    """DSNT baseline + prostate segmentation head."""


class LandmarkTrainer_Variance_Seg(SegmentationMixin, LandmarkTrainer_Variance):
    """DSNT + variance regulariser + prostate segmentation head."""


class LandmarkTrainer_Distance_Seg(SegmentationMixin, LandmarkTrainer_Distance):
    """DSNT + distance-map regulariser + prostate segmentation head."""


class HeatmapMatchingTrainer_Seg(SegmentationMixin, HeatmapMatchingTrainer):
    """Gaussian heatmap regression + prostate segmentation head."""

    default_segmentation_weight = 2.0  # its MSE loss is on another scale than the DSNT mm losses


SEGMENTATION_TRAINERS = (LandmarkTrainer_Seg, LandmarkTrainer_Variance_Seg, LandmarkTrainer_Distance_Seg,
                         HeatmapMatchingTrainer_Seg)

__all__ = ["SEG_CHANNELS", "DEFAULT_SEGMENTATION_WEIGHT", "MultiTaskUNet", "SegmentationMixin", "split_outputs",
           "soft_dice", "segmentation_loss", "hard_dice",
           "SEGMENTATION_TRAINERS", *[t.__name__ for t in SEGMENTATION_TRAINERS]]
