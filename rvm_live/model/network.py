"""RVM's MattingNetwork: encoder → LR-ASPP → recurrent decoder → fgr/alpha projection → guided-filter refiner.

Pure ``nn.Module``s: the four recurrent states go in and come out explicitly. ``src`` may be
``[B, C, H, W]`` (one frame per stream) or ``[B, T, C, H, W]`` (T frames per stream, state carried
through them in order).

The low-resolution part (everything before the refiner) may run in another dtype than the refiner
(:meth:`MattingNetwork.low_res_to`): bfloat16 on CPUs with native bf16, where the refiner stays in float32
because its box-filter variances (``E[x²] − E[x]²``) cancel catastrophically at bf16's 8-bit mantissa.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .decoder import Projection, RecurrentDecoder
from .lraspp import LRASPP
from .mobilenetv3 import MobileNetV3LargeEncoder
from .refiner import DeepGuidedFilterRefiner
from .resnet import ResNet50Encoder

# backbone -> (encoder class, LR-ASPP channels, decoder channels)
VARIANTS = {
    "mobilenetv3": (MobileNetV3LargeEncoder, 128, (80, 40, 32, 16)),
    "resnet50": (ResNet50Encoder, 256, (128, 64, 32, 16)),
}

MattingOutput = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


class MattingNetwork(nn.Module):
    """Robust Video Matting; parameter names match the official checkpoints."""

    def __init__(self, backbone: str = "mobilenetv3") -> None:
        super().__init__()
        if backbone not in VARIANTS:
            raise ValueError(f"backbone must be one of {sorted(VARIANTS)}, got {backbone!r}")
        encoder, aspp_channels, decoder_channels = VARIANTS[backbone]
        self.backbone_name = backbone
        self.backbone = encoder()
        feature_channels = [*encoder.channels[:3], aspp_channels]
        self.aspp = LRASPP(encoder.channels[3], aspp_channels)
        self.decoder = RecurrentDecoder(feature_channels, list(decoder_channels))
        self.project_mat = Projection(16, 4)
        self.project_seg = Projection(16, 1)  # segmentation head: unused for matting, kept for strict loading
        self.refiner = DeepGuidedFilterRefiner()

    @property
    def low_res_dtype(self) -> torch.dtype:
        """The dtype of the low-resolution part (and of the recurrent state)."""
        return self.project_mat.conv.weight.dtype

    def low_res_to(self, dtype: torch.dtype) -> MattingNetwork:
        """Put the low-resolution part (encoder, LR-ASPP, decoder, projections) in ``dtype``, leaving the refiner
        as it is; inputs and outputs keep the refiner's dtype (casts at the boundary). Returns ``self``."""
        if not dtype.is_floating_point:
            raise TypeError(f"low_res_to: a floating-point dtype, got {dtype}")
        for part in (self.backbone, self.aspp, self.decoder, self.project_mat, self.project_seg):
            part.to(dtype)
        return self

    def forward(self, src: Tensor, r1: Tensor | None = None, r2: Tensor | None = None, r3: Tensor | None = None,
                r4: Tensor | None = None, downsample_ratio: float = 1.0, always_refine: bool = False) -> MattingOutput:
        """Returns ``fgr, pha, r1, r2, r3, r4``; fgr and pha have ``src``'s layout, in 0..1.

        ``always_refine`` runs the guided filter even at ratio 1, as the official ONNX export does (the
        official PyTorch model skips it there)."""
        if src.ndim == 5:
            batch, steps = src.shape[:2]
            x = src.flatten(0, 1)
        elif src.ndim == 4:
            batch, steps, x = src.shape[0], 1, src
        else:
            raise ValueError(f"src must be [B,C,H,W] or [B,T,C,H,W], got shape {tuple(src.shape)}")
        if downsample_ratio != 1:
            small = F.interpolate(x, scale_factor=downsample_ratio, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)
        else:
            small = x
        fgr_residual, pha, hid, rec = self._low_res(small, (r1, r2, r3, r4), steps)
        if downsample_ratio != 1 or always_refine:
            fgr, pha = self.refiner(x, small, fgr_residual, pha, hid)
        else:
            fgr = (fgr_residual + x).clamp_(0.0, 1.0)
            pha = pha.clamp(0.0, 1.0)
        if src.ndim == 5:
            fgr, pha = fgr.unflatten(0, (batch, steps)), pha.unflatten(0, (batch, steps))
        return fgr, pha, *rec

    def coefficients(self, small: Tensor, r1: Tensor | None = None, r2: Tensor | None = None,
                     r3: Tensor | None = None, r4: Tensor | None = None) -> MattingOutput:
        """The network up to the guided filter's low-resolution ``A, b`` (``[B,4,h,w]`` each) for ``small``, the
        frames already at the internal size (``[B,3,h,w]``, 0..1); returns ``A, b, r1, r2, r3, r4``. What the
        CPU's fast full-resolution stage applies (rvm_live/engine/fullres.py)."""
        if small.ndim != 4:
            raise ValueError(f"small must be [B,3,h,w], got shape {tuple(small.shape)}")
        fgr_residual, pha, hid, rec = self._low_res(small, (r1, r2, r3, r4), 1)
        a, b = self.refiner.coefficients(small, fgr_residual, pha, hid)
        return a, b, *rec

    def _low_res(self, small: Tensor, rec: tuple[Tensor | None, ...],
                 steps: int) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Encoder, LR-ASPP, recurrent decoder and projection at the internal size: the fgr residual, alpha,
        the decoder's hidden features (in ``small``'s dtype) and the new recurrent state (in the part's dtype)."""
        dtype = self.low_res_dtype
        low = small.to(dtype)  # no copy when the dtypes agree
        f1, f2, f3, f4 = self.backbone(low)
        hid, *rec_out = self.decoder(low, f1, f2, f3, self.aspp(f4), *rec, steps)
        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)
        if dtype != small.dtype:
            fgr_residual, pha, hid = fgr_residual.to(small.dtype), pha.to(small.dtype), hid.to(small.dtype)
        return fgr_residual, pha, hid, rec_out
