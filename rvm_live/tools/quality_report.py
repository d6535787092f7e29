"""A quality report as a text table, and as the speed/quality chart: MAD against ms per frame, one labelled point
per setting, one panel per frame size, the front (settings no other beats on both) joined by a line, drawn with
Pillow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COLUMNS = (("ms_per_frame", "ms/frame", "{:9.1f}"), ("mad", "MAD×1e3", "{:9.2f}"), ("mse", "MSE×1e3", "{:9.2f}"),
           ("grad", "Grad×1e-3", "{:10.2f}"), ("dtssd", "dtSSD×1e2", "{:10.2f}"), ("edge", "Edge×255", "{:9.2f}"))


def _row_name(row: dict[str, Any]) -> str:
    tag = {"ladder": "ladder", "extra": "extra", "engines": "RVM ratio", "peer": "peer", "baseline": "baseline"}
    return f"{row['setting']} ({tag.get(row['role'], row['role'])})"


def format_row(row: dict[str, Any]) -> str:
    """One row of the table."""
    cells = "".join(fmt.format(row[key]) if key in row else f"{'-':>{len(fmt.format(0.0))}}" for key, _, fmt in COLUMNS)
    return f"{row['size']:8}{_row_name(row):30}{row['internal']:>9}{cells}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table, one row per setting, rows of a size by internal size (largest first)."""
    m = report["machine"]
    frames = "/".join(str(n) for n in report["frames_per_clip"])
    lines = [f"rvm-live quality: ground truth recipe v{report['recipe']['version']}, {frames} frames per clip; "
             f"{m.get('cpu')}, {m.get('cores')} cores, {report['threads']} threads, torch {m.get('torch')}",
             "MAD/MSE/Grad/dtSSD scaled as RVM's tables; Grad is a sum per frame (compare within a size); Edge: mean "
             "|composite error| in 8-bit levels within 3 px of the true edge; ms/frame: engine only, median of "
             f"{report['timing']['rounds']} round-robin blocks of {report['timing']['frames']} frames",
             f"{'size':8}{'setting':30}{'internal':>9}" + "".join(f"{title:>{len(fmt.format(0.0))}}"
                                                               for _, title, fmt in COLUMNS)]
    order = {"ladder": 0, "extra": 0, "engines": 1, "peer": 2, "baseline": 3}
    for size in dict.fromkeys(r["size"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["size"] == size]
        rows.sort(key=lambda r: (order.get(r["role"], 4), -(r["ratio"] or 0)))
        clips = ", ".join(rows[0]["clips"]) if rows else ""
        lines.append(f"-- {size} ({rows[0]['width']}x{rows[0]['height']}), clips: {clips}")
        lines += [format_row(r) for r in rows]
    lines += [f"skipped: {s}" for s in report["skipped"]]
    return "\n".join(lines)


PANEL_W, PANEL_H = 900, 620
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 80, 30, 100, 60
COLOURS = {"ladder": (31, 119, 180), "extra": (120, 120, 120), "engines": (230, 120, 20), "peer": (200, 30, 40)}
LEGEND = (("ladder", "governor ladder"), ("extra", "extra internal size"), ("engines", "engine x stage, RVM ratio"),
          ("peer", "peer (MediaPipe)"))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 tick values spanning ``lo..hi`` (both > 0) on a log axis, one below and one above."""
    ticks, k = [], math.floor(math.log10(lo))
    while not ticks or ticks[-1] < hi:
        ticks += [m * 10.0**k for m in (1, 2, 5)]
        k += 1
    first = max(i for i, t in enumerate(ticks) if t <= lo)
    last = min(i for i, t in enumerate(ticks) if t >= hi)
    return ticks[first:last + 1]


def front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    best, out = math.inf, []
    for i in order:
        if points[i][1] < best:
            best = points[i][1]
            out.append(i)
    return out


def _short(row: dict[str, Any]) -> str:
    if row["role"] == "peer":
        return "MediaPipe"
    if row["role"] == "engines":
        return f"{row['internal']} {row['setting']}"
    return row["internal"]


def _panel(rows: list[dict[str, Any]], title: str) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(15), _font(13), _font(18)
    x0, y0, x1, y1 = MARGIN_L, MARGIN_T, PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    ms = [max(r["ms_per_frame"], 0.1) for r in rows]
    xt, yt = log_ticks(min(ms), max(ms)), log_ticks(min(r["mad"] for r in rows), max(r["mad"] for r in rows))

    def at(x: float, y: float) -> tuple[float, float]:  # log-log: both ranges span tenfold and more
        fx = math.log(max(x, 0.1) / xt[0]) / math.log(xt[-1] / xt[0])
        fy = math.log(y / yt[0]) / math.log(yt[-1] / yt[0])
        return x0 + (x1 - x0) * fx, y1 - (y1 - y0) * fy

    draw.text((x0, 12), title, fill="black", font=big)
    for x in xt:
        px = at(x, yt[0])[0]
        draw.line([(px, y0), (px, y1)], fill=(232, 232, 232))
        draw.text((px, y1 + 6), f"{x:g}", fill="black", font=font, anchor="ma")
    for y in yt:
        py = at(xt[0], y)[1]
        draw.line([(x0, py), (x1, py)], fill=(232, 232, 232))
        draw.text((x0 - 8, py), f"{y:g}", fill="black", font=font, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2, PANEL_H - 22), "ms per frame (median on this machine; log scale)", fill="black",
              font=font, anchor="ma")
    draw.text((8, y0 - 24), "MAD x1e3 (lower is better; log scale)", fill="black", font=font)
    xy = [at(x, r["mad"]) for x, r in zip(ms, rows)]
    best = front([(r["ms_per_frame"], r["mad"]) for r in rows])
    draw.line([xy[i] for i in best], fill=(160, 200, 160), width=3)
    taken: list[tuple[float, float, float, float]] = [(x - 5, y - 5, x + 5, y + 5) for x, y in xy]
    for row, (x, y) in zip(rows, xy):
        colour = COLOURS.get(row["role"], (0, 0, 0))
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline="black")
        _place_label(draw, _short(row), x, y, colour, small, taken, (x0, y0, x1, y1))
    for i, (role, text) in enumerate(LEGEND):
        lx = x0 + 10 + i * 205
        draw.ellipse([lx, 45, lx + 10, 55], fill=COLOURS[role], outline="black")
        draw.text((lx + 15, 50), text, fill="black", font=small, anchor="lm")
    draw.text((x0 + 10, 62), "green line: the front (no other setting is both faster and better)", fill=(90, 140, 90),
              font=small)
    return image


def _place_label(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, colour: tuple[int, int, int],
                 font: ImageFont.ImageFont, taken: list[tuple[float, float, float, float]],
                 frame: tuple[float, float, float, float]) -> None:
    """Put ``text`` at the nearest free place inside the plot beside the point (right or left, stepping up and
    down a line at a time), with a leader line when it had to move away; failing that, right beside it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    step = h + 3
    shifts = [0] + [sign * k * step for k in range(1, 9) for sign in (-1, 1)]
    boxes = [(x + dx, y - h / 2 + dy, x + dx + w, y + h / 2 + dy) for dy in shifts for dx in (8, -8 - w)]
    inside = [b for b in boxes if frame[0] <= b[0] and b[2] <= frame[2] and frame[1] <= b[1] and b[3] <= frame[3]]
    free = [b for b in inside if not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)]
    box = (free or inside or boxes)[0]
    taken.append(box)
    ink = tuple(c * 3 // 4 for c in colour)
    if abs((box[1] + box[3]) / 2 - y) > h:
        edge = box[0] if box[0] > x else box[2]
        draw.line([(x, y), (edge, (box[1] + box[3]) / 2)], fill=ink, width=1)
    draw.text((box[0] - left, box[1] - top), text, fill=ink, font=font)


def draw_chart(report: dict[str, Any], path: str | Path) -> Path:
    """Write the chart of ``report`` (baselines left out) to ``path`` (PNG); returns the path."""
    sizes = list(dict.fromkeys(r["size"] for r in report["rows"]))
    panels = []
    for size in sizes:
        rows = [r for r in report["rows"] if r["size"] == size and r["role"] != "baseline"]
        if rows:
            first = rows[0]
            panels.append(_panel(rows, f"{size} ({first['width']}x{first['height']}): quality vs speed"))
    if not panels:
        raise ValueError("the report has no rows to chart")
    chart = Image.new("RGB", (PANEL_W, PANEL_H * len(panels)), "white")
    for i, panel in enumerate(panels):
        chart.paste(panel, (0, i * PANEL_H))
    path = Path(path)
    chart.save(path, format="PNG")
    return path
