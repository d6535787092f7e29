"""Deep guided filter: upsamples the low-resolution fgr/alpha to full resolution, guided by the image."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class DeepGuidedFilterRefiner(nn.Module):
    """Fits a per-pixel linear model ``y = A x + b`` at low resolution and applies it at full resolution."""

    def __init__(self, hid_channels: int = 16) -> None:
        super().__init__()
        self.box_filter = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False, groups=4)
        nn.init.constant_(self.box_filter.weight, 1 / 9)
        self.conv = nn.Sequential(
            nn.Conv2d(4 * 2 + hid_channels, hid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_channels),
            nn.ReLU(True),
            nn.Conv2d(hid_channels, hid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_channels),
            nn.ReLU(True),
            nn.Conv2d(hid_channels, 4, kernel_size=1, bias=True),
        )

    def coefficients(self, base_src: Tensor, base_fgr: Tensor, base_pha: Tensor,
                     base_hid: Tensor) -> tuple[Tensor, Tensor]:
        """Low-resolution ``A`` and ``b`` (4 channels each: the 3 fgr channels and alpha)."""
        base_x = torch.cat([base_src, base_src.mean(1, keepdim=True)], dim=1)
        base_y = torch.cat([base_fgr, base_pha], dim=1)
        mean_x = self.box_filter(base_x)
        mean_y = self.box_filter(base_y)
        cov_xy = self.box_filter(base_x * base_y) - mean_x * mean_y
        var_x = self.box_filter(base_x * base_x) - mean_x * mean_x
        a = self.conv(torch.cat([cov_xy, var_x, base_hid], dim=1))
        return a, mean_y - a * mean_x

    def forward(self, fine_src: Tensor, base_src: Tensor, base_fgr: Tensor, base_pha: Tensor,
                base_hid: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.coefficients(base_src, base_fgr, base_pha, base_hid)
        size = fine_src.shape[2:]
        a = F.interpolate(a, size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size, mode="bilinear", align_corners=False)
        fine_x = torch.cat([fine_src, fine_src.mean(1, keepdim=True)], dim=1)
        out = a * fine_x + b
        return out[:, :3], out[:, 3:]
