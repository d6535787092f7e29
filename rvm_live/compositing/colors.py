"""Colour specs (``green``, ``#rrggbb``, ``#rgb``): light enough for config validation to use."""

from __future__ import annotations

import difflib
import re

from PIL import ImageColor

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_NAME = re.compile(r"[A-Za-z]+")
COMMON_NAMES = ("green", "blue", "white", "black", "red", "gray")  # shown when no known name is close


def parse_color(spec: str) -> tuple[int, int, int]:
    """RGB of a CSS/PIL colour name or ``#rrggbb`` / ``#rgb``; ``green`` is a green screen's #00ff00."""
    s = spec.strip() if isinstance(spec, str) else spec
    # Only names and #hex are accepted; PIL also takes rgb()/hsl()/#rgba, which we do not advertise.
    if not isinstance(s, str) or not (_HEX.fullmatch(s) or _NAME.fullmatch(s)):
        raise ValueError(f"colour {spec!r}: expected a colour name or #rrggbb / #rgb")
    try:
        r, g, b = (0, 255, 0) if s.lower() == "green" else ImageColor.getrgb(s)[:3]  # CSS green, #008000, keys badly
    except ValueError:
        raise ValueError(f"colour {spec!r}: unknown colour name{color_hint(s)}") from None
    return int(r), int(g), int(b)


def color_hint(spec: object, *, examples: bool = True) -> str:
    """`` (did you mean green?)`` for a misspelt colour name; else (``examples``) the names users most often
    want; else nothing."""
    if not isinstance(spec, str) or not _NAME.fullmatch(spec.strip()):
        return ""
    close = difflib.get_close_matches(spec.strip().lower(), ImageColor.colormap, n=3, cutoff=0.7)
    if close:
        return f" (did you mean {' or '.join(close)}?)"
    if not examples:
        return ""
    return f" (CSS colour names such as {', '.join(COMMON_NAMES)}, or #rrggbb)"
