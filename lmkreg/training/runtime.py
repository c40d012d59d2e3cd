"""Device, precision and process-group plumbing, kept out of the trainers."""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from lmkreg.errors import ConfigurationError


def select_device(requested: Optional[str] = None) -> torch.device:
    """'cuda' when available (or requested), else 'cpu'.  Asking for CUDA without it is an error."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"--device {requested}: no CUDA device is available ({available_devices()}); "
                                 f"use --device cpu or leave --device out")
    return device


def available_devices() -> str:
    """'available: cpu (torch 2.x built without CUDA)': what --device can name on this machine."""
    if torch.cuda.is_available():
        return "available: cpu, " + ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    why = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
    return f"available: cpu (torch {torch.__version__.split('+')[0]} {why})"


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX).

    The bf16 step-time ratios of the training-efficiency study (0.41-0.51x of the fp32 step; a
    whole run 0.58-0.62x) were measured on such a CPU; elsewhere bf16 is emulated, not measured,
    so "auto" leaves it off there.
    """
    probes = [getattr(getattr(torch, "cpu", None), name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(callable(p) for p in probes):  # torch's own CPU capability check (torch >= 2.2)
        try:
            return any(bool(p()) for p in probes if callable(p))
        except Exception:  # a private probe that changed its signature: fall back to the kernel's flags
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return re.search(r"\b(avx512_bf16|amx_bf16)\b", f.read()) is not None
    except OSError:
        return False


def cpu_bf16_setting(value: object) -> bool:
    """Whether the training forward pass on the CPU runs under bfloat16 autocast, from the plan's
    training.bf16_autocast_cpu: true, false, or "auto" (on when the CPU has native bf16)."""
    if value == "auto":
        return cpu_has_native_bf16()
    if isinstance(value, bool):
        return value
    raise ValueError(f'training.bf16_autocast_cpu must be true, false or "auto", got {value!r}')


def make_adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam, with torch's fused kernel where torch has one for the parameters' device (CUDA; the
    CPU from torch 2.4 on).  Why: the default Adam loops over the parameter tensors in Python on
    the CPU; for the 64 tensors of the demo's US network one update took 10 ms, fused 4-6 ms
    (1-2 % of a CPU training step).  Same update rule and state dict; results differ by rounding."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device in this torch
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Processes of this job on this machine (they share its cores)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.enabled else 1


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return Distributed(rank, world, local)


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        dist.barrier()


def average_across_processes(value: float, ddp: Distributed) -> float:
    if not ddp.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / ddp.world_size


def broadcast_int(value: int, ddp: Distributed) -> int:
    """Rank 0's `value` on every process (decisions that all processes must share)."""
    if not ddp.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t.item())
