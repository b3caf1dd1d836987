"""Inline SVG charts written by hand (no plotting library): line charts and grouped bar charts.

Each function returns one ``<svg>`` element as a string, ready to paste into an HTML page. Every piece of
text (titles, labels, series names) goes through `html.escape`. Bars carry their exact value in a
``data-value`` attribute and a printed label, so a reader (or a test) can check the numbers. Values that
are None, NaN or infinite are skipped, never drawn as zero."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import TypeGuard

# Colour-blind-safe palette (Okabe-Ito), cycled over series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LEGEND_Y = 34  # between the title and the plot area, so it never covers data
MARGIN = {"left": 56, "right": 16, "top": 50, "bottom": 46}


@dataclass
class Series:
    """One line: ``x`` and ``y`` of equal length; ``dashed`` for secondary curves (e.g. validation)."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    dashed: bool = False
    markers: bool = False
    color: str | None = None
    points: list[tuple[float, float]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.points = [(float(a), float(b)) for a, b in zip(self.x, self.y, strict=False) if _finite(a) and _finite(b)]


def _finite(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    """Short tick label: integers plain, small and large numbers in a compact form."""
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - start) / step - 1e-9) + 1
    return [round(start + i * step, 12) for i in range(max(count, 2))]


def _open(width: int, height: int, title: str, css: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<text class="chart-title" x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14" '
            f'font-weight="600">{escape(title)}</text>']


def _axes(width: int, height: int, x_label: str, y_label: str) -> list[str]:
    left, bottom = MARGIN["left"], height - MARGIN["bottom"]
    return [f'<line class="axis" x1="{left}" y1="{MARGIN["top"]}" x2="{left}" y2="{bottom}" stroke="#444"/>',
            f'<line class="axis" x1="{left}" y1="{bottom}" x2="{width - MARGIN["right"]}" y2="{bottom}" stroke="#444"/>',
            f'<text class="axis-label" x="{(left + width - MARGIN["right"]) / 2:.1f}" y="{height - 8}" '
            f'text-anchor="middle" font-size="12">{escape(x_label)}</text>',
            f'<text class="axis-label" x="14" y="{(MARGIN["top"] + bottom) / 2:.1f}" text-anchor="middle" '
            f'font-size="12" transform="rotate(-90 14 {(MARGIN["top"] + bottom) / 2:.1f})">{escape(y_label)}</text>']


def _y_grid(ticks: list[float], ymap: Callable[[float], float], width: int) -> list[str]:
    out = []
    for t in ticks:
        y = ymap(t)
        out.append(f'<line class="grid" x1="{MARGIN["left"]}" y1="{y:.1f}" x2="{width - MARGIN["right"]}" '
                   f'y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text class="tick" x="{MARGIN["left"] - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{escape(_fmt(t))}</text>')
    return out


def _legend(names: Sequence[str], colors: Sequence[str], width: int, styles: Sequence[str] | None = None) -> list[str]:
    """One swatch + name per series, drawn as the series is: ``line``, ``dashed``, with ``+marker``, a lone
    ``point`` (a series of one point is a dot on the chart, so a line in the legend would misdescribe it), or
    ``bar`` (a square)."""
    out, x = [], MARGIN["left"] + 8
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        style = styles[i] if styles else "line"
        attrs = f'class="legend-swatch" data-name="{escape(name)}"'
        if style == "point":
            out.append(f'<circle {attrs} cx="{x + 8}" cy="{LEGEND_Y}" r="4" fill="{color}"/>')
        elif style == "bar":
            out.append(f'<rect {attrs} x="{x + 2}" y="{LEGEND_Y - 6}" width="12" height="12" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if style.startswith("dashed") else ""
            out.append(f'<line {attrs} x1="{x}" y1="{LEGEND_Y}" x2="{x + 16}" y2="{LEGEND_Y}" '
                       f'stroke="{color}" stroke-width="3"{dash}/>')
            if style.endswith("+marker"):
                out.append(f'<circle class="legend-marker" cx="{x + 8}" cy="{LEGEND_Y}" r="3" fill="{color}"/>')
        out.append(f'<text class="legend" x="{x + 20}" y="{LEGEND_Y + 4}" font-size="11">{escape(name)}</text>')
        x += 28 + 7 * len(name)
        if x > width - 60:
            break
    return out


def _style(s: Series) -> str:
    if len(s.points) == 1:
        return "point"
    return ("dashed" if s.dashed else "line") + ("+marker" if s.markers else "")


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 520,
               height: int = 300, y_min: float | None = None, y_max: float | None = None,
               x_ticks: Sequence[float] | None = None) -> str:
    """Lines over a shared x axis. ``y_min``/``y_max`` fix the y range (e.g. 0..1 for accuracy)."""
    out = _open(width, height, title, "line-chart")
    pts = [p for s in series for p in s.points]
    if not pts:
        out.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" font-size="12">no data</text>')
        return "\n".join([*out, "</svg>"])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x_lo, x_hi = (min(x_ticks), max(x_ticks)) if x_ticks else (min(xs), max(xs))
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    y_ticks = nice_ticks(min(ys) if y_min is None else y_min, max(ys) if y_max is None else y_max)
    y_lo, y_hi = (y_min if y_min is not None else y_ticks[0]), (y_max if y_max is not None else y_ticks[-1])
    y_ticks = [t for t in y_ticks if y_lo - 1e-9 <= t <= y_hi + 1e-9]
    plot_w = width - MARGIN["left"] - MARGIN["right"]
    plot_h = height - MARGIN["top"] - MARGIN["bottom"]

    def xmap(v: float) -> float:
        return MARGIN["left"] + (v - x_lo) / (x_hi - x_lo) * plot_w

    def ymap(v: float) -> float:
        return MARGIN["top"] + (1 - (v - y_lo) / ((y_hi - y_lo) or 1.0)) * plot_h

    out += _y_grid(y_ticks, ymap, width)
    for t in x_ticks or nice_ticks(x_lo, x_hi, 6):
        if x_lo - 1e-9 <= t <= x_hi + 1e-9:
            out.append(f'<text class="tick" x="{xmap(t):.1f}" y="{height - MARGIN["bottom"] + 16}" '
                       f'text-anchor="middle" font-size="11">{escape(_fmt(t))}</text>')
    out += _axes(width, height, x_label, y_label)
    colors = [s.color or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]
    for s, color in zip(series, colors, strict=True):
        if not s.points:
            continue
        if len(s.points) > 1:  # one point is a dot, not a line
            coords = " ".join(f"{xmap(x):.1f},{ymap(y):.1f}" for x, y in s.points)
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            out.append(f'<polyline class="series" data-name="{escape(s.name)}" points="{coords}" fill="none" '
                       f'stroke="{color}" stroke-width="2"{dash}><title>{escape(s.name)}</title></polyline>')
        if s.markers or len(s.points) == 1:
            r = 3 if len(s.points) > 1 else 4
            out += [f'<circle class="point" data-name="{escape(s.name)}" cx="{xmap(x):.1f}" cy="{ymap(y):.1f}" '
                    f'r="{r}" fill="{color}"><title>{escape(s.name)}: {escape(_fmt(x))}, {y:.3g}</title></circle>'
                    for x, y in s.points]
    out += _legend([s.name for s in series], colors, width, [_style(s) for s in series])
    return "\n".join([*out, "</svg>"])


def bar_chart(groups: Sequence[str], series_names: Sequence[str], values: Sequence[Sequence[float | None]], *,
              title: str, y_label: str, width: int | None = None, height: int = 300, y_max: float | None = 1.0,
              fmt: str = "{:.2f}") -> str:
    """Grouped bars: ``values[g][s]`` is series ``s`` in group ``g`` (e.g. R@1/R@5/R@10 per direction).
    Each bar has ``data-group``, ``data-series`` and ``data-value`` (the exact value) and a printed label."""
    n_series = max(len(series_names), 1)
    width = width or max(360, MARGIN["left"] + MARGIN["right"] + len(groups) * (n_series * 28 + 24))
    out = _open(width, height, title, "bar-chart")
    finite = [float(v) for row in values for v in row if _finite(v)]
    top = y_max if y_max is not None else (max(finite) if finite else 1.0)
    ticks = nice_ticks(0.0, top or 1.0)
    top = max(top or 1.0, ticks[-1]) if y_max is None else top
    plot_w = width - MARGIN["left"] - MARGIN["right"]
    plot_h = height - MARGIN["top"] - MARGIN["bottom"]

    def ymap(v: float) -> float:
        return MARGIN["top"] + (1 - min(v, top) / (top or 1.0)) * plot_h

    out += _y_grid([t for t in ticks if t <= top + 1e-9], ymap, width)
    group_w = plot_w / max(len(groups), 1)
    bar_w = min(28.0, (group_w - 12) / n_series)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series_names))]
    for g, (group, row) in enumerate(zip(groups, values, strict=True)):
        x0 = MARGIN["left"] + g * group_w + (group_w - bar_w * n_series) / 2
        for s, (name, v) in enumerate(zip(series_names, row, strict=True)):
            if not _finite(v):
                continue
            val = float(v)
            x, y = x0 + s * bar_w, ymap(max(val, 0.0))
            label = fmt.format(val)
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{MARGIN["top"] + plot_h - y:.1f}" fill="{colors[s]}" data-group="{escape(group)}" '
                       f'data-series="{escape(name)}" data-value="{val!r}"><title>{escape(group)} {escape(name)}: '
                       f"{escape(label)}</title></rect>")
            out.append(f'<text class="bar-label" x="{x + (bar_w - 2) / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                       f'font-size="9" data-group="{escape(group)}" data-series="{escape(name)}">{escape(label)}</text>')
        out.append(f'<text class="tick" x="{MARGIN["left"] + (g + 0.5) * group_w:.1f}" '
                   f'y="{height - MARGIN["bottom"] + 16}" text-anchor="middle" font-size="11">{escape(group)}</text>')
    out += _axes(width, height, "", y_label)
    out += _legend(list(series_names), colors, width, ["bar"] * len(series_names))
    return "\n".join([*out, "</svg>"])


__all__ = ["PALETTE", "Series", "bar_chart", "line_chart", "nice_ticks"]
