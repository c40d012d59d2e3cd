"""Cost model of one training step: FLOPs and activation memory of a planned U-Net.

Planning must size the network before anything is trained, so it predicts the step time
(CPU budget) or the memory (GPU budget) from the topology; loading plans uses the same model
to refuse hand-edited sizes this machine cannot run.  The two CPU rates were fitted on the
2-core CI machine by ``benchmarks/calibrate_cpu_cost.py`` (results in
``benchmarks/results/cpu_cost_calibration.json``); they are deliberately on the slow side.
Measuring a real step (torch) is lmkreg.training.step_cost's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lmkreg.config.network import UNetSpec

# fitted by benchmarks/calibrate_cpu_cost.py (2 cores); see documentation/planning.md
CPU_FLOPS_PER_SECOND = 4.0e11
CPU_ACTIVATIONS_PER_SECOND = 4.0e8
CPU_STEP_OVERHEAD_SECONDS = 0.01
BACKWARD_FACTOR = 3.0  # forward + backward ~ 3x forward


@dataclass(frozen=True)
class StepCost:
    flops: float  # forward FLOPs for one sample
    activations: float  # elements of stored feature maps for one sample
    parameters: int

    def cpu_seconds(self, batch_size: int) -> float:
        """Predicted seconds of one training step (forward, backward, Adam) on 2 CPU cores."""
        return (CPU_STEP_OVERHEAD_SECONDS + batch_size * BACKWARD_FACTOR *
                (self.flops / CPU_FLOPS_PER_SECOND + self.activations / CPU_ACTIVATIONS_PER_SECOND))

    def gpu_memory_gb(self, batch_size: int, mixed_precision: bool = True) -> float:
        """Predicted peak GPU memory of a training step: activations (kept for backward and
        their gradients), weights with Adam state, and a fixed CUDA context allowance."""
        bytes_per = 2 if mixed_precision else 4
        act = batch_size * self.activations * bytes_per * 2.0
        weights = self.parameters * 4 * 4
        return (act + weights) / 1e9 + 0.8


def stage_sizes(spec: UNetSpec, input_size_zyx: Sequence[int]) -> list[np.ndarray]:
    """Feature map size (z, y, x) at each encoder stage."""
    size = np.asarray(input_size_zyx, dtype=float)
    out = []
    for s in spec.strides:
        size = np.ceil(size / np.asarray(s))
        out.append(size.copy())
    return out


def step_cost(spec: UNetSpec, input_size_zyx: Sequence[int], in_channels: int = 1, out_channels: int = 3) -> StepCost:
    """FLOPs and activation elements of one forward pass of UNet3D for one sample."""
    sizes = stage_sizes(spec, input_size_zyx)
    f = spec.features_per_stage
    flops = 0.0
    acts = 0.0
    params = 0
    c_in = in_channels
    for i, (vox, k) in enumerate(zip(sizes, spec.kernel_sizes)):
        n = float(np.prod(vox))
        kk = int(np.prod(k))
        for j in range(spec.n_conv_per_stage):
            ci = c_in if j == 0 else f[i]
            flops += 2.0 * n * ci * f[i] * kk
            acts += 3.0 * n * f[i]  # conv output, norm output, activation (in place, counted once more for grads)
            params += ci * f[i] * kk + 3 * f[i]
        c_in = f[i]
    for i in range(len(f) - 1, 0, -1):
        n = float(np.prod(sizes[i - 1]))
        kk = int(np.prod(spec.kernel_sizes[i - 1]))
        flops += 2.0 * n * f[i] * f[i - 1]  # transposed conv, kernel = stride
        acts += 2.0 * n * f[i - 1]  # upsampled map and the concatenation copy
        params += f[i] * f[i - 1] * int(np.prod(spec.strides[i]))
        for j in range(spec.n_conv_per_stage):
            ci = 2 * f[i - 1] if j == 0 else f[i - 1]
            flops += 2.0 * n * ci * f[i - 1] * kk
            acts += 3.0 * n * f[i - 1]
            params += ci * f[i - 1] * kk + 3 * f[i - 1]
    n0 = float(np.prod(sizes[0]))
    flops += 2.0 * n0 * f[0] * out_channels
    acts += 2.0 * n0 * out_channels  # logits and softmax
    params += f[0] * out_channels
    return StepCost(flops, acts, params)
