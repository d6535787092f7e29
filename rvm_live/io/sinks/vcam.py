"""The virtual camera output (``vcam`` or ``vcam:/dev/video10``) through pyvirtualcam.

Video-call apps read it like a webcam. When no virtual camera can be opened, the error carries the exact
command that fixes it, and :func:`doctor` explains what is missing (for ``rvm-live doctor``).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyvirtualcam

from ...errors import SinkError, VirtualCameraError
from .base import SinkBase, register_sink
from .sizing import SizeKeeper

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame

log = logging.getLogger(__name__)

MODPROBE_FIX = 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="rvm-live"'
INSTALL_FIX = "sudo apt install v4l2loopback-dkms  (or your distribution's v4l2loopback package)"
OBS_FIX = "install OBS Studio and start its Virtual Camera once (Windows/macOS)"
GROUP_FIX = "sudo usermod -aG video $USER, then log in again"


def fix_hint() -> str:
    """The lines telling a user how to get a virtual camera on this platform (and the others)."""
    return f"Fix on Linux: {MODPROBE_FIX}\nFix on Windows/macOS: {OBS_FIX}"


class VcamSink(SinkBase):
    """Frames to a pyvirtualcam ``Camera`` in RGB (virtual cameras carry no alpha: ``accepts_alpha`` is False,
    so the sink worker hands it RGB only)."""

    live = True
    accepts_alpha = False

    def __init__(self, device: str | None = None, *, backend: str | None = None) -> None:
        if device is not None and (not isinstance(device, str) or not device):
            raise ValueError(f"vcam device: {device!r} is not a device name")
        self.device = device
        self.backend = backend
        self.name = f"vcam:{device}" if device else "vcam"
        self.frames_sent = 0
        self._cam: pyvirtualcam.Camera | None = None
        self._shape: tuple[int, int, int] = (0, 0, 3)
        self._resizer = SizeKeeper(self.name)

    def open(self, width: int, height: int, fps: float) -> None:
        """Open the virtual camera at this size; ``VirtualCameraError`` with the fix when there is none."""
        if width <= 0 or height <= 0 or not fps or fps <= 0:
            raise ValueError(f"vcam: bad size/fps {width}x{height} @ {fps}")
        self.close()
        try:
            cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                      device=self.device, backend=self.backend)
        except Exception as exc:  # pyvirtualcam joins every backend's error in one RuntimeError
            where = f" {self.device}" if self.device else ""
            detail = " | ".join(str(exc).splitlines()) or type(exc).__name__
            raise VirtualCameraError(f"cannot open virtual camera{where}: {detail}\n{fix_hint()}") from exc
        self._cam = cam
        self._shape = (height, width, 3)
        log.info("virtual camera %s (%s backend): %dx%d @ %g fps", cam.device, cam.backend, width, height,
                 fps)

    def write(self, frame: Frame) -> None:
        """Send one frame (RGB: a virtual camera takes no alpha, so it is never given RGBA)."""
        if self._cam is None:
            raise SinkError(f"{self.name}: write() before open()")
        image = frame.image
        if image.shape[:2] != self._shape[:2] and image.ndim == 3 and image.shape[2] == 3:
            # the device keeps its size while apps watch it: a source's size change is scaled to it
            image = self._resizer.fit(image, self._shape[1], self._shape[0])
        if image.shape != self._shape or image.dtype != np.uint8:
            raise SinkError(f"{self.name}: frame is {image.shape} {image.dtype}, camera opened for "
                            f"{self._shape} uint8")
        try:
            self._cam.send(np.ascontiguousarray(image))
        except Exception as exc:  # a backend may raise anything when its device goes away
            raise SinkError(f"{self.name}: send failed: {exc}") from exc
        self.frames_sent += 1

    def close(self) -> None:
        """Release the device; safe to call more than once."""
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()


@register_sink("vcam")
def vcam_sink(spec: str, config: Config) -> VcamSink:
    """Factory for ``vcam`` / ``vcam:/dev/videoN``; the spec's device wins over ``config.vcam_device``."""
    device = spec.split(":", 1)[1] if ":" in spec else None
    return VcamSink(device or config.vcam_device)


@dataclass(frozen=True)
class Check:
    """One line of ``rvm-live doctor``: what was checked, whether it passed, and the fix if not."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


def loopback_devices(sys_root: str | os.PathLike[str] = "/sys") -> list[tuple[str, str]]:
    """(``/dev/videoN``, card label) of each v4l2loopback device (they live under devices/virtual)."""
    found = []
    for node in sorted(Path(sys_root, "class", "video4linux").glob("video*")):
        if "/devices/virtual/" not in str(node.resolve()):
            continue
        try:
            label = (node / "name").read_text().strip()
        except OSError:
            label = ""
        found.append((f"/dev/{node.name}", label))
    return found


def _linux_checks(sys_root: str | os.PathLike[str], dev_root: str | os.PathLike[str]) -> list[Check]:
    module = Path(sys_root, "module", "v4l2loopback")
    checks = [Check("v4l2loopback module loaded", module.is_dir(), "",
                    f"{MODPROBE_FIX}\n(if modprobe cannot find it: {INSTALL_FIX})")]
    devices = loopback_devices(sys_root)
    listing = ", ".join(f"{d} ({label})" if label else d for d, label in devices)
    checks.append(Check("loopback devices present", bool(devices), listing or "none", MODPROBE_FIX))
    for dev, _label in devices:
        path = Path(dev_root, Path(dev).name)
        checks.append(Check(f"{dev} writable", os.access(path, os.W_OK), "", GROUP_FIX))
    caps = module / "parameters" / "exclusive_caps"
    if caps.is_file():
        # Chrome and WebRTC apps only list a loopback device that advertises capture-only caps.
        value = caps.read_text().strip()
        ok = value.split(",")[0] in ("Y", "1")
        checks.append(Check("exclusive_caps=1 (needed by Chrome/WebRTC)", ok, value,
                            f"sudo modprobe -r v4l2loopback && {MODPROBE_FIX}"))
    return checks


def doctor(
    *, sys_root: str | os.PathLike[str] = "/sys", dev_root: str | os.PathLike[str] = "/dev"
) -> list[Check]:
    """Check the virtual-camera setup; each failed ``Check`` carries its fix. Roots are for tests."""
    backends = sorted(pyvirtualcam.camera.BACKENDS)
    checks = [Check("pyvirtualcam backends", bool(backends), ", ".join(backends) or "none", OBS_FIX)]
    if platform.system() == "Linux":
        checks += _linux_checks(sys_root, dev_root)
    return checks
