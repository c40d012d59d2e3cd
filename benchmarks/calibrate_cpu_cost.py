"""Fit the CPU cost model (lmkreg/config/cost.py) to measured training steps.

Times forward + backward + Adam of UNet3D for several topologies and input sizes on this
machine with the torch threads it has, fits seconds = overhead + b*3*(flops/F + acts/A) by
least squares, and writes benchmarks/results/cpu_cost_calibration.json.

Run: python benchmarks/calibrate_cpu_cost.py
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import lmkreg  # noqa: F401  (first: the OpenMP thread policy must be set before numpy/torch load)
import numpy as np
import torch

from lmkreg.config.cost import BACKWARD_FACTOR, step_cost
from lmkreg.config.network import UNetSpec
from lmkreg.training.network import UNet3D

CONFIGS = [  # (input size, stages, base features, batch)
    (32, 4, 8, 2), (48, 4, 8, 2), (64, 4, 8, 2), (64, 5, 8, 2), (48, 4, 16, 2),
    (40, 4, 16, 4), (48, 5, 8, 4), (80, 5, 8, 1), (64, 4, 12, 2), (32, 3, 32, 2),
]


def measure(size: int, stages: int, base: int, batch: int, repeats: int = 3) -> tuple[float, UNetSpec]:
    spec = UNetSpec(tuple(min(base * 2 ** i, 128) for i in range(stages)),
                    ((1, 1, 1),) + ((2, 2, 2),) * (stages - 1), ((3, 3, 3),) * stages)
    net = UNet3D(1, 3, spec)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(batch, 1, size, size, size)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = torch.softmax(net(x).flatten(2), -1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])), spec


def main() -> None:
    rows = []
    for size, stages, base, batch in CONFIGS:
        seconds, spec = measure(size, stages, base, batch)
        cost = step_cost(spec, (size,) * 3)
        rows.append({"size": size, "stages": stages, "base": base, "batch": batch, "seconds": seconds,
                     "flops": cost.flops, "activations": cost.activations})
        print(rows[-1], flush=True)
    a = np.array([[1.0, r["batch"] * BACKWARD_FACTOR * r["flops"], r["batch"] * BACKWARD_FACTOR * r["activations"]]
                  for r in rows])
    y = np.array([r["seconds"] for r in rows])
    from scipy.optimize import nnls

    coef, _ = nnls(a, y)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "overhead_seconds": coef[0],
        "flops_per_second": (1 / coef[1]) if coef[1] > 0 else None,
        "activations_per_second": (1 / coef[2]) if coef[2] > 0 else None,
        "relative_error": (np.abs(a @ coef - y) / y).tolist(),
        "measurements": rows,
    }
    out = Path(__file__).parent / "results" / "cpu_cost_calibration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "measurements"}, indent=2))


if __name__ == "__main__":
    main()
