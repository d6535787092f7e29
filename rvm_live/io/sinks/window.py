"""A preview window (``window`` or ``window:Title``) drawn with OpenCV's highgui in a child process.

Transparent output is shown over a grey checkerboard, as image editors do. On a machine without a display
``open()`` raises ``SinkError`` instead of letting the GUI toolkit abort the process.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import re
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import numpy as np

from ...errors import SinkError
from .base import SinkBase, register_sink

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame

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


# The window lives in a child interpreter that imports OpenCV before anything else: with PyAV's bundled
# libraries loaded first, OpenCV's Qt window spins forever (PyAV issues #978, #1050), and a GUI toolkit
# that aborts on a broken display takes only the child down. Frames go down stdin as (width, height)
# headers plus BGR bytes; the child answers "ready", "error <why>" or "closed" on stdout.
_CHILD_PROGRAM = r"""
import sys
import cv2
import numpy as np

title = sys.argv[1]
try:
    cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
    cv2.resizeWindow(title, int(sys.argv[2]), int(sys.argv[3]))
except cv2.error as exc:
    print("error", " ".join(str(exc).split()), flush=True)
    sys.exit(1)
print("ready", flush=True)
stdin = sys.stdin.buffer
while True:
    header = stdin.read(8)
    if len(header) < 8:
        break
    w, h = int.from_bytes(header[:4], "little"), int.from_bytes(header[4:], "little")
    if w == 0:
        break
    data = stdin.read(w * h * 3)
    if len(data) < w * h * 3:
        break
    cv2.imshow(title, np.frombuffer(data, np.uint8).reshape(h, w, 3))
    cv2.waitKey(1)
    if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
        print("closed", flush=True)
        break
cv2.destroyAllWindows()
"""
_START_TIMEOUT_S = 20.0


class WindowSink(SinkBase):
    """Shows each frame in a preview window; closing the window stops the preview, not the pipeline."""

    live = True
    accepts_alpha = True

    def __init__(self, title: str = DEFAULT_TITLE) -> None:
        if not isinstance(title, str) or not title:
            raise ValueError(f"window title: {title!r} must be a non-empty string")
        self.title = title
        self.name = f"window:{title}"
        self.frames_shown = 0
        self.closed_by_user = False
        self._child: subprocess.Popen[bytes] | None = None
        self._messages: queue.Queue[str] = queue.Queue()
        self._board: np.ndarray | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        """Start the preview window; ``SinkError('no display ...')`` on a headless machine."""
        problem = display_problem()
        if problem:
            raise SinkError(problem)
        self.close()
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_PROGRAM, self.title, str(width), str(height)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        messages: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_forward_lines, args=(child, messages), name="window-child-reader",
                         daemon=True).start()
        try:
            first = messages.get(timeout=_START_TIMEOUT_S)
        except queue.Empty:
            first = f"error no window after {_START_TIMEOUT_S:g} s"
        if first != "ready":
            _stop(child)
            why = first.removeprefix("error ") if first else f"exit status {child.returncode}"
            raise SinkError(f"no display: cannot open a preview window: {why}")
        self._child, self._messages = child, messages
        self._board = checkerboard(height, width)
        self.closed_by_user = False

    def _user_closed(self) -> bool:
        while not self._messages.empty():
            if self._messages.get_nowait() == "closed":
                self.closed_by_user = True
        return self.closed_by_user

    def write(self, frame: Frame) -> None:
        """Show ``frame`` (RGBA over a checkerboard)."""
        if self._child is None:
            if self.closed_by_user:
                return
            raise SinkError(f"{self.name}: write() before open()")
        image = frame.image
        if image.shape[2] == 4:
            if self._board is None or self._board.shape[:2] != image.shape[:2]:
                self._board = checkerboard(*image.shape[:2])
            image = flatten_rgba(image, self._board)
        height, width = image.shape[:2]
        header = width.to_bytes(4, "little") + height.to_bytes(4, "little")
        stdin = self._child.stdin
        try:
            if stdin is None:  # cannot happen with stdin=PIPE; keeps the type checker honest
                raise BrokenPipeError("no pipe to the preview process")
            stdin.write(header + np.ascontiguousarray(image[..., ::-1]).tobytes())
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self._child.wait(5)
            if not self._user_closed():
                self.close()
                raise SinkError(f"{self.name}: preview window died ({exc})") from exc
        if self._user_closed():
            log.info("preview window %r closed by the user; preview stops", self.title)
            self.close()
            return
        self.frames_shown += 1

    def close(self) -> None:
        """Close the window; safe to call more than once."""
        child, self._child = self._child, None
        if child is not None:
            _stop(child)


def _forward_lines(child: subprocess.Popen[bytes], messages: queue.Queue[str]) -> None:
    for line in child.stdout or ():
        messages.put(line.decode("utf-8", "replace").strip())
    messages.put("")  # EOF: the child is gone


def _stop(child: subprocess.Popen[bytes]) -> None:
    try:
        if child.stdin is not None and not child.stdin.closed:
            child.stdin.write(bytes(8))  # a 0x0 header: quit
            child.stdin.close()
    except OSError:
        pass  # already gone
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(5)


@register_sink("window")
def window_sink(spec: str, config: Config) -> WindowSink:
    """Factory for ``window`` / ``window:Title``."""
    title = spec.split(":", 1)[1] if ":" in spec else ""
    return WindowSink(title or DEFAULT_TITLE)
