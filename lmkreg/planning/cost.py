"""Cost model of one training step: FLOPs and activation memory of the planned U-Net.

Planning must size the network before anything is trained, so it predicts the step time
(CPU budget) or the memory (GPU budget) from the topology.  The two CPU rates were fitted
on the 2-core CI machine by ``benchmarks/calibrate_cpu_cost.py`` (results in
``benchmarks/results/cpu_cost_calibration.json``); they are deliberately on the slow side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lmkreg.training.network import UNetSpec

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


def measure_cpu_step_times(spec: UNetSpec, input_size_zyx: Sequence[int], batch_size: int, out_channels: int = 3,
                           spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), repeats: int = 3,
                           threads: Optional[int] = None) -> list[float]:
    """Wall-clock seconds of `repeats` training steps of the planned network on this CPU.

    The step of LandmarkTrainer: forward, DSNT coordinate loss, backward, gradient clipping
    and Adam, on random data of the planned batch and input size, after one warm-up step.
    `threads` sets torch's intra-op threads for the measurement (default: torch's own).
    """
    return _timed_steps(spec, input_size_zyx, batch_size, out_channels, spacing_zyx, repeats, threads)[0]


def _timed_steps(spec: UNetSpec, input_size_zyx: Sequence[int], batch_size: int, out_channels: int,
                 spacing_zyx: Sequence[float], repeats: int, threads: Optional[int]) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each timed step."""
    import torch

    from lmkreg.training.dsnt import dsnt, flat_softmax
    from lmkreg.training.losses import dsnt_loss
    from lmkreg.training.network import UNet3D

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        net = UNet3D(1, out_channels, spec, head_bias=False).train()
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        x = torch.randn(batch_size, 1, *[int(n) for n in input_size_zyx], generator=gen)
        extent = torch.tensor([n * s for n, s in zip(input_size_zyx, spacing_zyx)], dtype=torch.float32)
        target = torch.rand(batch_size, out_channels, 3, generator=gen) * extent
        present = torch.ones(batch_size, out_channels, dtype=torch.bool)
        times, cpu = [], []
        for _ in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            heatmaps = flat_softmax(net(x))
            loss, _ = dsnt_loss(heatmaps, dsnt(heatmaps, spacing_zyx), target, present, spacing_zyx, 1.0, 0.0, "none")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return times[1:], cpu[1:]
    finally:
        torch.set_num_threads(previous)


def measure_cpu_step_seconds(spec: UNetSpec, input_size_zyx: Sequence[int], batch_size: int, out_channels: int = 3,
                             spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), repeats: int = 3,
                             threads: Optional[int] = None) -> float:
    """Median of measure_cpu_step_times: the measured seconds of one training step."""
    return float(np.median(measure_cpu_step_times(spec, input_size_zyx, batch_size, out_channels, spacing_zyx,
                                                  repeats, threads)))


def _load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lmkreg.planning.cost PLANS.json``: estimated vs measured step per configuration.

    Run it on an otherwise idle machine: other processes on the same cores inflate the times
    (the load average before each measurement is printed to tell)."""
    import argparse

    import torch

    from lmkreg.planning.plans import Plans

    parser = argparse.ArgumentParser(prog="python -m lmkreg.planning.cost", description=main.__doc__)
    parser.add_argument("plans", nargs="+", help="plans.json file(s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own, the available cores); 1 is robust on a busy "
                             "machine, where waiting for a descheduled partner thread stalls multi-threaded steps")
    args = parser.parse_args(argv)
    for path in args.plans:
        plans = Plans.load(path)
        for m, c in plans.configurations.items():
            cost = step_cost(c.network, c.input_size_zyx, 1, len(plans.landmarks))
            load = _load_average()
            times, cpu = _timed_steps(c.network, c.input_size_zyx, c.batch_size, len(plans.landmarks),
                                      c.spacing_zyx, args.repeats, args.threads)
            print(f"{plans.dataset_name} {m}: input {c.input_size_zyx}, batch {c.batch_size}, "
                  f"{cost.flops / 1e9:.2f} GFLOP and {cost.activations / 1e6:.1f} M activations per sample; "
                  f"estimated {cost.cpu_seconds(c.batch_size):.3f} s, measured median {np.median(times):.3f} s "
                  f"(min {min(times):.3f} s) per step, CPU time {np.median(cpu):.3f} s per step "
                  f"on {args.threads or torch.get_num_threads()} thread(s); load average before {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
