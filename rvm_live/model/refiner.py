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
        # constants of forward()'s rewrite, as buffers so they follow .to(device, dtype): a tensor made from
        # host data per call would be a blocking host->device copy on CUDA, and illegal in a graph capture
        self.register_buffer("scale", torch.tensor([1.0, 1.0, 1.0, 1.0 / 3.0]).view(1, 4, 1, 1), persistent=False)
        self.register_buffer("offset", torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 4, 1, 1), persistent=False)

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
        """Final ``fgr`` and ``pha`` at ``fine_src``'s size, clamped to 0..1 (``base_fgr`` is a residual)."""
        a, b = self.coefficients(base_src, base_fgr, base_pha, base_hid)
        # The full-resolution part dominates at 720p and up, so it is written in its cheapest form. Bilinear
        # upsampling is affine, so constant scales and offsets move to the low-resolution side:
        #   fgr = A_rgb * x + b_rgb + x           = (A_rgb + 1) * x + b_rgb
        #   pha = A_a * mean(x) + b_a             = (A_a / 3) * sum(x) + b_a
        # which leaves one 8-channel upsample and two multiply-adds at full resolution.
        coeffs = torch.cat([torch.addcmul(self.offset, a, self.scale), b], dim=1)
        coeffs = F.interpolate(coeffs, fine_src.shape[2:], mode="bilinear", align_corners=False)
        fgr = torch.addcmul(coeffs[:, 4:7], coeffs[:, 0:3], fine_src).clamp_(0.0, 1.0)
        pha = torch.addcmul(coeffs[:, 7:8], coeffs[:, 3:4], fine_src.sum(1, keepdim=True)).clamp_(0.0, 1.0)
        return fgr, pha
