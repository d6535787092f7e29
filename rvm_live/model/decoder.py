"""RVM's recurrent decoder: ConvGRUs at four scales carry temporal state from frame to frame.

Tensors are ``[N, C, H, W]`` with ``N = B * T`` (time flattened into the batch, frame-major per stream);
only the ConvGRU needs ``steps = T`` to unroll the recurrence. States are ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ConvGRU(nn.Module):
    """Convolutional GRU over ``steps`` frames per stream; a ``None`` state starts at zeros."""

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, kernel_size, padding=padding), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, kernel_size, padding=padding), nn.Tanh())

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One time step; returns the new state."""
        r, z = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        c = self.hh(torch.cat([x, r * h], dim=1))
        return torch.lerp(h, c, z)  # (1 - z) * h + z * c

    def forward(self, x: Tensor, h: Tensor | None, steps: int = 1) -> tuple[Tensor, Tensor]:
        batch = x.shape[0] // steps
        if h is None:
            h = torch.zeros_like(x[:batch])  # keeps x's memory format (channels_last stays channels_last)
        if steps == 1:
            h = self.step(x, h)
            return h, h
        xs = x.unflatten(0, (batch, steps))
        outs = []
        for t in range(steps):
            h = self.step(xs[:, t], h)
            outs.append(h)
        return torch.stack(outs, dim=1).flatten(0, 1), h


class BottleneckBlock(nn.Module):
    """Half the channels pass through, the other half through a ConvGRU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)

    def forward(self, x: Tensor, r: Tensor | None, steps: int) -> tuple[Tensor, Tensor]:
        a, b = x.split(self.channels // 2, dim=1)
        b, r = self.gru(b, r, steps)
        return torch.cat([a, b], dim=1), r


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    # x2 bilinear, then crop: odd sizes round up in the encoder (ceil-mode pooling / strided convs)
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x[:, :, : like.shape[2], : like.shape[3]]


class UpsamplingBlock(nn.Module):
    """Upsample, concatenate the skip feature and the downsampled image, conv, then a half-ConvGRU."""

    def __init__(self, in_channels: int, skip_channels: int, src_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )
        self.gru = ConvGRU(out_channels // 2)

    def forward(self, x: Tensor, f: Tensor, s: Tensor, r: Tensor | None, steps: int) -> tuple[Tensor, Tensor]:
        x = self.conv(torch.cat([_upsample_to(x, s), f, s], dim=1))
        a, b = x.split(self.out_channels // 2, dim=1)
        b, r = self.gru(b, r, steps)
        return torch.cat([a, b], dim=1), r


class OutputBlock(nn.Module):
    """Final upsample to the (downsampled) input size and two convs; no recurrence."""

    def __init__(self, in_channels: int, src_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return self.conv(torch.cat([_upsample_to(x, s), s], dim=1))


class RecurrentDecoder(nn.Module):
    """Decodes encoder features (strides 2..16) into a 16-channel hidden map at the input size."""

    def __init__(self, feature_channels: list[int], decoder_channels: list[int]) -> None:
        super().__init__()
        self.decode4 = BottleneckBlock(feature_channels[3])
        self.decode3 = UpsamplingBlock(feature_channels[3], feature_channels[2], 3, decoder_channels[0])
        self.decode2 = UpsamplingBlock(decoder_channels[0], feature_channels[1], 3, decoder_channels[1])
        self.decode1 = UpsamplingBlock(decoder_channels[1], feature_channels[0], 3, decoder_channels[2])
        self.decode0 = OutputBlock(decoder_channels[2], 3, decoder_channels[3])

    def forward(self, s0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor,
                r1: Tensor | None, r2: Tensor | None, r3: Tensor | None, r4: Tensor | None,
                steps: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        s1 = F.avg_pool2d(s0, 2, 2, ceil_mode=True, count_include_pad=False)
        s2 = F.avg_pool2d(s1, 2, 2, ceil_mode=True, count_include_pad=False)
        s3 = F.avg_pool2d(s2, 2, 2, ceil_mode=True, count_include_pad=False)
        x4, r4 = self.decode4(f4, r4, steps)
        x3, r3 = self.decode3(x4, f3, s3, r3, steps)
        x2, r2 = self.decode2(x3, f2, s2, r2, steps)
        x1, r1 = self.decode1(x2, f1, s1, r1, steps)
        return self.decode0(x1, s0), r1, r2, r3, r4


class Projection(nn.Module):
    """1x1 conv head."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
