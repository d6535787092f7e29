"""A preview window (``window`` or ``window:Title``) drawn with OpenCV's highgui.

Transparent output is shown over a grey checkerboard, as image editors do. On a machine without a display
``open()`` raises ``SinkError`` instead of letting the GUI toolkit abort the process.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import SinkError
from .base import register_sink

if TYPE_CHECKING:
    from ..config import Config
    from ..frame import Frame

log = logging.getLogger(__name__)

DEFAULT_TITLE = "rvm-live"
_CHECKER = 16  # checkerboard square, pixels


def x_display_reachable(display: str) -> bool:
    """True when the X server named by ``display`` (``:0``, ``host:1.0``) accepts a connection.

    Qt aborts the whole process when it cannot reach the display, so this is checked first."""
    m = re.fullmatch(r"(?P<host>[^:]*):(?P<num>\d+)(\.\d+)?", display)
    if not m:
        return False
    host, num = m.group("host"), int(m.group("num"))
    try:
        if host in ("", "unix"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(f"/tmp/.X11-unix/X{num}")
        else:
            socket.create_connection((host, 6000 + num), timeout=2).close()
    except OSError:
        return False
    return True


def display_problem() -> str | None:
    """Why no window can be shown here, or None when a display looks usable."""
    if platform.system() != "Linux":
        return None  # Windows and macOS always have a desktop session for a user process
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "vnc", "eglfs")):
        return None
    display = os.environ.get("DISPLAY", "")
    if display:
        return None if x_display_reachable(display) else f"no display: cannot connect to X server {display!r}"
    if os.environ.get("WAYLAND_DISPLAY"):
        return "no display: Wayland without XWayland (DISPLAY is not set)"
    return "no display: DISPLAY is not set (use --output file/stream/vcam on a headless machine)"


def checkerboard(height: int, width: int) -> np.ndarray:
    """A light/dark grey checkerboard, ``H x W x 3`` float32 in 0..255."""
    ys, xs = np.indices((height, width))
    light = ((ys // _CHECKER + xs // _CHECKER) % 2).astype(bool)
    board = np.where(light, 204.0, 153.0).astype(np.float32)
    return np.repeat(board[..., None], 3, axis=2)


def flatten_rgba(image: np.ndarray, board: np.ndarray) -> np.ndarray:
    """RGBA over the checkerboard, as RGB uint8."""
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    rgb = image[..., :3].astype(np.float32) * alpha + board * (1.0 - alpha)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


class WindowSink:
    """Shows each frame in an OpenCV window; closing the window stops the preview, not the pipeline."""

    live = True
    accepts_alpha = True

    def __init__(self, title: str = DEFAULT_TITLE) -> None:
        if not isinstance(title, str) or not title:
            raise ValueError(f"window title: {title!r} must be a non-empty string")
        self.title = title
        self.name = f"window:{title}"
        self.frames_shown = 0
        self.closed_by_user = False
        self._open = False
        self._board: np.ndarray | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        """Create the window; ``SinkError('no display ...')`` on a headless machine."""
        problem = display_problem()
        if problem:
            raise SinkError(problem)
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.resizeWindow(self.title, width, height)
        except cv2.error as exc:
            raise SinkError(f"no display: OpenCV cannot create a window: {exc}") from exc
        self._board = checkerboard(height, width)
        self._open, self.closed_by_user = True, False

    def write(self, frame: Frame) -> None:
        """Draw ``frame`` and let the GUI process its events."""
        if not self._open:
            if self.closed_by_user:
                return
            raise SinkError(f"{self.name}: write() before open()")
        image = frame.image
        if image.shape[2] == 4:
            if self._board is None or self._board.shape[:2] != image.shape[:2]:
                self._board = checkerboard(*image.shape[:2])
            image = flatten_rgba(image, self._board)
        try:
            cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)  # highgui only paints while events are pumped
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
        except cv2.error as exc:
            raise SinkError(f"{self.name}: cannot draw: {exc}") from exc
        self.frames_shown += 1
        if visible < 1:
            log.info("preview window %r closed by the user; preview stops", self.title)
            self.closed_by_user = True
            self.close()

    def close(self) -> None:
        """Destroy the window; safe to call more than once."""
        if not self._open:
            return
        self._open = False
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error as exc:  # already destroyed by the user
            log.debug("destroying window %r: %s", self.title, exc)


@register_sink("window")
def window_sink(spec: str, config: Config) -> WindowSink:
    """Factory for ``window`` / ``window:Title``."""
    title = spec.split(":", 1)[1] if ":" in spec else ""
    return WindowSink(title or DEFAULT_TITLE)
