"""The network topology as stored in the plans: planning writes it, training builds its
U-Net from it (lmkreg.training.network.UNet3D), so the two cannot disagree."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetSpec:
    """Network topology as stored in the plans (all per-axis lists are in (z, y, x) order)."""

    features_per_stage: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    n_conv_per_stage: int = 2
    norm: str = "instance"
    negative_slope: float = 0.2

    @staticmethod
    def from_dict(d: dict) -> "UNetSpec":
        return UNetSpec(tuple(int(f) for f in d["features_per_stage"]),
                        tuple(tuple(int(s) for s in st) for st in d["strides"]),
                        tuple(tuple(int(k) for k in ks) for ks in d["kernel_sizes"]),
                        int(d.get("n_conv_per_stage", 2)), str(d.get("norm", "instance")),
                        float(d.get("negative_slope", 0.2)))

    def to_dict(self) -> dict:
        return {"architecture": "UNet3D", "features_per_stage": list(self.features_per_stage),
                "strides": [list(s) for s in self.strides], "kernel_sizes": [list(k) for k in self.kernel_sizes],
                "n_conv_per_stage": self.n_conv_per_stage, "norm": self.norm, "negative_slope": self.negative_slope}

    @property
    def total_downsampling(self) -> tuple[int, int, int]:
        """Product of strides per axis: the input size must be a multiple of this."""
        out = [1, 1, 1]
        for s in self.strides:
            out = [o * si for o, si in zip(out, s)]
        return tuple(out)
