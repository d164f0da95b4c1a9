"""The report's plots, each one self-contained SVG: the optimisation history, GAP against each cost
(stored size, forward GFLOPs) with its Pareto front, parameter importance, and the ensemble's GAP as
members are added.

Each plotted trial is an SVG element carrying ``data-trial`` (its id) and ``data-state``; the points of
a GAP-vs-cost plot also carry ``data-pareto`` ("1" on that plot's front), so tests and tools can read
the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from yt8m_search.report.svg import (
    COLORS,
    GFLOP,
    MB,
    Plot,
    active,
    cross_path,
    domain,
    esc,
    fmt,
    fmt_gflops,
    fmt_int,
    fmt_mb,
    fmt_value,
    linear_ticks,
    num,
    size,
)
from yt8m_search.results import COSTS, TABLE_STATES, TRAINED_STATES, TrialRow, TrialState, pareto_front

# the trained states in the order the legends list them
TRAINED = tuple(s for s in TABLE_STATES if s in TRAINED_STATES)


def pareto_ids(rows: Sequence[TrialRow], costs: Sequence[str] = ("size",)) -> list[str]:
    """Ids of the fully trained trials not dominated in (GAP up, each of ``costs`` down), in the rows'
    order (``results.pareto_front``: trials without a finite GAP or a known cost take no part)."""
    return [r.trial_id for r in pareto_front(rows, costs)]


@dataclass(frozen=True)
class CostAxis:
    """A cost plotted against GAP (log x): the ``results.COSTS`` name, how it reads and its unit."""

    cost: str  # "size" | "flops"
    title: str
    label: str  # the x axis
    unit: str
    scale: float  # the unit in the cost's own (bytes, FLOPs)
    budget: str  # what the per-model budget line says

    def value(self, row: TrialRow) -> float | None:
        """The row's cost in ``unit`` when known (positive)."""
        x = size(getattr(row, COSTS[self.cost]))
        return x / self.scale if x else None


SIZE = CostAxis("size", "GAP vs stored size", "stored size (MB, log scale)", "MB", MB, "per-model budget")
FLOPS = CostAxis("flops", "GAP vs forward GFLOPs", "forward GFLOPs per 300-frame video (log scale)", "GFLOPs",
                 GFLOP, "per-model FLOPs budget")


# ---------------------------------------------------------------------------------------------
# A trial as the plots and the table show it


def gap_of(row: TrialRow) -> float | None:
    """The trial's best validation GAP when it trained and it is finite."""
    return num(row.gap) if row.trained else None


def config_items(row: TrialRow) -> list[tuple[str, str]]:
    """(name, shown value) of the trial's set parameters; the family is left out (the model says it)."""
    out = []
    for name, value in row.config.items():
        if not active(value):
            continue
        if name in ("family", "model") and str(value) == row.model:
            continue
        out.append((name, fmt_value(value)))
    return out


def config_text(row: TrialRow) -> str:
    return ", ".join(f"{k}={v}" for k, v in config_items(row))


TIP_REASON = 200  # characters of a reason in a point's hover text; the trials table has it whole


def tip(row: TrialRow) -> str:
    """A point's hover text."""
    lines = [f"{row.trial_id} ({row.state.value}) {row.model}"]
    if gap_of(row) is not None:
        lines.append(f"GAP {fmt(row.gap)} after {fmt_int(row.epochs)} epochs")
    lines.append(f"size {fmt_mb(row.size_bytes, '?')} MB, {fmt_int(row.params, '?')} params")
    lines.append(f"{fmt_gflops(row.flops, '?')} GFLOPs, {fmt(row.latency_ms, '.3g', '?')} ms per video"
                 + (f" on {row.device}" if row.device else ""))
    config = config_text(row)
    if config:
        lines.append(config)
    if row.reason:
        lines.append(row.reason if len(row.reason) <= TIP_REASON else row.reason[: TIP_REASON - 1] + "…")
    return "\n".join(lines)


def dot_radius(points: int) -> float:
    """A trial's dot: smaller once a plot holds many, so that hundreds of them stay apart."""
    return 4.5 if points <= 64 else 3.0


def _point(plot: Plot, row: TrialRow, x: float, y: float, *, r: float = 4.5, extra: str = "",
           stroke: str = "none") -> str:  # fmt: skip
    state = row.state.value
    color = COLORS.get(state, "#333")
    return (
        f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(y):.1f}" r="{r}" fill="{color}" fill-opacity="0.8" '
        f'stroke="{stroke}" stroke-width="2" data-trial="{esc(row.trial_id)}" '
        f'data-state="{esc(state)}"{extra}><title>{esc(tip(row))}</title></circle>'
    )


def _state_keys(plot: Plot, rows: Sequence[TrialRow], history: bool) -> None:
    states = {r.state for r in rows}
    for s in TRAINED:
        if s in states:
            label = ("complete" if s is TrialState.COMPLETE else "stopped early (ASHA)") if history else s.value
            plot.key("dot", COLORS[s.value], label)


# ---------------------------------------------------------------------------------------------
# The plots


def history_plot(rows: Sequence[TrialRow]) -> str:
    """GAP of each trained trial in creation order, the running best as a step line."""
    n = len(rows)
    trained = [(i + 1, g, r) for i, r in enumerate(rows) if (g := gap_of(r)) is not None]
    plot = Plot(
        "Optimisation history", "trial (creation order)", "GAP (selection videos)",
        (0.5, max(n, 1) + 0.5), domain([g for _, g, _ in trained]), xinteger=True,
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
            plot.add(_point(plot, r, i, g, r=dot_radius(len(trained))))
    _state_keys(plot, [r for _, _, r in trained], history=True)
    if trained:
        plot.key("line", COLORS["best"], "running best")
    return plot.render("history")


def _cost_marks(plot: Plot, pts: list[tuple[float, float, TrialRow]], front: set[str]) -> list[tuple[float, float]]:
    """The Pareto line and the trained points: stopped, then complete, then the front, each drawn over
    the ones before (at hundreds of trials the many stopped ones would hide the rest)."""
    on_front = sorted((x, g) for x, g, r in pts if r.trial_id in front)
    if len(on_front) > 1:
        d = "".join(f"{'M' if i == 0 else 'L'}{plot.x(x):.1f},{plot.y(g):.1f}" for i, (x, g) in enumerate(on_front))
        plot.add(f'<path class="pareto-line" d="{d}" fill="none" stroke="{COLORS["pareto"]}" stroke-width="1.5"/>')
    dot = dot_radius(len(pts))
    for x, g, r in sorted(pts, key=lambda p: (p[2].trial_id in front, p[2].state is TrialState.COMPLETE)):
        is_front = r.trial_id in front
        plot.add(_point(plot, r, x, g, r=6 if is_front else dot, stroke=COLORS["pareto"] if is_front else "none",
                        extra=f' data-pareto="{1 if is_front else 0}"'))  # fmt: skip
    return on_front


def cost_plot(rows: Sequence[TrialRow], axis: CostAxis, budget: float | None) -> tuple[str, str]:
    """GAP against a cost (log x, in ``axis.unit``): that plot's Pareto front (GAP up, this cost down),
    the per-model budget (in the cost's own units) and the infeasible trials marked along the x axis.
    Returns (svg, caption)."""
    front = set(pareto_ids(rows, (axis.cost,)))
    pts = [(x, g, r) for r in rows if (g := gap_of(r)) is not None and (x := axis.value(r))]
    infeasible = [(x, r) for r in rows if r.state is TrialState.INFEASIBLE and (x := axis.value(r))]
    unknown = sum(1 for r in rows if gap_of(r) is not None and axis.value(r) is None)
    limit = budget / axis.scale if budget else None
    xs = [x for x, _, _ in pts] + [x for x, _ in infeasible] + ([limit] if limit else [])
    plot = Plot(axis.title, axis.label, "GAP (selection videos)", domain(xs, log=True), domain([g for _, g, _ in pts]),
                xlog=True)  # fmt: skip
    if not pts:
        plot.note(f"no trained trials with known {axis.unit}")
    if limit:
        plot.vline(limit, COLORS["budget"], f"{axis.budget} {limit:.3g} {axis.unit}", "budget")
    on_front = _cost_marks(plot, pts, front)
    for x, r in infeasible:
        plot.add(
            f'<g class="infeasible" data-trial="{esc(r.trial_id)}" data-state="infeasible">'
            f"<title>{esc(tip(r))}</title>{cross_path(plot.x(x), plot.y0 - 6, 4, COLORS['infeasible'])}</g>"
        )
    _state_keys(plot, [r for _, _, r in pts], history=False)
    if on_front:
        plot.key("ring", COLORS["pareto"], "Pareto front (complete)")
    if limit:
        plot.key("dash", COLORS["budget"], axis.budget)
    if infeasible:
        plot.key("cross", COLORS["infeasible"], "infeasible (not trained)")
    caption = f"{unknown} trained trial(s) of unknown {axis.unit} not shown." if unknown else ""
    return plot.render(axis.cost), caption


def importance_plot(importances: Mapping[str, float]) -> str:
    """Horizontal bars, most important first; a note when there are none."""
    numeric = [(str(k), num(v)) for k, v in importances.items()]
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
    y_axis, grid = height - bottom, COLORS["grid"]
    for t, label in linear_ticks(0.0, xmax, 5):
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top - 4}" y2="{y_axis}" stroke="{grid}"/>')
        parts.append(f'<text class="tick" x="{px(t):.1f}" y="{y_axis + 16}" text-anchor="middle">{esc(label)}</text>')
    for i, ((name, v), shown) in enumerate(zip(items, names, strict=True)):
        y = top + i * (bar_h + gap_h)
        parts.append(
            f'<g class="bar" data-param="{esc(name)}"><title>{esc(name)}: {v:.3f}</title>'
            f'<rect x="{x0}" y="{y}" width="{px(v) - x0:.1f}" height="{bar_h}" fill="{COLORS["complete"]}"/>'
            f'<text class="tick" x="{x0 - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end">{esc(shown)}</text>'
            f'<text class="tick" x="{px(v) + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}">{v:.3f}</text></g>'
        )
    parts.append(f'<line x1="{x0}" x2="{x0}" y1="{top - 4}" y2="{y_axis}" stroke="{COLORS["axis"]}"/>')
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y_axis}" y2="{y_axis}" stroke="{COLORS["axis"]}"/>')
    parts.append(f'<text class="axis-title" x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                 "importance for GAP (fraction of the total)</text>")  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _step_name(steps: Sequence[str], i: int) -> str:
    return f" ({esc(steps[i])})" if i < len(steps) else ""


def ensemble_plot(curve: Sequence[Sequence[float]], budget_bytes: float | None, best_gap: float | None,
                  steps: Sequence[str] = ()) -> str:  # fmt: skip
    """The selection's GAP after each of its steps (``steps`` names them: a member added, a bag, the
    pruning) against the stored size, with its budget and the best single model for reference."""
    points = []
    for item in curve:
        s, g = (num(item[0]), num(item[1])) if len(item) >= 2 else (None, None)
        if s is not None and g is not None:
            points.append((s / MB, g))
    budget_mb = budget_bytes / MB if budget_bytes and budget_bytes > 0 else None
    xs = [0.0] + [x for x, _ in points] + ([budget_mb] if budget_mb else [])
    ys = [g for _, g in points] + ([best_gap] if best_gap is not None else [])
    lo, hi = domain(xs)
    plot = Plot("Ensemble selection, step by step", "ensemble stored size (MB)", "GAP (selection videos)",
                (0.0 if hi > 0 else lo, hi), domain(ys))  # fmt: skip
    if budget_mb:
        plot.vline(budget_mb, COLORS["budget"], f"ensemble budget {budget_mb:.3g} MB", "budget")
        plot.key("dash", COLORS["budget"], "ensemble budget")
    if best_gap is not None:
        plot.hline(best_gap, COLORS["best"], f"best single model {best_gap:.4f}", "best-single")
        plot.key("dash", COLORS["best"], "best single model")
    if not points:
        plot.note("no ensemble curve recorded")
    else:
        d = "".join(f"{'M' if i == 0 else 'L'}{plot.x(x):.1f},{plot.y(g):.1f}" for i, (x, g) in enumerate(points))
        plot.add(f'<path class="ensemble-line" d="{d}" fill="none" stroke="{COLORS["ensemble"]}" stroke-width="2"/>')
        for i, (x, g) in enumerate(points):
            plot.add(
                f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(g):.1f}" r="4" fill="{COLORS["ensemble"]}" '
                f'data-step="{i + 1}"><title>step {i + 1}{_step_name(steps, i)}: GAP {g:.4f}, {x:.3g} MB</title>'
                "</circle>"
            )
        plot.key("dot", COLORS["ensemble"], "ensemble after each step")
    return plot.render("ensemble")
