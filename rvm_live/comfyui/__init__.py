"""The ComfyUI node ``Robust Video Matting`` (needs ComfyUI's ``comfy`` and ``folder_paths`` modules at run time).

``node.py`` holds the node (inputs, tooltips, outputs, progress and cancel); ``runtime.py`` what it borrows
from ComfyUI: the device, model management (``ModelPatcher`` + ``load_models_gpu``) and ``models/rvm``.
Importing this package imports nothing of ComfyUI, so it stays importable (and testable) outside it."""

from __future__ import annotations

from .node import RobustVideoMatting

NODE_CLASS_MAPPINGS = {"Robust Video Matting": RobustVideoMatting}
NODE_DISPLAY_NAME_MAPPINGS = {"Robust Video Matting": "Robust Video Matting (rvm-live)"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "RobustVideoMatting"]
