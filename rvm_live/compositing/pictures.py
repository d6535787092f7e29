"""Background pictures on the host: their size read before any decoding, and the cover fit.

A picture's size is checked from its header before a single pixel is decoded: a small file can describe a
huge or absurdly shaped picture (a 1.8 KB PNG of 600000x1, a 48 MP Radiance ``.hdr`` that PIL cannot read),
and decoding or scaling it first is what runs a daemon out of memory. A format whose size cannot be read
from its header is refused rather than decoded to find out.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
from PIL import Image

from ..errors import MediaError

# A wider (or taller) picture than this is no background: cover-fitting it keeps a sliver of a few pixels
# (a 20000x1 banner became a 21 s freeze and 4 GB in a scaled copy). Panoramas are about 2:1 to 6:1.
MAX_ASPECT = 16.0
_HEADER_BYTES = 64 * 1024
_RADIANCE_SIZE = re.compile(rb"^([-+])([XY]) (\d+) ([-+])([XY]) (\d+)$")
_PFM_SIZE = re.compile(rb"^P[Ff]\s+(\d+)\s+(\d+)\s")


def _radiance_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a Radiance RGBE header: text lines, a blank line, then ``-Y 480 +X 640``."""
    if not head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return None
    lines = head.split(b"\n")
    try:
        resolution = lines[lines.index(b"", 1) + 1]
    except (ValueError, IndexError):
        return None
    match = _RADIANCE_SIZE.match(resolution.strip())
    if match is None or match.group(2) == match.group(5):
        return None
    sizes = {match.group(2): int(match.group(3)), match.group(5): int(match.group(6))}
    return sizes[b"X"], sizes[b"Y"]


def _pfm_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a portable float map (``PF``/``Pf``, then width and height in ASCII)."""
    match = _PFM_SIZE.match(head)
    return (int(match.group(1)), int(match.group(2))) if match else None


def picture_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from a picture's header, never decoding it; None when no reader can tell."""
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError:
        return (1 << 16, 1 << 16)  # PIL refuses to even describe it: far over any sane limit
    except (OSError, ValueError, SyntaxError):
        pass  # not a format PIL knows: OpenCV may still decode it (Radiance, PFM), so read the header here
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError:
        return None
    return _radiance_size(head) or _pfm_size(head)


def check_picture_size(what: str, width: int, height: int, max_megapixels: float) -> None:
    """MediaError naming ``what`` when a ``width`` x ``height`` picture is too large or too oddly shaped."""
    if width <= 0 or height <= 0:
        raise MediaError(f"{what}: has no pixels ({width}x{height})")
    if width * height > max_megapixels * 1e6:
        raise MediaError(f"{what}: {width}x{height} is over the {max_megapixels:g} MP limit (bg_max_megapixels)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise MediaError(f"{what}: {width}x{height} is too {'wide' if width > height else 'tall'} for a "
                         f"background (at most {MAX_ASPECT:g}:1)")


def read_picture(path: str, max_megapixels: float) -> np.ndarray:
    """An RGB uint8 picture, its size checked from the header first; MediaError naming the file if not usable."""
    size = picture_size(path)
    if size is None:
        raise MediaError(f"image {path}: cannot tell its size without decoding it (not a known picture format)")
    check_picture_size(f"image {path}", *size, max_megapixels)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError(f"image {path}: cannot read it (missing, unreadable or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def cover_fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``image`` (H x W x C) to cover ``height`` x ``width`` keeping its aspect, then centre-crop.

    Enlarging maps the covering window straight onto the output (one warp, never a scaled copy of the whole
    picture, whatever its shape); shrinking scales the whole picture down (area averaging), then crops."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    if (nw, nh) == (w, h):
        return np.ascontiguousarray(image[y0 : y0 + height, x0 : x0 + width])
    if scale < 1:
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image[y0 : y0 + height, x0 : x0 + width])
    # the pixel-centre mapping of cv2.resize to nw x nh, shifted by the crop: the same picture, bounded cost
    sx, sy = nw / w, nh / h
    matrix = np.array([[sx, 0, 0.5 * sx - 0.5 - x0], [0, sy, 0.5 * sy - 0.5 - y0]], np.float64)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def shrink_to_cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` scaled down (aspect kept) to the smallest size that still covers ``height`` x ``width``."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    if scale >= 1:
        return image
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
