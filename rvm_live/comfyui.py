"""The ComfyUI node ``Robust Video Matting``: the seed's inputs and outputs, on the fixed ``matting()``."""

from __future__ import annotations

import torch

from .matting import matting
from .weights import BACKBONES


class RobustVideoMatting:
    """ComfyUI node: IMAGE frames in, composited IMAGE and alpha MASK out."""

    CATEGORY = "image/matting"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("IMAGE", "MASK")
    FUNCTION = "matting"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "video_frames": ("IMAGE",),
                "backbone": (list(reversed(BACKBONES)), {"default": "resnet50"}),
                "fp16": ("BOOLEAN", {"default": True}),
                "bg_color": ("STRING", {"default": "green"}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64}),
            }
        }

    def matting(self, video_frames: torch.Tensor, backbone: str, fp16: bool, bg_color: str,
                batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``rvm_live.matting`` with the node's inputs."""
        return matting(video_frames, backbone=backbone, fp16=fp16, bg_color=bg_color, batch_size=batch_size)


NODE_CLASS_MAPPINGS = {"Robust Video Matting": RobustVideoMatting}
NODE_DISPLAY_NAME_MAPPINGS = {"Robust Video Matting": "Robust Video Matting (rvm-live)"}
