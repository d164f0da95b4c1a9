"""A sweep's report: one self-contained HTML page (inline CSS and SVG, no scripts, no external assets).

``render_report(rows, summary, importances)`` builds the page from the trials table (one dict per trial,
as ``search.run_sweep`` returns it), the run summary and the parameter importances; ``write_report``
stores it as ``<run_dir>/report.html``. The page opens offline in any browser: the plots are plain SVG
drawn here (hover a point for its trial's details through the SVG ``<title>``), every text is escaped.

Plots: the optimisation history (GAP of each trained trial in trial order, running best as a step line);
GAP against stored size (log x, MB) with the Pareto front of fully trained trials, the per-model budget
and the infeasible trials marked along the x axis; parameter importance; the ensemble's GAP as members
are added, when the run built one. Then the trials table, best GAP first, untrained trials last.

Each plotted trial is an SVG element carrying ``data-trial`` (its id) and ``data-state``; the points of
the GAP-vs-size plot also carry ``data-pareto`` ("1" on the front), so tests and tools can read the page.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from yt8m_search.data import fs

__all__ = ["render_report", "write_report", "pareto_ids"]

MB = 1e6  # sizes are shown in decimal megabytes

TRAINED = ("complete", "stopped")
STATE_ORDER = ("complete", "stopped", "infeasible", "error", "pending")
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


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, strings, bools)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _size(value: Any) -> float | None:
    """A stored size in bytes when known (positive), else None (``-1`` means unknown)."""
    x = _num(value)
    return x if x is not None and x > 0 else None


def _fmt(value: Any, spec: str = ".4f", empty: str = "–") -> str:
    x = _num(value)
    return empty if x is None else format(x, spec)


def _fmt_mb(value: Any, empty: str = "–") -> str:
    x = _size(value)
    if x is None:
        return empty
    mb = x / MB
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.3g}"


def _fmt_int(value: Any, empty: str = "–") -> str:
    x = _num(value)
    return empty if x is None else f"{int(round(x)):,}"


def _fmt_value(value: Any) -> str:
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


def _active(value: Any) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)) or value == "")


def _gap(row: Mapping[str, Any]) -> float | None:
    return _num(row.get("gap")) if row.get("state") in TRAINED else None


def pareto_ids(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ids of the fully trained trials not dominated in (GAP up, size down), in trial order.

    Same rule as ``search.pareto_front``; trials without a finite GAP or a known size take no part."""
    done = [
        (str(r.get("trial_id", "")), g, s)
        for r in rows
        if r.get("state") == "complete" and (g := _num(r.get("gap"))) is not None and (s := _size(r.get("size_bytes")))
    ]
    return [
        tid for tid, g, s in done
        if not any(og >= g and os_ <= s and (og > g or os_ < s) for _, og, os_ in done)
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Scales and ticks


def _domain(values: Iterable[float], *, log: bool = False, pad: float = 0.05) -> tuple[float, float]:
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


def _linear_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[tuple[float, str]]:
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


def _log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
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
            return [(t, _fmt_log_tick(t)) for t, _ in _linear_ticks(lo, hi, 4) if t > 0]
    return [(t, _fmt_log_tick(t)) for t in ticks]


# ---------------------------------------------------------------------------------------------
# SVG plotting


class _Plot:
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
        self.add(f'<text class="note" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">{_esc(text)}</text>')

    def vline(self, v: float, color: str, label: str, cls: str) -> None:
        px = self.x(v)
        self.add(
            f'<line class="{cls}" x1="{px:.1f}" x2="{px:.1f}" y1="{self.y1}" y2="{self.y0}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="6 4"><title>{_esc(label)}</title></line>'
        )

    def hline(self, v: float, color: str, label: str, cls: str) -> None:
        py = self.y(v)
        self.add(
            f'<line class="{cls}" x1="{self.x0}" x2="{self.x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{color}" '
            f'stroke-width="1.2" stroke-dasharray="3 3"><title>{_esc(label)}</title></line>'
        )

    def _axes(self) -> list[str]:
        out = []
        xt = _log_ticks(self.xlo, self.xhi) if self.xlog else _linear_ticks(self.xlo, self.xhi, 6, integer=self.xinteger)
        for t, label in xt:
            px = self.x(t)
            if not (self.x0 - 0.5 <= px <= self.x1 + 0.5):
                continue
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.y1}" y2="{self.y0}" stroke="{COLORS["grid"]}"/>')
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.y0}" y2="{self.y0 + 5}" stroke="{COLORS["axis"]}"/>')
            out.append(f'<text class="tick" x="{px:.1f}" y="{self.y0 + 18}" text-anchor="middle">{_esc(label)}</text>')
        for t, label in _linear_ticks(self.ylo, self.yhi, 5):
            py = self.y(t)
            if not (self.y1 - 0.5 <= py <= self.y0 + 0.5):
                continue
            out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{COLORS["grid"]}"/>')
            out.append(f'<line x1="{self.x0 - 5}" x2="{self.x0}" y1="{py:.1f}" y2="{py:.1f}" stroke="{COLORS["axis"]}"/>')
            out.append(f'<text class="tick" x="{self.x0 - 8}" y="{py + 4:.1f}" text-anchor="end">{_esc(label)}</text>')
        out.append(
            f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
            f'fill="none" stroke="{COLORS["axis"]}"/>'
        )
        out.append(
            f'<text class="axis-title" x="{(self.x0 + self.x1) / 2:.1f}" y="{self.H - 12}" '
            f'text-anchor="middle">{_esc(self.xlabel)}</text>'
        )
        cy = (self.y0 + self.y1) / 2
        out.append(
            f'<text class="axis-title" x="16" y="{cy:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {cy:.1f})">{_esc(self.ylabel)}</text>'
        )
        return out

    def _legend(self) -> list[str]:
        out, x, y = [], float(self.x0), 18.0
        for kind, color, label in self.legend:
            width = 24 + 6.6 * len(label) + 18
            if x > self.x0 and x + width - 18 > self.W - 4:  # wrap onto a second row
                x, y = float(self.x0), y + 17
            if kind == "line":
                sym = f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="2"/>'
            elif kind == "dash":
                sym = (
                    f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                    f'stroke-width="1.5" stroke-dasharray="5 3"/>'
                )
            elif kind == "cross":
                sym = _cross_path(x + 9, y, 4, color)
            elif kind == "ring":
                sym = f'<circle cx="{x + 9:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="{color}" stroke-width="2"/>'
            else:
                sym = f'<circle cx="{x + 9:.1f}" cy="{y:.1f}" r="4" fill="{color}" fill-opacity="0.8"/>'
            out.append(f'<g class="legend-item">{sym}<text class="legend" x="{x + 24:.1f}" y="{y + 4:.1f}">'
                       f"{_esc(label)}</text></g>")  # fmt: skip
            x += width
        return out

    def render(self, cls: str) -> str:
        parts = [
            f'<svg class="plot {cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.W} {self.H}" '
            f'width="{self.W}" height="{self.H}" role="img" aria-label="{_esc(self.title)}">',
            f"<title>{_esc(self.title)}</title>",
            *self._axes(),
            *self.marks,
            *self._legend(),
            "</svg>",
        ]
        return "\n".join(parts)


def _cross_path(cx: float, cy: float, r: float, color: str) -> str:
    return (
        f'<path d="M{cx - r:.1f},{cy - r:.1f}L{cx + r:.1f},{cy + r:.1f}M{cx - r:.1f},{cy + r:.1f}'
        f'L{cx + r:.1f},{cy - r:.1f}" stroke="{color}" stroke-width="2" fill="none"/>'
    )


def _tip(row: Mapping[str, Any]) -> str:
    lines = [f"{row.get('trial_id', '')} ({row.get('state', '')}) {row.get('model', '')}"]
    if _gap(row) is not None:
        lines.append(f"GAP {_fmt(row.get('gap'))} after {_fmt_int(row.get('epochs'))} epochs")
    lines.append(f"size {_fmt_mb(row.get('size_bytes'), '?')} MB, {_fmt_int(row.get('params'), '?')} params")
    config = _config_text(row)
    if config:
        lines.append(config)
    if row.get("reason"):
        lines.append(str(row["reason"]))
    return "\n".join(lines)


def _point(plot: _Plot, row: Mapping[str, Any], x: float, y: float, *, r: float = 4.5, extra: str = "",
           stroke: str = "none") -> str:  # fmt: skip
    state = str(row.get("state", ""))
    color = COLORS.get(state, "#333")
    return (
        f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(y):.1f}" r="{r}" fill="{color}" fill-opacity="0.8" '
        f'stroke="{stroke}" stroke-width="2" data-trial="{_esc(row.get("trial_id", ""))}" '
        f'data-state="{_esc(state)}"{extra}><title>{_esc(_tip(row))}</title></circle>'
    )


def _history_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    n = len(rows)
    trained = [(i + 1, g, r) for i, r in enumerate(rows) if (g := _gap(r)) is not None]
    plot = _Plot(
        "Optimisation history", "trial (creation order)", "validation GAP",
        (0.5, max(n, 1) + 0.5), _domain([g for _, g, _ in trained]), xinteger=True,
    )  # fmt: skip
    if not trained:
        plot.note("no trained trials yet")
    else:
        best, path = -math.inf, []
        for i, g, _ in trained:
            if g > best:
                if path:
                    path.append(f"H{plot.x(i):.1f}V{plot.y(g):.1f}")
                else:
                    path.append(f"M{plot.x(i):.1f},{plot.y(g):.1f}")
                best = g
        path.append(f"H{plot.x(n):.1f}")
        plot.add(f'<path class="running-best" d="{"".join(path)}" fill="none" stroke="{COLORS["best"]}" '
                 f'stroke-width="2"/>')  # fmt: skip
        for i, g, r in trained:
            plot.add(_point(plot, r, i, g))
    states = {r.get("state") for _, _, r in trained}
    for s in TRAINED:
        if s in states:
            plot.key("dot", COLORS[s], "complete" if s == "complete" else "stopped early (ASHA)")
    if trained:
        plot.key("line", COLORS["best"], "running best")
    return plot.render("history")


def _size_plot(rows: Sequence[Mapping[str, Any]], budget_bytes: float | None, front: set[str]) -> tuple[str, str]:
    pts = [(s / MB, g, r) for r in rows if (g := _gap(r)) is not None and (s := _size(r.get("size_bytes")))]
    infeasible = [(s / MB, r) for r in rows if r.get("state") == "infeasible" and (s := _size(r.get("size_bytes")))]
    unknown = sum(1 for r in rows if _gap(r) is not None and _size(r.get("size_bytes")) is None)
    budget_mb = budget_bytes / MB if budget_bytes else None
    xs = [x for x, _, _ in pts] + [x for x, _ in infeasible] + ([budget_mb] if budget_mb else [])
    plot = _Plot("GAP vs stored size", "stored size (MB, log scale)", "validation GAP",
                 _domain(xs, log=True), _domain([g for _, g, _ in pts]), xlog=True)  # fmt: skip
    if not pts:
        plot.note("no trained trials with a known size")
    if budget_mb:
        plot.vline(budget_mb, COLORS["budget"], f"per-model budget {budget_mb:.3g} MB", "budget")
    on_front = sorted((x, g) for x, g, r in pts if str(r.get("trial_id", "")) in front)
    if len(on_front) > 1:
        d = "".join(f"{'M' if i == 0 else 'L'}{plot.x(x):.1f},{plot.y(g):.1f}" for i, (x, g) in enumerate(on_front))
        plot.add(f'<path class="pareto-line" d="{d}" fill="none" stroke="{COLORS["pareto"]}" stroke-width="1.5"/>')
    # Dominated points first so the front is drawn on top.
    for x, g, r in sorted(pts, key=lambda p: str(p[2].get("trial_id", "")) in front):
        is_front = str(r.get("trial_id", "")) in front
        plot.add(_point(plot, r, x, g, r=6 if is_front else 4.5, stroke=COLORS["pareto"] if is_front else "none",
                        extra=f' data-pareto="{1 if is_front else 0}"'))  # fmt: skip
    for x, r in infeasible:
        plot.add(
            f'<g class="infeasible" data-trial="{_esc(r.get("trial_id", ""))}" data-state="infeasible">'
            f"<title>{_esc(_tip(r))}</title>{_cross_path(plot.x(x), plot.y0 - 6, 4, COLORS['infeasible'])}</g>"
        )
    states = {r.get("state") for _, _, r in pts}
    for s in TRAINED:
        if s in states:
            plot.key("dot", COLORS[s], s)
    if on_front:
        plot.key("ring", COLORS["pareto"], "Pareto front (complete)")
    if budget_mb:
        plot.key("dash", COLORS["budget"], "per-model budget")
    if infeasible:
        plot.key("cross", COLORS["infeasible"], "infeasible (not trained)")
    caption = ""
    if unknown:
        caption = f"{unknown} trained trial(s) of unknown size not shown."
    return plot.render("size"), caption


def _importance_plot(importances: Mapping[str, float]) -> str:
    numeric = [(str(k), _num(v)) for k, v in importances.items()]
    items = sorted(((k, v) for k, v in numeric if v is not None), key=lambda kv: -kv[1])
    if not items:
        return '<p class="note">Not enough fully trained trials to estimate parameter importance.</p>'
    names = [k if len(k) <= 32 else k[:31] + "…" for k, _ in items]
    left = int(min(260, 24 + 7.2 * max(len(n) for n in names)))
    bar_h, gap_h, top, bottom, right = 20, 8, 16, 40, 60
    width = 760
    height = top + bottom + len(items) * (bar_h + gap_h)
    vmax = max(max(v for _, v in items), 1e-12)
    xmax = 1.0 if vmax > 0.5 else vmax * 1.1
    x0, x1 = left, width - right

    def px(v: float) -> float:
        return x0 + max(v, 0.0) / xmax * (x1 - x0)

    parts = [
        f'<svg class="plot importance" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="Parameter importance">',
        "<title>Parameter importance</title>",
    ]
    y_axis = height - bottom
    for t, label in _linear_ticks(0.0, xmax, 5):
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top - 4}" y2="{y_axis}" stroke="{COLORS["grid"]}"/>')
        parts.append(f'<text class="tick" x="{px(t):.1f}" y="{y_axis + 16}" text-anchor="middle">{_esc(label)}</text>')
    for i, ((name, v), shown) in enumerate(zip(items, names, strict=True)):
        y = top + i * (bar_h + gap_h)
        parts.append(
            f'<g class="bar" data-param="{_esc(name)}"><title>{_esc(name)}: {v:.3f}</title>'
            f'<rect x="{x0}" y="{y}" width="{px(v) - x0:.1f}" height="{bar_h}" fill="{COLORS["complete"]}"/>'
            f'<text class="tick" x="{x0 - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end">{_esc(shown)}</text>'
            f'<text class="tick" x="{px(v) + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}">{v:.3f}</text></g>'
        )
    parts.append(f'<line x1="{x0}" x2="{x0}" y1="{top - 4}" y2="{y_axis}" stroke="{COLORS["axis"]}"/>')
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y_axis}" y2="{y_axis}" stroke="{COLORS["axis"]}"/>')
    parts.append(f'<text class="axis-title" x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                 "importance for GAP (fraction of the total)</text>")  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _ensemble_plot(ens: Mapping[str, Any], budget_bytes: float | None, best_gap: float | None) -> str:
    curve = []
    for item in ens.get("curve") or []:
        try:
            s, g = _num(item[0]), _num(item[1])
        except (TypeError, IndexError, KeyError):
            continue
        if s is not None and g is not None:
            curve.append((s / MB, g))
    budget_mb = budget_bytes / MB if budget_bytes and budget_bytes > 0 else None
    xs = [0.0] + [x for x, _ in curve] + ([budget_mb] if budget_mb else [])
    ys = [g for _, g in curve] + ([best_gap] if best_gap is not None else [])
    lo, hi = _domain(xs)
    plot = _Plot("Ensemble: GAP as members are added", "ensemble stored size (MB)", "validation GAP",
                 (0.0 if hi > 0 else lo, hi), _domain(ys))  # fmt: skip
    if budget_mb:
        plot.vline(budget_mb, COLORS["budget"], f"ensemble budget {budget_mb:.3g} MB", "budget")
        plot.key("dash", COLORS["budget"], "ensemble budget")
    if best_gap is not None:
        plot.hline(best_gap, COLORS["best"], f"best single model {best_gap:.4f}", "best-single")
        plot.key("dash", COLORS["best"], "best single model")
    if not curve:
        plot.note("no ensemble curve recorded")
    else:
        d = "".join(f"{'M' if i == 0 else 'L'}{plot.x(x):.1f},{plot.y(g):.1f}" for i, (x, g) in enumerate(curve))
        plot.add(f'<path class="ensemble-line" d="{d}" fill="none" stroke="{COLORS["ensemble"]}" stroke-width="2"/>')
        for i, (x, g) in enumerate(curve):
            plot.add(
                f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(g):.1f}" r="4" fill="{COLORS["ensemble"]}" '
                f'data-step="{i + 1}"><title>step {i + 1}: GAP {g:.4f}, {x:.3g} MB</title></circle>'
            )
        plot.key("dot", COLORS["ensemble"], "ensemble after each added member")
    return plot.render("ensemble")


# ---------------------------------------------------------------------------------------------
# Tables and page


def _config_items(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in row.items():
        if not k.startswith("config.") or not _active(v):
            continue
        name = k.removeprefix("config.")
        if name in ("family", "model") and str(v) == str(row.get("model", "")):
            continue
        out.append((name, _fmt_value(v)))
    return out


def _config_text(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in _config_items(row))


def _hparams_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def _sorted_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Trained trials by GAP descending (ties in trial order), then the rest in trial order."""
    trained = [(i, g, r) for i, r in enumerate(rows) if (g := _gap(r)) is not None]
    rest = [r for r in rows if _gap(r) is None]
    return [r for _, _, r in sorted(trained, key=lambda t: (-t[1], t[0]))] + rest


def _trials_table(rows: Sequence[Mapping[str, Any]], front: set[str], best_id: str | None,
                  members: Mapping[str, int]) -> str:  # fmt: skip
    head = ["#", "trial", "state", "model", "configuration", "GAP", "hit@1", "epochs", "params", "size MB",
            "notes", "reason"]  # fmt: skip
    out = ['<table class="trials">', "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]  # fmt: skip
    for rank, r in enumerate(_sorted_rows(rows), 1):
        tid = str(r.get("trial_id", ""))
        state = str(r.get("state", ""))
        notes = []
        if tid == best_id:
            notes.append("best")
        if tid in front:
            notes.append("Pareto")
        if tid in members:
            notes.append(f"ensemble ×{members[tid]}")
        config = "".join(f'<span class="kv">{_esc(k)}=<b>{_esc(v)}</b></span> ' for k, v in _config_items(r))
        trained = _gap(r) is not None
        cls = f"state-{_esc(state)}" + (" best" if tid == best_id else "")
        cells = [
            f'<td class="num">{rank}</td>',
            f'<td class="id">{_esc(tid)}</td>',
            f'<td><span class="badge {_esc(state)}">{_esc(state)}</span></td>',
            f"<td>{_esc(r.get('model', ''))}</td>",
            f'<td class="config">{config}</td>',
            f'<td class="num">{_fmt(r.get("gap")) if trained else "–"}</td>',
            f'<td class="num">{_fmt(r.get("hit_at_one")) if trained else "–"}</td>',
            f'<td class="num">{_fmt_int(r.get("epochs")) if trained else "–"}</td>',
            f'<td class="num">{_fmt_int(r.get("params"))}</td>',
            f'<td class="num">{_fmt_mb(r.get("size_bytes"))}</td>',
            f"<td>{_esc(', '.join(notes))}</td>",
            f'<td class="reason">{_esc(r.get("reason") or "")}</td>',
        ]
        out.append(f'<tr class="{cls}" data-trial="{_esc(tid)}">' + "".join(cells) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(head)}" class="note">no trials</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _members_table(ens: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]]) -> str:
    members = [str(m) for m in ens.get("members") or []]
    weights = list(ens.get("weights") or [])
    out = ['<table class="members">',
           "<thead><tr><th>#</th><th>trial</th><th>weight</th><th>model</th><th>GAP</th><th>size MB</th>"
           "</tr></thead>", "<tbody>"]  # fmt: skip
    for i, tid in enumerate(members):
        r = by_id.get(tid, {})
        w = weights[i] if i < len(weights) else ""
        out.append(
            f'<tr data-trial="{_esc(tid)}"><td class="num">{i + 1}</td><td class="id">{_esc(tid)}</td>'
            f'<td class="num">{_esc(w)}</td><td>{_esc(r.get("model", ""))}</td>'
            f'<td class="num">{_fmt(r.get("gap"))}</td><td class="num">{_fmt_mb(r.get("size_bytes"))}</td></tr>'
        )
    if not members:
        out.append('<tr><td colspan="6" class="note">no members</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _dl(items: Sequence[tuple[str, str]]) -> str:
    """A definition list from (label, already-escaped HTML) pairs."""
    return '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #222; background: #fafafa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 30px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 12px; word-break: break-all; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 8px 0; }
dl.facts dt { color: #666; }
dl.facts dd { margin: 0; word-break: break-word; }
.counts span { margin-right: 12px; }
section.plot-box { background: #fff; border: 1px solid #e2e2e2; border-radius: 6px; padding: 10px 12px;
                   margin: 14px 0; overflow-x: auto; }
svg.plot { max-width: 100%; height: auto; display: block; }
svg text { font-family: inherit; fill: #333; }
svg text.tick, svg text.legend { font-size: 11px; }
svg text.axis-title { font-size: 12px; fill: #444; }
svg text.note { font-size: 14px; fill: #888; }
p.caption, p.note, td.note { color: #777; font-size: 13px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 12.5px; }
th, td { border-bottom: 1px solid #eee; padding: 4px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fbfbfb; }
tr.best { background: #eef8ee !important; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
td.config { max-width: 380px; }
td.config .kv { display: inline-block; margin-right: 6px; color: #555; }
td.config .kv b { color: #222; font-weight: 500; }
td.reason { max-width: 320px; color: #8a3b12; word-break: break-word; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11.5px; color: #fff; }
.badge.complete { background: #1f77b4; } .badge.stopped { background: #ff7f0e; }
.badge.infeasible { background: #8c8c8c; } .badge.error { background: #d62728; }
.badge.pending { background: #9467bd; }
.table-wrap { overflow-x: auto; }
code { font-size: 12.5px; }
"""


def render_report(rows: list[dict], summary: dict, importances: dict[str, float]) -> str:
    """The report page as HTML text (see the module docstring)."""
    rows = list(rows or [])
    summary = dict(summary or {})
    importances = dict(importances or {})
    by_id = {str(r.get("trial_id", "")): r for r in rows}
    front = set(pareto_ids(rows))
    budget = summary.get("budget") or {}
    max_model = _size(budget.get("max_model_bytes"))
    best = summary.get("best") or None
    best_id = str(best.get("trial_id")) if best else None
    ens = summary.get("ensemble") or None

    counts = dict(summary.get("trials") or {})
    if not counts:
        for r in rows:
            counts[str(r.get("state", ""))] = counts.get(str(r.get("state", "")), 0) + 1
    ordered = [s for s in STATE_ORDER if s in counts] + [s for s in counts if s not in STATE_ORDER]
    total = sum(int(_num(counts[s]) or 0) for s in ordered)
    counts_html = '<span class="counts">' + "".join(
        f'<span><span class="badge {_esc(s)}">{_esc(s)}</span> {_esc(counts[s])}</span>' for s in ordered
    ) + f"<span>total {total}</span></span>"  # fmt: skip

    facts = [
        ("search space", f"<code>{_esc(summary.get('space', ''))}</code>"),
        ("space hash", f"<code>{_esc(summary.get('space_hash', ''))}</code>"),
        ("yt8m_search version", _esc(summary.get("version", ""))),
        ("run folder", f"<code>{_esc(summary.get('run_dir', ''))}</code>"),
        ("objectives", _esc(", ".join(str(o) for o in summary.get("objectives") or []))),
        ("trials", counts_html),
        ("per-model budget", _esc(f"{_fmt_mb(max_model)} MB" if max_model else "none")
         + (f" (stored as {_esc(budget.get('storage_dtype'))})" if budget.get("storage_dtype") else "")),
    ]  # fmt: skip
    if _size(budget.get("ensemble_bytes")):
        facts.append(("ensemble budget", _esc(f"{_fmt_mb(budget.get('ensemble_bytes'))} MB")))
    if best:
        facts.append(("best trial", (
            f"<b>{_esc(best.get('trial_id', ''))}</b> · {_esc(best.get('model', ''))} · GAP "
            f"<b>{_esc(_fmt(best.get('gap')))}</b> · {_esc(_fmt_int(best.get('epochs')))} epochs · "
            f"{_esc(_fmt_int(best.get('params')))} params · {_esc(_fmt_mb(best.get('size_bytes')))} MB"
        )))  # fmt: skip
        hp = _hparams_text(best.get("hparams"))
        if hp:
            facts.append(("best hyperparameters", f"<code>{_esc(hp)}</code>"))
        if best.get("checkpoint"):
            facts.append(("best checkpoint", f"<code>{_esc(best.get('checkpoint'))}</code>"))
    else:
        facts.append(("best trial", "none trained yet"))
    if ens:
        facts.append(("ensemble", (
            f"{len(ens.get('members') or [])} member(s) · GAP <b>{_esc(_fmt(ens.get('gap')))}</b>"
            f" (selection {_esc(_fmt(ens.get('selection_gap')))}) · {_esc(_fmt_mb(ens.get('size_bytes')))} MB"
        )))  # fmt: skip

    size_svg, size_caption = _size_plot(rows, max_model, front)
    title = f"Sweep report — {summary.get('space') or 'yt8m_search'}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">{_esc(summary.get("run_dir", ""))}</p>',
        _dl(facts),
        "<h2>Optimisation history</h2>",
        f'<section class="plot-box">{_history_plot(rows)}'
        '<p class="caption">GAP is each trial\'s best validation GAP; stopped trials were cut short by ASHA '
        "(fewer epochs). Infeasible, failed and pending trials have no GAP.</p></section>",
        "<h2>GAP vs stored size</h2>",
        f'<section class="plot-box">{size_svg}'
        + (f'<p class="caption">{_esc(size_caption)}</p>' if size_caption else "")
        + "</section>",
        "<h2>Parameter importance</h2>",
        f'<section class="plot-box">{_importance_plot(importances)}</section>',
    ]
    if ens:
        ens_budget = _size(ens.get("budget_bytes")) or _size(budget.get("ensemble_bytes"))
        best_gap = _num(best.get("gap")) if best else None
        weights = list(ens.get("weights") or [])
        member_w = {}
        for i, m in enumerate(ens.get("members") or []):
            w = _num(weights[i]) if i < len(weights) else None
            member_w[str(m)] = int(w) if w is not None else 1
        body += [
            "<h2>Ensemble</h2>",
            f'<section class="plot-box">{_ensemble_plot(ens, ens_budget, best_gap)}'
            + (f'<p class="caption">bundle: <code>{_esc(ens.get("path"))}</code></p>' if ens.get("path") else "")
            + "</section>",
            f'<div class="table-wrap">{_members_table(ens, by_id)}</div>',
        ]
    else:
        member_w = {}
    body += [
        "<h2>Trials</h2>",
        f'<div class="table-wrap">{_trials_table(rows, front, best_id, member_w)}</div>',
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body><main>",
        *body,
        "</main></body>",
        "</html>",
        "",
    ])  # fmt: skip


def write_report(run_dir: str, rows: list[dict], summary: dict, importances: dict[str, float]) -> str:
    """Render the report and write it all-or-nothing to ``<run_dir>/report.html``; returns that path."""
    text = render_report(rows, summary, importances)
    path = fs.join(run_dir, "report.html")
    with fs.atomic_output(path) as f:
        f.write(text.encode("utf-8"))
    return path
