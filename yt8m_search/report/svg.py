"""The report's drawing kit: value formatting, axis scales and ticks, and ``Plot``, one x/y SVG chart.

Everything here takes plain numbers and strings (no trial rows), and every text it writes is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

MB = 1e6  # sizes are shown in decimal megabytes
GFLOP = 1e9  # forward FLOPs are shown in GFLOPs

COLORS = {
    "complete": "#1f77b4",
    "stopped": "#ff7f0e",
    "infeasible": "#8c8c8c",
    "error": "#d62728",
    "pending": "#9467bd",
    "pareto": "#d62728",
    "best": "#2ca02c",
    "budget": "#7b3fa0",
    "ensemble": "#17becf",
    "grid": "#e6e6e6",
    "axis": "#444",
}

# ---------------------------------------------------------------------------------------------
# Small value helpers


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, strings, bools)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def size(value: Any) -> float | None:
    """A stored size in bytes when known (positive), else None (``-1`` means unknown)."""
    x = num(value)
    return x if x is not None and x > 0 else None


def fmt(value: Any, spec: str = ".4f", empty: str = "–") -> str:
    x = num(value)
    return empty if x is None else format(x, spec)


def fmt_mb(value: Any, empty: str = "–") -> str:
    x = size(value)
    if x is None:
        return empty
    mb = x / MB
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.3g}"


def fmt_gflops(value: Any, empty: str = "–") -> str:
    """Forward FLOPs (known when positive) in GFLOPs, three significant digits."""
    x = size(value)
    return empty if x is None else f"{x / GFLOP:.3g}"


def fmt_int(value: Any, empty: str = "–") -> str:
    x = num(value)
    return empty if x is None else f"{int(round(x)):,}"


def fmt_value(value: Any) -> str:
    """A config value for display (None/NaN -> empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "" if math.isnan(value) else str(value)
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def active(value: Any) -> bool:
    """False for a value that is not set (None, NaN, empty string)."""
    return not (value is None or (isinstance(value, float) and math.isnan(value)) or value == "")


# ---------------------------------------------------------------------------------------------
# Scales and ticks


def domain(values: Iterable[float | None], *, log: bool = False, pad: float = 0.05) -> tuple[float, float]:
    """A padded (lo, hi) covering ``values``; never empty or zero-width. Log domains are in real units."""
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if log:
        vals = [math.log10(v) for v in vals]
    if not vals:
        lo, hi = (-1.0, 1.0) if log else (0.0, 1.0)
    else:
        lo, hi = min(vals), max(vals)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            half = 0.5 if log else (abs(lo) * 0.1 if lo else 0.5)
            lo, hi = lo - half, hi + half
        else:
            span = hi - lo
            lo, hi = lo - pad * span, hi + pad * span
    return (10**lo, 10**hi) if log else (lo, hi)


def _decimals(step: float) -> int:
    for d in range(0, 12):
        scaled = step * 10**d
        if abs(scaled - round(scaled)) < 1e-6 * max(1.0, scaled):
            return d
    return 12


def linear_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[tuple[float, str]]:
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [(lo, f"{lo:g}")]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    if integer:
        step = max(1.0, round(step))
    dec = 0 if integer else _decimals(step)
    k0, k1 = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    ticks = []
    for k in range(k0, k1 + 1):
        t = k * step
        label = f"{t:.{dec}f}"
        ticks.append((t, "0" if label.lstrip("-").strip("0.") == "" else label))
    return ticks


def _fmt_log_tick(t: float) -> str:
    if t >= 1 and abs(t - round(t)) < 1e-9 * t:
        return f"{t:,.0f}"
    return f"{t:.3g}"


def log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    klo, khi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def within(mults: Sequence[int]) -> list[float]:
        out = [m * 10.0**k for k in range(klo, khi + 1) for m in mults]
        return [t for t in out if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]

    ticks = within((1,))
    if len(ticks) > 8:
        every = math.ceil(len(ticks) / 8)
        ticks = ticks[::every]
    elif len(ticks) < 3:
        ticks = within((1, 2, 5))
        if len(ticks) < 3:
            ticks = within(range(1, 10))
        if len(ticks) < 2:
            return [(t, _fmt_log_tick(t)) for t, _ in linear_ticks(lo, hi, 4) if t > 0]
    return [(t, _fmt_log_tick(t)) for t in ticks]


# ---------------------------------------------------------------------------------------------
# SVG plotting


def cross_path(cx: float, cy: float, r: float, color: str) -> str:
    return (
        f'<path d="M{cx - r:.1f},{cy - r:.1f}L{cx + r:.1f},{cy + r:.1f}M{cx - r:.1f},{cy + r:.1f}'
        f'L{cx + r:.1f},{cy - r:.1f}" stroke="{color}" stroke-width="2" fill="none"/>'
    )


def _legend_symbol(kind: str, color: str, x: float, y: float) -> str:
    if kind == "line":
        return f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="2"/>'
    if kind == "dash":
        return (
            f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    if kind == "cross":
        return cross_path(x + 9, y, 4, color)
    if kind == "ring":
        return f'<circle cx="{x + 9:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="{color}" stroke-width="2"/>'
    return f'<circle cx="{x + 9:.1f}" cy="{y:.1f}" r="4" fill="{color}" fill-opacity="0.8"/>'


class Plot:
    """One x/y chart: frame, grid, ticks, axis titles, legend and marks in data coordinates."""

    W, H = 760, 360
    LEFT, RIGHT, TOP, BOTTOM = 72, 24, 48, 54

    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        xdom: tuple[float, float],
        ydom: tuple[float, float],
        *,
        xlog: bool = False,
        xinteger: bool = False,
    ) -> None:
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlo, self.xhi = xdom
        self.ylo, self.yhi = ydom
        self.xlog = xlog
        self.xinteger = xinteger
        self.marks: list[str] = []
        self.legend: list[tuple[str, str, str]] = []  # (symbol kind, colour, label)
        self.x0, self.x1 = self.LEFT, self.W - self.RIGHT
        self.y0, self.y1 = self.H - self.BOTTOM, self.TOP  # y0: bottom pixel, y1: top pixel

    def x(self, v: float) -> float:
        if self.xlog:
            a, b, v = math.log10(self.xlo), math.log10(self.xhi), math.log10(max(v, 1e-300))
        else:
            a, b = self.xlo, self.xhi
        return self.x0 + (v - a) / (b - a) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        return self.y0 - (v - self.ylo) / (self.yhi - self.ylo) * (self.y0 - self.y1)

    def add(self, svg: str) -> None:
        self.marks.append(svg)

    def key(self, kind: str, color: str, label: str) -> None:
        self.legend.append((kind, color, label))

    def note(self, text: str) -> None:
        cx, cy = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        self.add(f'<text class="note" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">{esc(text)}</text>')

    def vline(self, v: float, color: str, label: str, cls: str) -> None:
        px = self.x(v)
        self.add(
            f'<line class="{cls}" x1="{px:.1f}" x2="{px:.1f}" y1="{self.y1}" y2="{self.y0}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="6 4"><title>{esc(label)}</title></line>'
        )

    def hline(self, v: float, color: str, label: str, cls: str) -> None:
        py = self.y(v)
        self.add(
            f'<line class="{cls}" x1="{self.x0}" x2="{self.x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{color}" '
            f'stroke-width="1.2" stroke-dasharray="3 3"><title>{esc(label)}</title></line>'
        )

    def _x_axis(self) -> list[str]:
        out, grid, axis = [], COLORS["grid"], COLORS["axis"]
        xt = log_ticks(self.xlo, self.xhi) if self.xlog else linear_ticks(self.xlo, self.xhi, 6, integer=self.xinteger)
        for t, label in xt:
            px = self.x(t)
            if not (self.x0 - 0.5 <= px <= self.x1 + 0.5):
                continue
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.y1}" y2="{self.y0}" stroke="{grid}"/>')
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.y0}" y2="{self.y0 + 5}" stroke="{axis}"/>')
            out.append(f'<text class="tick" x="{px:.1f}" y="{self.y0 + 18}" text-anchor="middle">{esc(label)}</text>')
        return out

    def _y_axis(self) -> list[str]:
        out, grid, axis = [], COLORS["grid"], COLORS["axis"]
        for t, label in linear_ticks(self.ylo, self.yhi, 5):
            py = self.y(t)
            if not (self.y1 - 0.5 <= py <= self.y0 + 0.5):
                continue
            out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{grid}"/>')
            out.append(f'<line x1="{self.x0 - 5}" x2="{self.x0}" y1="{py:.1f}" y2="{py:.1f}" stroke="{axis}"/>')
            out.append(f'<text class="tick" x="{self.x0 - 8}" y="{py + 4:.1f}" text-anchor="end">{esc(label)}</text>')
        return out

    def _axes(self) -> list[str]:
        cy = (self.y0 + self.y1) / 2
        return [
            *self._x_axis(),
            *self._y_axis(),
            f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
            f'fill="none" stroke="{COLORS["axis"]}"/>',
            f'<text class="axis-title" x="{(self.x0 + self.x1) / 2:.1f}" y="{self.H - 12}" '
            f'text-anchor="middle">{esc(self.xlabel)}</text>',
            f'<text class="axis-title" x="16" y="{cy:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {cy:.1f})">{esc(self.ylabel)}</text>',
        ]

    def _legend(self) -> list[str]:
        out, x, y = [], float(self.x0), 18.0
        for kind, color, label in self.legend:
            width = 24 + 6.6 * len(label) + 18
            if x > self.x0 and x + width - 18 > self.W - 4:  # wrap onto a second row
                x, y = float(self.x0), y + 17
            sym = _legend_symbol(kind, color, x, y)
            out.append(f'<g class="legend-item">{sym}<text class="legend" x="{x + 24:.1f}" y="{y + 4:.1f}">'
                       f"{esc(label)}</text></g>")  # fmt: skip
            x += width
        return out

    def render(self, cls: str) -> str:
        parts = [
            f'<svg class="plot {cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.W} {self.H}" '
            f'width="{self.W}" height="{self.H}" role="img" aria-label="{esc(self.title)}">',
            f"<title>{esc(self.title)}</title>",
            *self._axes(),
            *self.marks,
            *self._legend(),
            "</svg>",
        ]
        return "\n".join(parts)
