"""Colour specs (``green``, ``#rrggbb``, ``#rgb``): light enough for config validation to use."""

from __future__ import annotations

import re

from PIL import ImageColor

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_NAME = re.compile(r"[A-Za-z]+")


def parse_color(spec: str) -> tuple[int, int, int]:
    """RGB of a CSS/PIL colour name or ``#rrggbb`` / ``#rgb``; ``green`` is a green screen's #00ff00."""
    s = spec.strip() if isinstance(spec, str) else spec
    # Only names and #hex are accepted; PIL also takes rgb()/hsl()/#rgba, which we do not advertise.
    if not isinstance(s, str) or not (_HEX.fullmatch(s) or _NAME.fullmatch(s)):
        raise ValueError(f"colour {spec!r}: expected a colour name or #rrggbb / #rgb")
    try:
        r, g, b = (0, 255, 0) if s.lower() == "green" else ImageColor.getrgb(s)[:3]  # CSS green, #008000, keys badly
    except ValueError:
        raise ValueError(f"colour {spec!r}: unknown colour name") from None
    return int(r), int(g), int(b)
