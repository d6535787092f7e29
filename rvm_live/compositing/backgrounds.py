"""Backgrounds as tensors on the inference device, and the per-frame composite.

A :class:`Background` turns a source frame (``[1,3,H,W]`` float in 0..1 on the inference device) into
the picture to put behind the subject; :func:`composite` blends the model's ``fgr``/``pha`` onto it and
yields the uint8 image and the exact uint8 alpha used, both still on the device.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MediaError, one_line
from ..io._av import RgbConverter, av, decoder_threads
from .colors import color_hint, parse_color
from .pictures import check_picture_size, cover_fit, read_picture, shrink_to_cover

log = logging.getLogger(__name__)

_BLUR = re.compile(r"blur(?::(\d+(?:\.\d+)?))?")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".ts", ".y4m"})
DEFAULT_BLUR_RADIUS = 16.0
MAX_BLUR_RADIUS = 256.0
DEFAULT_MAX_MEGAPIXELS = 40.0
DEFAULT_FALLBACK = "green"
FALLBACK_HOLD_S = 2.0  # a broken background video shows its last good frame this long, then the fallback
_SPEC_HELP = "expected a colour name, #rrggbb, #rgb, an image or video file, blur, blur:RADIUS or transparent"


def frame_size(src: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of a ``[1,3,H,W]`` or ``[3,H,W]`` frame tensor."""
    if src.ndim not in (3, 4) or src.shape[-3] != 3 or (src.ndim == 4 and src.shape[0] != 1):
        raise ValueError(f"source frame: expected shape [1,3,H,W] or [3,H,W], got {list(src.shape)}")
    return int(src.shape[-2]), int(src.shape[-1])


def to_device(image: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Upload an ``H x W x 3`` uint8 picture as ``[1,3,H,W]`` in 0..1 (uint8 crosses the bus, not floats)."""
    t = torch.from_numpy(image).to(device, non_blocking=True)
    return t.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(255)


class Background:
    """What goes behind the subject. ``for_frame`` is called once per output frame."""

    transparent: bool = False
    failure: str | None = None  # set (one line) when the background broke and a fallback is shown instead

    def for_frame(self, src: torch.Tensor) -> torch.Tensor | None:
        """``[1,3,H,W]`` background for source frame ``src``, or None when ``transparent``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; safe to call more than once."""

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ColorBackground(Background):
    """A solid colour; per frame it is a broadcast view, no allocation and no host work."""

    def __init__(self, rgb: tuple[int, int, int], *, device: torch.device | str, dtype: torch.dtype):
        self.rgb = rgb
        color = torch.tensor(rgb, device=device, dtype=torch.float32).div(255)
        self._color = color.to(dtype).view(1, 3, 1, 1)

    def for_frame(self, src: torch.Tensor) -> torch.Tensor:
        h, w = frame_size(src)
        return self._color.expand(1, 3, h, w)

    def __repr__(self) -> str:
        return "ColorBackground(#{:02x}{:02x}{:02x})".format(*self.rgb)


class ImageBackground(Background):
    """A still picture, loaded once and cover-fitted again only when the frame size changes.

    Pictures over ``max_megapixels`` or of an absurd shape are refused before decoding; what is kept is
    scaled down to cover 4K at load and to cover the frame size at the first frame, so a huge photo costs
    little memory."""

    def __init__(self, path: str | Path, *, device: torch.device | str, dtype: torch.dtype,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS):
        self.path = str(path)
        self.device, self.dtype = device, dtype
        self._image = shrink_to_cover(read_picture(self.path, max_megapixels), 2160, 3840)
        self._shrunk = False
        self._fitted: torch.Tensor | None = None

    def for_frame(self, src: torch.Tensor) -> torch.Tensor:
        h, w = frame_size(src)
        if self._fitted is None or self._fitted.shape[-2:] != (h, w):
            log.debug("fitting background image %s to %dx%d", self.path, w, h)
            if not self._shrunk:  # the output size is known now: keep only what covers it
                self._image, self._shrunk = shrink_to_cover(self._image, h, w), True
            self._fitted = to_device(cover_fit(self._image, h, w), self.device, self.dtype)
        return self._fitted

    def __repr__(self) -> str:
        return f"ImageBackground({self.path!r})"


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    half = max(1, math.ceil(3 * sigma))
    x = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


class BlurBackground(Background):
    """The source frame itself, Gaussian-blurred on the device (at a reduced size for large radii)."""

    def __init__(self, radius: float = DEFAULT_BLUR_RADIUS):
        if not 0 < radius <= MAX_BLUR_RADIUS:
            raise ValueError(f"blur radius {radius!r}: expected 0 < radius <= {MAX_BLUR_RADIUS:g}")
        self.radius = float(radius)
        self._kernels: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._host_taps: dict[int, np.ndarray] = {}  # picture()'s taps per shrink factor

    def _factor(self, h: int, w: int) -> int:
        # Work at 1/factor size so the kernel stays ~<= 25 taps (a blurred picture loses nothing by it),
        # but never below ~8 px, so tiny frames still blur rather than collapse to one colour.
        return max(1, min(int(self.radius // 4), min(h, w) // 8))

    def for_frame(self, src: torch.Tensor) -> torch.Tensor:
        h, w = frame_size(src)
        x = src.reshape(1, 3, h, w)
        if not x.is_floating_point():
            x = x.float().div_(255)
        factor = self._factor(h, w)
        if factor > 1:
            x = F.avg_pool2d(x, factor, ceil_mode=True)
        x = self._blur(x, factor)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x

    def picture(self, frame: np.ndarray) -> np.ndarray:
        """The same blur for an ``H x W x 3`` uint8 frame on the host, in OpenCV on uint8 (the CPU's fast
        full-resolution stage): area-shrunk by the same factor, the same Gaussian taps (replicated border),
        bilinear back up, at a fraction of :meth:`for_frame`'s cost (torch makes several full-size float copies
        of the frame). Where the factor divides the frame size the two differ by rounding only (a level of 255);
        elsewhere the shrink spreads its windows evenly where torch cuts the last one short, which moves a very
        wide blur by a fraction of a window (a few levels)."""
        h, w = frame.shape[:2]
        factor = self._factor(h, w)
        small = frame if factor == 1 else cv2.resize(frame, (-(-w // factor), -(-h // factor)),
                                                     interpolation=cv2.INTER_AREA)
        taps = self._host_taps.get(factor)
        if taps is None:  # per shrink factor, as the device kernels: not rebuilt every frame
            taps = self._host_taps[factor] = _gaussian_kernel(self.radius / 3 / factor, torch.device("cpu"),
                                                              torch.float32).numpy()
        small = cv2.sepFilter2D(small, -1, taps, taps, borderType=cv2.BORDER_REPLICATE)  # uint8 out, rounded
        return small if factor == 1 else cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    def _blur(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        key = (factor, x.device, x.dtype)
        k = self._kernels.get(key)
        if k is None:  # radius ~ 3 sigma, in full-resolution pixels
            k = self._kernels[key] = _gaussian_kernel(self.radius / 3 / factor, x.device, x.dtype)
        half = k.numel() // 2
        kx = k.view(1, 1, 1, -1).expand(3, 1, 1, -1)
        ky = k.view(1, 1, -1, 1).expand(3, 1, -1, 1)
        # replicate padding keeps flat regions flat right up to the border
        x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="replicate"), kx, groups=3)
        return F.conv2d(F.pad(x, (0, 0, half, half), mode="replicate"), ky, groups=3)

    def __repr__(self) -> str:
        return f"BlurBackground({self.radius:g})"


class TransparentBackground(Background):
    """No background: the output keeps its alpha channel (RGBA)."""

    transparent = True

    def for_frame(self, src: torch.Tensor) -> None:
        return None

    def __repr__(self) -> str:
        return "TransparentBackground()"


def _open_video(path: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> av.container.InputContainer:
    """The opened container, its picture size checked from the stream header before anything is decoded."""
    try:
        container = av.open(path)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        # PyAV's OSError text repeats the path: its strerror alone says what went wrong
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise MediaError(f"background video {path}: cannot open it: {why}") from exc
    if not container.streams.video:
        container.close()
        raise MediaError(f"background video {path}: has no video stream")
    codec = container.streams.video[0].codec_context
    try:
        check_picture_size(f"background video {path}", codec.width, codec.height, max_megapixels)
    except MediaError:
        container.close()
        raise
    return container


LIVE_STALL_S = 0.02  # a live pipeline waits at most this long for the next background frame
FILE_STALL_S = 5.0


def _rgb_frames(container: av.container.InputContainer) -> Iterator[np.ndarray]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = decoder_threads(stream.codec_context.width, stream.codec_context.height)
    to_rgb = RgbConverter()
    for frame in container.decode(stream):
        yield to_rgb(frame)


class VideoBackground(Background):
    """A video file looped forever, one background frame per output frame, decoded by its own thread.

    The first frame is decoded in the constructor, so a file that cannot be decoded is refused up front.
    A video that breaks later (corrupt part-way, deleted, unreadable) never stops the pipeline: one
    warning, ``failure`` says why, the last good frame stays for ``hold_s``, then the ``fallback`` colour."""

    def __init__(self, path: str | Path, *, device: torch.device | str, dtype: torch.dtype,
                 queue_size: int = 4, stall_s: float = LIVE_STALL_S, fallback: str = DEFAULT_FALLBACK,
                 hold_s: float = FALLBACK_HOLD_S, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS):
        self.path = str(path)
        self._max_megapixels = max_megapixels
        self.device, self.dtype = device, dtype
        # stall_s: how long a frame waits for the decoder before the last background is reused; short, so
        # a decoder hiccup never holds up a live pipeline
        self._stall_s, self._hold_s = stall_s, hold_s
        self._fallback = ColorBackground(parse_color(fallback), device=device, dtype=dtype)
        self._fallback_name = fallback
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._target: tuple[int, int] | None = None  # frame size the decoder pre-fits to, off our thread
        self._error: BaseException | None = None
        self._failed_at: float | None = None
        self._fitted: torch.Tensor | None = None
        self._warned_stall = False
        self._closed = False
        container = _open_video(self.path, max_megapixels)
        frames = _rgb_frames(container)
        try:
            self._last = next(frames)
        except StopIteration:
            container.close()
            raise MediaError(f"background video {self.path}: has no frames") from None
        except (av.FFmpegError, OSError, ValueError) as exc:
            container.close()
            raise MediaError(f"background video {self.path}: cannot decode it: {one_line(exc)}") from exc
        self._queue.put(self._last)
        self._thread = threading.Thread(target=self._decode, args=(container, frames), name="bg-video",
                                        daemon=True)
        self._thread.start()

    def _decode(self, container: av.container.InputContainer, frames: Iterator[np.ndarray]) -> None:
        try:
            n = 1  # the constructor's frame
            while not self._stop.is_set():
                with container:
                    n += self._feed(frames)
                if self._stop.is_set():
                    return
                if n == 0:
                    raise MediaError(f"background video {self.path}: no frames on this pass")
                # reopening loops reliably where seek(0) may not
                container = _open_video(self.path, self._max_megapixels)
                frames, n = _rgb_frames(container), 0
        except BaseException as exc:  # reported by for_frame(), which falls back
            log.debug("background video %s decoder stopped: %s", self.path, exc)
            self._error = exc

    def _feed(self, frames: Iterator[np.ndarray]) -> int:
        n = 0
        for rgb in frames:
            target = self._target
            if target is not None:
                rgb = cover_fit(rgb, *target)
            while not self._stop.is_set():
                try:
                    self._queue.put(rgb, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set():
                return n
            n += 1
        return n

    def for_frame(self, src: torch.Tensor) -> torch.Tensor:
        h, w = frame_size(src)
        self._target = (h, w)
        rgb = self._next_frame()
        if rgb is None:  # decoder behind or broken: keep showing the last frame rather than stall inference
            if self._failed_at is not None and time.monotonic() - self._failed_at >= self._hold_s:
                return self._fallback.for_frame(src)
            if self._fitted is not None and self._fitted.shape[-2:] == (h, w):
                return self._fitted
            rgb = self._last
        if rgb.shape[:2] != (h, w):
            rgb = cover_fit(rgb, h, w)
        self._last = rgb
        self._fitted = to_device(rgb, self.device, self.dtype)
        return self._fitted

    def _next_frame(self) -> np.ndarray | None:
        timeout = self._stall_s if self._thread.is_alive() else 0.0
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            pass
        if self._error is not None:
            if self._failed_at is None:
                self._failed_at = time.monotonic()
                # our own errors already name the video; anything else (a decoder's) gets its name here
                why = one_line(self._error)
                self.failure = why if isinstance(self._error, MediaError) else f"background video {self.path}: {why}"
                log.warning("%s; showing its last frame, then %s", self.failure, self._fallback_name)
            return None
        if not self._warned_stall:
            log.warning("background video %s decodes slower than inference; repeating frames", self.path)
            self._warned_stall = True
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            log.warning("background video %s decoder did not stop within 5 s", self.path)

    def __repr__(self) -> str:
        return f"VideoBackground({self.path!r})"


def _looks_like_path(spec: str) -> bool:
    suffix = Path(spec).suffix.lower()
    return "/" in spec or os.sep in spec or spec.startswith("~") or suffix in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _classify(spec: str) -> tuple[str, object]:
    """(kind, value) of a background spec; reads no file. Priority: existing file > colour > keyword."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"background {spec!r}: {_SPEC_HELP}")
    s = spec.strip()
    path = Path(s).expanduser()
    if path.exists():
        if not path.is_file():
            raise MediaError(f"background file {s}: is not a regular file")
        suffix = path.suffix.lower()
        # an unknown suffix is sniffed: OpenCV recognises image signatures without decoding
        sniffed = suffix not in VIDEO_SUFFIXES and cv2.haveImageReader(str(path))
        is_image = suffix in IMAGE_SUFFIXES or sniffed
        return ("image" if is_image else "video"), path
    try:
        return "color", parse_color(s)
    except ValueError:
        pass
    low = s.lower()
    if low == "transparent":
        return "transparent", None
    m = _BLUR.fullmatch(low)
    if m:
        radius = float(m.group(1)) if m.group(1) else DEFAULT_BLUR_RADIUS
        if not 0 < radius <= MAX_BLUR_RADIUS:
            raise ValueError(f"background {spec!r}: blur radius must be in (0, {MAX_BLUR_RADIUS:g}]")
        return "blur", radius
    if _looks_like_path(s):
        raise MediaError(f"background file {s}: not found")
    raise ValueError(f"background {spec!r}: {_SPEC_HELP}{color_hint(s, examples=False)}")


def check_background(spec: str) -> str:
    """Validate ``spec`` without loading it; return its kind (color, image, video, blur, transparent).

    Raises ValueError for a bad spec and MediaError for a missing or unreadable file, naming it."""
    kind, value = _classify(spec)
    if kind in ("image", "video") and not os.access(value, os.R_OK):
        raise MediaError(f"background file {value}: not readable")
    return kind


def parse_background(spec: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     live: bool = True, fallback: str = DEFAULT_FALLBACK,
                     max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Background:
    """The Background named by ``spec``: colour, image or video file, ``blur[:RADIUS]``, ``transparent``.

    ``live``: a video background repeats its last frame rather than hold up a live pipeline; for a file
    job (``live=False``) every output frame waits for its own background frame. ``fallback``: the colour a
    video that breaks mid-run falls back to. ``max_megapixels``: the largest image accepted."""
    kind, value = _classify(spec)
    if kind == "color":
        return ColorBackground(value, device=device, dtype=dtype)
    if kind == "image":
        return ImageBackground(value, device=device, dtype=dtype, max_megapixels=max_megapixels)
    if kind == "video":
        return VideoBackground(value, device=device, dtype=dtype, stall_s=LIVE_STALL_S if live else FILE_STALL_S,
                               fallback=fallback, max_megapixels=max_megapixels)
    if kind == "blur":
        return BlurBackground(value)
    return TransparentBackground()


def opaque(image: np.ndarray, rgba: bool) -> np.ndarray:
    """An RGB ``H x W x 3`` uint8 picture as a stream's outputs take it: itself, or with ``rgba`` an opaque RGBA
    copy (a paused frame, or the original beside an RGBA result)."""
    return cv2.merge([image, np.full(image.shape[:2], 255, np.uint8)]) if rgba else image


class Composite(NamedTuple):
    """Composited frames on the device: ``image`` H x W x 3 (RGBA: x 4) uint8, ``alpha`` H x W uint8; for a
    batch of B > 1 frames, B x H x W x 3 (or 4) and B x H x W."""

    image: torch.Tensor
    alpha: torch.Tensor


def _as_nchw(t: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got {t.dtype}")
    if channels == 1 and t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != channels:
        raise ValueError(f"{name}: expected [B,{channels},H,W] or [{channels},H,W], got {list(t.shape)}")
    return t


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    # +0.5 then truncation rounds half up; clamp first so out-of-range values saturate
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def composite(fgr: torch.Tensor, pha: torch.Tensor, background: Background | Sequence[Background],
              src: torch.Tensor, *, threshold: float | None = None, rgba: bool = True) -> Composite:
    """Blend ``fgr`` over the background by ``pha`` on their device: image = fgr*a + bg*(1-a).

    ``fgr``/``pha``/``src`` may hold a batch of B frames (B streams); ``background`` is then one background
    for all of them or a sequence of B, one per frame (all transparent or none). With ``threshold`` the
    alpha is the hard mask ``pha > threshold``, for the blend and the returned alpha. A transparent
    background gives RGBA with RGB = fgr and A = alpha, or with ``rgba=False`` (outputs that take no alpha)
    the foreground alone, RGB."""
    fgr, pha = _as_nchw(fgr, 3, "fgr"), _as_nchw(pha, 1, "pha")
    if fgr.shape[-2:] != pha.shape[-2:] or fgr.shape[0] != pha.shape[0]:
        raise ValueError(f"fgr {list(fgr.shape)} and pha {list(pha.shape)} differ in size")
    batch = fgr.shape[0]
    backgrounds = list(background) if isinstance(background, Sequence) else [background] * batch
    if len(backgrounds) != batch:
        raise ValueError(f"{batch} frames but {len(backgrounds)} backgrounds")
    if threshold is not None:
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold {threshold!r}: expected 0 <= threshold < 1")
        a = (pha > threshold).to(fgr.dtype)
    else:
        a = pha.to(fgr.dtype).clamp(0, 1)
    src = src if src.ndim == 4 else src[None]
    bgs = [bg.for_frame(src[b:b + 1] if src.shape[0] == batch else src) for b, bg in enumerate(backgrounds)]
    if any(bg is None for bg in bgs):
        if not all(bg is None for bg in bgs):
            raise ValueError("backgrounds of one batch must be all transparent or none (RGBA vs RGB)")
        if not rgba:
            return _unbatched(Composite(_to_uint8(fgr).permute(0, 2, 3, 1).contiguous(), _to_uint8(a)[:, 0]))
        image = _to_uint8(torch.cat((fgr, a), dim=1)).permute(0, 2, 3, 1).contiguous()
        return _unbatched(Composite(image, image[..., 3]))
    # Scale to 0..255 with the rounding offset folded in before blending, so one lerp yields final values
    # in [0.5, 255.5] and one strided copy truncates them into a B x H x W x 3 uint8 image: three passes
    # over the frame instead of six (this runs on the inference device every frame; on a CPU it competes
    # with the network for the same cores). 0.5 is a Python scalar: a tensor made from it per frame would
    # be a host->device copy and a sync on CUDA.
    image = torch.empty((batch, fgr.shape[2], fgr.shape[3], 3), dtype=torch.uint8, device=fgr.device)
    image.permute(0, 3, 1, 2).copy_(torch.lerp(_scaled([bg.to(fgr.dtype) for bg in bgs]),
                                               torch.add(0.5, fgr, alpha=255), a))
    return _unbatched(Composite(image, _to_uint8(a)[:, 0]))


def _unbatched(result: Composite) -> Composite:
    """One frame comes back as H x W x C (what single-stream callers have always had)."""
    return Composite(result.image[0], result.alpha[0]) if result.image.shape[0] == 1 else result


def _scaled(bgs: list[torch.Tensor]) -> torch.Tensor:
    """``bg * 255 + 0.5`` for each ``[1,3,H,W]`` background, as ``[B,3,H,W]``; broadcast (solid colour)
    backgrounds are scaled once, not per pixel, and stay a broadcast."""
    if all(bg.stride(-1) == 0 and bg.stride(-2) == 0 for bg in bgs):
        small = torch.cat([bg[:, :, :1, :1] for bg in bgs]) if len(bgs) > 1 else bgs[0][:, :, :1, :1]
        return torch.add(0.5, small, alpha=255).expand(len(bgs), *bgs[0].shape[1:])
    return torch.add(0.5, torch.cat(bgs) if len(bgs) > 1 else bgs[0], alpha=255)
