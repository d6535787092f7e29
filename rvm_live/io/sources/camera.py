"""Webcams through OpenCV: ``camera:0``, ``camera:/dev/video2`` or ``/dev/video2``.

The capture buffer is kept at one frame, so a slow model always gets the freshest picture rather than a
backlog, and 1080p webcams are asked for MJPG (most cannot send raw 1080p at 30 fps over USB 2).
"""

from __future__ import annotations

import glob
import logging
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ...errors import ConfigError, SourceError
from .base import SourceBase, register_source

if TYPE_CHECKING:
    from ...config import Config

log = logging.getLogger(__name__)

_PROBE_INDICES = range(10)  # where there is no /dev to list, probe the first indices
_MJPG_MIN_PIXELS = 1280 * 720


@dataclass(frozen=True)
class CameraInfo:
    """A camera that could be opened: the spec to pass as ``--source``, and a human-readable name."""

    spec: str
    name: str

    def __str__(self) -> str:
        return f"{self.spec} ({self.name})" if self.name else self.spec


def parse_camera_spec(spec: str) -> int | str:
    """The OpenCV device for ``camera:N``, ``camera:/dev/videoN``, ``/dev/videoN`` or ``camera``."""
    if not isinstance(spec, str):
        raise TypeError(f"camera spec: expected str, got {type(spec).__name__}")
    rest = spec.split(":", 1)[1] if spec.lower().startswith("camera") and ":" in spec else spec
    if rest.lower() == "camera" or rest == "":
        return 0
    if rest.isdigit():
        return int(rest)
    if rest.startswith("/dev/"):
        return rest
    raise ConfigError(f"camera {spec!r}: expected camera:N, camera:/dev/videoN or /dev/videoN")


def _backend() -> int:
    # V4L2 directly: the default (GStreamer, if built in) adds latency and ignores BUFFERSIZE.
    return cv2.CAP_V4L2 if platform.system() == "Linux" else cv2.CAP_ANY


def _sysfs_name(path: str) -> str:
    try:
        return Path("/sys/class/video4linux", Path(path).name, "name").read_text().strip()
    except OSError:
        return ""


def _can_open(device: int | str) -> bool:
    cap = cv2.VideoCapture(device, _backend())
    try:
        return bool(cap.isOpened())
    finally:
        cap.release()


def list_cameras() -> list[CameraInfo]:
    """Cameras that open right now. On Linux each /dev/video* node is probed (metadata nodes and
    v4l2loopback outputs with no producer fail to open and are left out); elsewhere indices 0-9."""
    if platform.system() == "Linux":
        def node_number(p: str) -> int:
            m = re.search(r"(\d+)$", p)
            return int(m.group(1)) if m else 0

        found = []
        for path in sorted(glob.glob("/dev/video*"), key=node_number):
            if _can_open(path):
                found.append(CameraInfo(f"camera:{path}", _sysfs_name(path)))
        return found
    return [CameraInfo(f"camera:{i}", "") for i in _PROBE_INDICES if _can_open(i)]


class CameraSource(SourceBase):
    """A live OpenCV ``VideoCapture`` honouring the configured width, height, fps and fourcc."""

    def __init__(
        self,
        spec: str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
    ) -> None:
        self.device = parse_camera_spec(spec)
        if fourcc is not None and len(fourcc) != 4:
            raise ConfigError(f"fourcc: {fourcc!r} must be four characters, e.g. MJPG")
        self.name = spec
        self.live = True
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None  # (width, height) once open
        self._want = (width, height, fps, fourcc)
        self._cap: cv2.VideoCapture | None = None

    def _configure(self, cap: cv2.VideoCapture) -> None:
        width, height, fps, fourcc = self._want
        if fourcc is None and width and height and width * height >= _MJPG_MIN_PIXELS:
            fourcc = "MJPG"
        # Fourcc first: some drivers only list the large sizes once MJPG is selected.
        if fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def open(self) -> None:
        """Open the camera; the error lists the cameras that can be opened instead."""
        self.close()
        cap = cv2.VideoCapture(self.device, _backend())
        if not cap.isOpened():
            cap.release()
            cameras = list_cameras()
            available = ", ".join(map(str, cameras)) if cameras else "none found"
            raise SourceError(f"camera {self.device!r} cannot be opened; available cameras: {available}")
        self._configure(cap)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or self._want[2] or 30.0
        want = self._want[:2]
        if all(want) and got != want:
            log.warning("camera %s: asked for %dx%d, got %dx%d", self.device, *want, *got)
        log.info("opened camera %s: %dx%d @ %.1f fps", self.device, got[0], got[1], self.fps)
        self.size = got
        self._cap = cap

    def read(self) -> np.ndarray | None:
        """The freshest frame as RGB uint8; a camera that stops delivering raises ``SourceError``."""
        if self._cap is None:
            raise SourceError(f"camera {self.device!r}: read() before open()")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceError(f"camera {self.device!r} stopped delivering frames (unplugged or in use?)")
        if bgr.ndim == 2:  # greyscale (IR) cameras
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the device; safe to call more than once."""
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


@register_source("camera")
def camera_source(spec: str, config: Config) -> CameraSource:
    """Factory for ``camera:N`` / ``/dev/videoN`` using ``config.width/height/fps/fourcc``."""
    return CameraSource(spec, width=config.width, height=config.height, fps=config.fps, fourcc=config.fourcc)
