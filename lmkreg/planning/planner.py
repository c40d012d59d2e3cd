"""Rules that turn a dataset fingerprint into a per-modality plan under a compute budget.

Each rule is a small pure function so it can be read, tested and documented on its own
(documentation/planning.md explains them one by one).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lmkreg.config.augmentation import DEFAULT_AUGMENTATION
from lmkreg.config.cost import step_cost
from lmkreg.config.modality import modality_kind
from lmkreg.config.network import UNetSpec
from lmkreg.config.plans import Configuration, Normalization
from lmkreg.config.settings import TrainingSettings

ANISOTROPY_THRESHOLD = 3.0
FOV_MARGIN_MM = 15.0
MIN_FEATURE_MAP = 4
MAX_STAGES = 6
CPU_MAX_STEP_SECONDS = 0.5
COARSEN_FACTOR = 1.1
SPACING_TOLERANCE = 1e-6  # relative: spacings equal up to float rounding compare as equal

# validation, checkpoints and predictions use an exponential moving average of the training weights
# (training.weights_ema_decay; 0 = off): on the demo's US data it ended 4 of 4 seeds at or below
# 1.5 mm where the raw weights ended 3 of 4 (documentation/benchmarks.md, training efficiency)
WEIGHTS_EMA_DECAY = 0.98

PAPER_LAMBDAS = {  # Fang et al. 2023, section 3.1, in mm units
    "MR": {"lambda1": 1.0, "lambda2_variance": 5e-4, "lambda2_distance": 5e-3},
    "US": {"lambda1": 1.0, "lambda2_variance": 2e-3, "lambda2_distance": 1e-2},
}


@dataclass(frozen=True)
class Budget:
    """Compute budget: 'cpu' (2-core step time) or a GPU with `gpu_memory_gb` of memory."""

    device: str = "cpu"
    gpu_memory_gb: Optional[float] = None
    max_step_seconds: float = CPU_MAX_STEP_SECONDS

    @staticmethod
    def parse(text: str) -> "Budget":
        """'cpu' or a GPU memory size in GB such as '11' or '24gb'."""
        t = text.strip().lower()
        if t == "cpu":
            return Budget("cpu")
        try:
            gb = float(t.removesuffix("gb"))
        except ValueError:
            raise ValueError(f"budget must be 'cpu' or a GPU memory size in GB, got {text!r}") from None
        if gb <= 1:
            raise ValueError(f"GPU memory budget {gb} GB is too small")
        return Budget("cuda", gb)

    @staticmethod
    def default() -> "Budget":
        try:
            import torch  # lazy: planning must not load torch at import (tests/test_config.py)

            if torch.cuda.is_available():
                return Budget("cuda", torch.cuda.get_device_properties(0).total_memory / 1e9)
        except Exception:  # pragma: no cover - torch without CUDA runtime
            pass
        return Budget("cpu")

    def to_json(self) -> dict:
        if self.device == "cpu":
            return {"device": "cpu", "max_step_seconds": self.max_step_seconds}
        return {"device": "cuda", "gpu_memory_gb": self.gpu_memory_gb}


def target_spacing(median_zyx: Sequence[float], p10_zyx: Sequence[float]) -> tuple[list[float], Optional[str]]:
    """Median spacing; for thick-slice data (max/min > 3) the coarse axis takes its 10th
    percentile instead, so most images are not upsampled across slices (nnU-Net's rule)."""
    med = np.asarray(median_zyx, float)
    if med.max() / med.min() <= ANISOTROPY_THRESHOLD:
        return med.tolist(), None
    axis = int(np.argmax(med))
    out = med.copy()
    out[axis] = max(float(p10_zyx[axis]), float(np.delete(med, axis).max()) * ANISOTROPY_THRESHOLD)
    out[axis] = min(out[axis], med[axis])
    return out.tolist(), f"anisotropic spacing {med.tolist()}: axis {'zyx'[axis]} set to {out[axis]:.3g} mm"


def field_of_view(offset_min_lps: Sequence[float], offset_max_lps: Sequence[float],
                  max_extent_zyx: Sequence[float], margin_mm: float = FOV_MARGIN_MM) -> tuple[list[float], list[float], list[str]]:
    """Field of view (z, y, x mm) and its centre offset from the image centre (LPS mm).

    DSNT normalises each heatmap over the whole input, so the input must contain every
    training landmark: the box spans all landmark offsets plus `margin_mm` on each side
    (room for augmentation and unseen cases).  It is never cut back to the image extent: a
    landmark near the edge of a small image (the TRUS fan) would otherwise lose its margin
    and augmentation would push it out of the grid.  Where the box is larger than the largest
    image the excess is zero padding, and a note says so.
    """
    lo = np.asarray(offset_min_lps, float)[::-1]
    hi = np.asarray(offset_max_lps, float)[::-1]
    centre_zyx = (lo + hi) / 2
    fov = (hi - lo) + 2 * margin_mm
    notes = []
    extent = np.asarray(max_extent_zyx, float)
    for a in range(3):
        if fov[a] > extent[a]:
            notes.append(f"field of view along {'zyx'[a]} ({fov[a]:.1f} mm = landmark spread {hi[a] - lo[a]:.1f} + "
                         f"2 x {margin_mm:g} mm margin) is larger than the largest image ({extent[a]:.1f} mm): "
                         f"the excess is zero padding")
    return fov.tolist(), centre_zyx[::-1].tolist(), notes


def _not_coarser(spacing: np.ndarray, limit: float) -> np.ndarray:
    """spacing <= limit, with equality up to float rounding (0.5 * 1.1**n * 2 vs 1.0 * 1.1**n)."""
    return spacing <= limit * (1 + SPACING_TOLERANCE)


def topology(size_zyx: Sequence[float], spacing_zyx: Sequence[float], base_features: int,
             max_features: int) -> UNetSpec:
    """Stages and strides like nnU-Net: halve an axis while its map stays >= 2*MIN_FEATURE_MAP
    voxels and its spacing is no more than twice the finest current spacing (so thick-slice
    axes are pooled later); kernels 1 along axes still much coarser than the others."""
    size = np.asarray(size_zyx, float)
    spacing = np.asarray(spacing_zyx, float)
    strides = [[1, 1, 1]]
    kernels = [[3 if k else 1 for k in _not_coarser(spacing, 2 * spacing.min())]]
    while len(strides) < MAX_STAGES:
        fine = _not_coarser(spacing, 2 * spacing.min())
        pool = [bool(size[a] >= 2 * MIN_FEATURE_MAP and fine[a]) for a in range(3)]
        if not any(pool):
            break
        strides.append([2 if p else 1 for p in pool])
        size = np.where(pool, size / 2, size)
        spacing = np.where(pool, spacing * 2, spacing)
        kernels.append([3 if k else 1 for k in _not_coarser(spacing, 2 * spacing.min())])
    features = tuple(min(base_features * 2 ** i, max_features) for i in range(len(strides)))
    return UNetSpec(features, tuple(tuple(s) for s in strides), tuple(tuple(k) for k in kernels))


def input_size(fov_mm_zyx: Sequence[float], spacing_zyx: Sequence[float], multiple_zyx: Sequence[int]) -> list[int]:
    """Voxels covering the field of view, rounded up to a multiple of the network's stride."""
    return [int(math.ceil(f / s / m) * m) for f, s, m in zip(fov_mm_zyx, spacing_zyx, multiple_zyx)]


def coarsen(spacing_zyx: Sequence[float]) -> list[float]:
    """One coarsening step: the fine axes of strongly anisotropic data first (until no axis is
    more than twice finer than the coarsest), then all axes, keeping the anisotropy."""
    s = np.asarray(spacing_zyx, float)
    fine = s.max() / s > 2 * (1 + SPACING_TOLERANCE)
    if np.any(fine):
        s[fine] *= COARSEN_FACTOR
    else:
        s *= COARSEN_FACTOR
    return s.tolist()


def plan_configuration(modality: str, summary: dict, landmarks: Sequence[str], budget: Budget,
                       dataset_name: str, name: Optional[str] = None,
                       field: Optional[tuple[list[float], list[float], list[str]]] = None) -> Configuration:
    """The plan of one modality from its fingerprint summary.  `name` (default: the modality)
    names the configuration and its data; `field` replaces the planned (field of view zyx mm,
    centre offset LPS mm, notes), for the cascade stages (lmkreg.planning.stages)."""
    name = name or modality
    notes: list[str] = []
    spacing, note = target_spacing(summary["median_spacing_zyx"], summary["spacing_percentile_10_zyx"])
    if note:
        notes.append(note)
    if summary.get("landmark_offset_min_lps") is None:
        raise ValueError(f"{dataset_name} {modality}: no training landmarks to plan a field of view from")
    fov, centre, fov_notes = field or field_of_view(summary["landmark_offset_min_lps"],
                                                    summary["landmark_offset_max_lps"], summary["max_extent_mm_zyx"])
    notes += fov_notes
    cpu = budget.device == "cpu"
    base, max_feat = (8, 128) if cpu else (32, 320)
    batch = 2 if cpu else 4
    original = list(spacing)
    at_original = ""
    for _ in range(200):
        spec = topology(np.asarray(fov) / np.asarray(spacing), spacing, base, max_feat)
        size = input_size(fov, spacing, spec.total_downsampling)
        cost = step_cost(spec, size, 1, len(landmarks))
        if not at_original:
            at_original = (f"input {size} at the original spacing: " +
                           (f"{cost.cpu_seconds(batch):.2f} s per step > {budget.max_step_seconds:g} s" if cpu else
                            f"{cost.gpu_memory_gb(batch):.1f} GB at batch {batch} > {budget.gpu_memory_gb:g} GB"))
        fits = (cost.cpu_seconds(batch) <= budget.max_step_seconds if cpu
                else cost.gpu_memory_gb(batch) <= budget.gpu_memory_gb)
        if fits:
            break
        spacing = coarsen(spacing)
    else:
        raise ValueError(f"{dataset_name} {modality}: no spacing up to {spacing} fits the budget {budget}")
    if cpu is False:  # spend spare GPU memory on a larger batch, as the paper's batch of 4 or more
        while batch < 8 and cost.gpu_memory_gb(batch + 1) <= budget.gpu_memory_gb:
            batch += 1
    if not np.allclose(spacing, original):
        notes.append(f"spacing coarsened from {np.round(original, 3).tolist()} to {np.round(spacing, 3).tolist()} mm "
                     f"to fit the {budget.device} budget ({at_original})")
    kind = modality_kind(modality)
    normalization = (Normalization("zscore") if kind == "MR" else
                     Normalization("percentile_clip", summary["intensity"]["percentile_00_5"],
                                   summary["intensity"]["percentile_99_5"]))
    # written explicitly, defaults included, so that plans.json shows the training it plans (the
    # optimiser is always Adam: the "optimizer" key earlier planners wrote is no longer written)
    training = TrainingSettings.of(
        learning_rate=1e-4 if not cpu else 1e-3, weight_decay=0.0, **PAPER_LAMBDAS[kind],
        num_epochs=100 if cpu else 500, iterations_per_epoch=50 if cpu else 250, seed=12345,
        bf16_autocast_cpu="auto", weights_ema_decay=WEIGHTS_EMA_DECAY,
        augmentation=copy.deepcopy(DEFAULT_AUGMENTATION[kind]))
    if cpu:
        notes.append("CPU budget: learning rate 1e-3 instead of the paper's 1e-4 so short CPU runs converge")
    return Configuration(
        modality=modality, spacing_zyx=[float(s) for s in spacing], input_size_zyx=size,
        fov_offset_lps=[float(c) for c in centre], normalization=normalization, network=spec, batch_size=batch,
        training=training, data_identifier=f"lmkregPlans_{name}",
        estimated_step_seconds=round(cost.cpu_seconds(batch), 4),
        estimated_memory_gb=round(cost.gpu_memory_gb(batch), 3), notes=notes)
