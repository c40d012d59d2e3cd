"""Measured training steps of a planned U-Net, to check the cost model against this CPU.

The model itself (FLOPs, activations, predicted step time and memory) is
lmkreg.config.cost; this module runs training's real network, DSNT loss and optimiser step
(torch), so it lives in training: planning never imports it (planning must not load torch).
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import numpy as np
import torch

from lmkreg.config.cost import step_cost
from lmkreg.config.network import UNetSpec
from lmkreg.config.plans import Plans
from lmkreg.training.dsnt import dsnt, flat_softmax
from lmkreg.training.losses import dsnt_loss
from lmkreg.training.network import UNet3D
from lmkreg.training.runtime import make_adam


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
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        net = UNet3D(1, out_channels, spec, head_bias=False).train()
        opt = make_adam(net.parameters(), 1e-4)  # the trainer's optimiser, so the cost is the trainer's
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
    """``python -m lmkreg.training.step_cost PLANS.json``: estimated vs measured step per configuration.

    Run it on an otherwise idle machine: other processes on the same cores inflate the times
    (the load average before each measurement is printed to tell)."""
    parser = argparse.ArgumentParser(prog="python -m lmkreg.training.step_cost", description=main.__doc__)
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
