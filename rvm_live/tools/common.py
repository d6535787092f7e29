"""What every benchmark shares: real frames (the demo clip at any size), a clip file made of them, and the
machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch


def bench_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` RGB uint8 frames of the demo clip resized to ``width x height``, looped as needed."""
    import cv2

    from ..assets import demo_clip
    from ..io._av import av

    with av.open(str(demo_clip())) as container:
        clip = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    shrink = width * height < clip[0].shape[0] * clip[0].shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = [cv2.resize(f, (width, height), interpolation=interp) for f in clip[:count]]
    return [resized[i % len(resized)] for i in range(count)]


def encode_clip(frames: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    """Write ``frames`` to an H.264 file (near-lossless) for the end-to-end run."""
    from ..io._av import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for frame in frames:
            image = np.ascontiguousarray(frame[: stream.height, : stream.width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def machine_info() -> dict[str, Any]:
    """CPU model, core count, library versions: what a number in BENCHMARKS.md needs next to it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
