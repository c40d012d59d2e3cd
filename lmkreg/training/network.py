"""3D U-Net built from the plans: strided 3x3x3 convolutions, a norm layer, LeakyReLU(0.2).

The topology (stages, strides, kernel sizes, features) comes from ``plans.json`` as a
``lmkreg.config.network.UNetSpec``; this module only turns that description into layers,
so planning and training cannot disagree.
The output has one raw heatmap (logits) per landmark at the input resolution.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lmkreg.config.network import UNetSpec


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use instance, batch, group or none")


class ConvBlock(nn.Sequential):
    """conv (optionally strided) -> norm -> LeakyReLU, repeated n times.

    No convolution bias before an instance or batch norm: the norm subtracts it again, so its
    gradient is pure rounding noise, which Adam would turn into full-size random steps."""

    def __init__(self, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int], n: int,
                 norm: str, slope: float):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, tuple(kernel), stride=tuple(stride) if i == 0 else 1,
                                 padding=tuple(k // 2 for k in kernel), bias=norm in ("none", "group")),
                       _norm(norm, c_out), nn.LeakyReLU(slope, inplace=True)]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """Encoder of strided conv stages, decoder of transposed convs with skip connections."""

    def __init__(self, in_channels: int, out_channels: int, spec: UNetSpec, head_bias: bool = True):
        super().__init__()
        f, st, ks = spec.features_per_stage, spec.strides, spec.kernel_sizes
        if not (len(f) == len(st) == len(ks)):
            raise ValueError("features_per_stage, strides and kernel_sizes must have one entry per stage")
        self.spec = spec
        self.encoder = nn.ModuleList()
        c = in_channels
        for i in range(len(f)):
            self.encoder.append(ConvBlock(c, f[i], ks[i], st[i], spec.n_conv_per_stage, spec.norm, spec.negative_slope))
            c = f[i]
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(f) - 1, 0, -1):
            self.upsample.append(nn.ConvTranspose3d(f[i], f[i - 1], tuple(st[i]), stride=tuple(st[i])))
            self.decoder.append(ConvBlock(2 * f[i - 1], f[i - 1], ks[i - 1], (1, 1, 1), spec.n_conv_per_stage,
                                          spec.norm, spec.negative_slope))
        # head_bias=False for DSNT: a softmax over the volume ignores a per-channel constant
        self.head = nn.Conv3d(f[0], out_channels, 1, bias=head_bias)
        self.bottleneck_channels = f[-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder stage's features (what the heads read; the segmentation head too)."""
        skips = self.encode(x)
        x = skips[-1]
        for up, dec, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
