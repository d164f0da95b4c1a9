"""The report page: the run's facts, the plots, the ensemble's members and the trials table, as one
self-contained HTML document (inline CSS and SVG, no scripts, no external assets). A long trials table
shows its top trials and folds the rest into a ``<details>``, so that a sweep of hundreds of trials
stays a short page that opens fast."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from yt8m_search.data import fs
from yt8m_search.report.plots import (
    FLOPS,
    SIZE,
    config_items,
    cost_plot,
    ensemble_plot,
    gap_of,
    history_plot,
    importance_plot,
    pareto_ids,
)
from yt8m_search.report.svg import esc, fmt, fmt_gflops, fmt_int, fmt_mb, fmt_value, num, size
from yt8m_search.results import (
    TABLE_STATES,
    BestTrial,
    EnsembleFailure,
    EnsembleSummary,
    RunSummary,
    TrialRow,
    pareto_costs,
)

REPORT_FILE = "report.html"
STATE_ORDER = tuple(s.value for s in TABLE_STATES)

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
table.trials { table-layout: fixed; min-width: 960px; }
table.trials td.id { white-space: normal; overflow-wrap: anywhere; }
table.trials tbody.trial:nth-of-type(even), table.members tbody tr:nth-child(even) { background: #fbfbfb; }
table.trials tbody.trial.best { background: #eef8ee; }
tr.best { font-weight: 600; }
table.trials tr[data-trial] > td { border-bottom: 0; padding-bottom: 1px; }
table.trials tr.config-row > td { padding-top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
td.config { color: #666; font-size: 12px; }
.kv { white-space: nowrap; color: #666; margin-right: 4px; }
.kv b { color: #333; font-weight: 500; }
td.config .reason { color: #8a3b12; word-break: break-word; }
details.more-trials { margin-top: 10px; }
details.more-trials > summary { cursor: pointer; display: inline-block; padding: 5px 12px; border: 1px solid #ccc;
                                border-radius: 6px; background: #fff; color: #1f4f8a; margin-bottom: 8px; }
details.more-trials > summary:hover { background: #f0f5fb; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11.5px; color: #fff; }
.badge.complete { background: #1f77b4; } .badge.stopped { background: #ff7f0e; }
.badge.infeasible { background: #8c8c8c; } .badge.error { background: #d62728; }
.badge.pending { background: #9467bd; }
.table-wrap { overflow-x: auto; }
code { font-size: 12.5px; }
.failed { color: #b00020; }
p.error { color: #b00020; background: #fdecee; border: 1px solid #f3c2c8; border-radius: 6px; padding: 8px 12px;
          word-break: break-word; }
"""


@dataclass(frozen=True)
class _Ensemble:
    """What the page shows of the ensemble step. A failed step has its ``error`` ("Type: message")
    and no members: the page shows the error where the ensemble would be."""

    members: list[str]
    weights: list[int]
    gap: float | None
    selection_gap: float | None
    size_bytes: int | None
    budget_bytes: int | None
    path: str
    curve: list[list[float]]
    flops: int | None = None  # the members' forward FLOPs per video together
    budget_flops: int | None = None
    error: str = ""  # the failed step's cause; empty when it ran
    holdout_gap: float | None = None
    best_single: Mapping[str, Any] | None = None  # {trial_id, gap, holdout_gap}, as shipped
    shipped_best_single: bool = False
    noise: str = ""  # how the selection told gains from noise, in words
    steps: Sequence[str] = ()  # what each point of the curve is

    @classmethod
    def of(cls, ens: EnsembleSummary | EnsembleFailure | None) -> _Ensemble | None:
        if ens is None:
            return None
        if isinstance(ens, EnsembleFailure):
            return cls([], [], None, None, None, None, "", [], error=ens.error or "unknown error")
        noise = (f"{ens.method}, {ens.bags} bag(s); a step kept when its gain beat {fmt(ens.noise_z, '.3g')} "
                 f"paired-bootstrap sds (median sd {fmt(ens.noise_sd, '.2g')}, {ens.noise_rejections} of "
                 f"{ens.noise_tests} steps refused as noise)") if ens.method else ""  # fmt: skip
        return cls([str(m) for m in ens.members], list(ens.weights), ens.gap, ens.selection_gap, ens.size_bytes,
                   ens.budget_bytes, ens.path, list(ens.curve), ens.flops, ens.budget_flops,
                   holdout_gap=ens.holdout_gap, best_single=ens.best_single,
                   shipped_best_single=ens.shipped_best_single, noise=noise, steps=list(ens.steps))  # fmt: skip

    def member_weights(self) -> dict[str, int]:
        """Each member's weight (1 when the summary has none for it)."""
        out = {}
        for i, m in enumerate(self.members):
            w = num(self.weights[i]) if i < len(self.weights) else None
            out[m] = int(w) if w is not None else 1
        return out


# ---------------------------------------------------------------------------------------------
# Tables


def _sorted_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Trained trials by GAP descending (ties in creation order), then the rest in creation order."""
    trained = [(i, g, r) for i, r in enumerate(rows) if (g := gap_of(r)) is not None]
    rest = [r for r in rows if gap_of(r) is None]
    return [r for _, _, r in sorted(trained, key=lambda t: (-t[1], t[0]))] + rest


TRIALS_HEAD = ("#", "trial", "state", "model", "GAP (selection)", "GAP (holdout)", "hit@1", "epochs", "params",
               "size MB", "GFLOPs", "ms / video", "notes")  # fmt: skip
# column widths (%), fixed so that the folded trials line up under the top ones
TRIALS_WIDTHS = (3.5, 9, 8, 12, 8.5, 8.5, 6, 5.5, 9, 5.5, 6, 6, 12.5)
# A long table folds after its first TABLE_TOP trials (best GAP first), so a sweep of hundreds of trials
# stays a short page; up to TABLE_FOLD_OVER trials it is shown whole (folding away a handful helps no one).
TABLE_TOP = 25
TABLE_FOLD_OVER = 40


def _trial_cells(rank: int, r: TrialRow, notes: list[str]) -> list[str]:
    trained = gap_of(r) is not None
    state = r.state.value
    return [
        f'<td class="num">{rank}</td>',
        f'<td class="id">{esc(r.trial_id)}</td>',
        f'<td><span class="badge {esc(state)}">{esc(state)}</span></td>',
        f"<td>{esc(r.model)}</td>",
        f'<td class="num">{fmt(r.gap) if trained else "–"}</td>',
        f'<td class="num">{fmt(r.holdout_gap) if trained else "–"}</td>',
        f'<td class="num">{fmt(r.hit_at_one) if trained else "–"}</td>',
        f'<td class="num">{fmt_int(r.epochs) if trained else "–"}</td>',
        f'<td class="num">{fmt_int(r.params)}</td>',
        f'<td class="num">{fmt_mb(r.size_bytes)}</td>',
        f'<td class="num">{fmt_gflops(r.flops)}</td>',
        f'<td class="num" title="{esc(r.device)}">{fmt(r.latency_ms, ".3g")}</td>',
        f"<td>{esc(', '.join(notes))}</td>",
    ]


def _config_row(r: TrialRow) -> str:
    """The free text under a trial's figures, the full width of the table: its configuration, then why
    it did not train. Beside the figures it made every row many lines tall and pushed the table past
    the page's width."""
    config = " ".join(f'<span class="kv">{esc(k)}=<b>{esc(v)}</b></span>' for k, v in config_items(r))
    reason = f'<div class="reason">{esc(r.reason)}</div>' if r.reason else ""
    span = len(TRIALS_HEAD) - 1
    return f'<tr class="config-row"><td></td><td class="config" colspan="{span}">{config}{reason}</td></tr>'


def _trials_rows(ordered: Sequence[TrialRow], front: set[str], best_id: str | None,
                 members: Mapping[str, int]) -> list[str]:  # fmt: skip
    """One ``<tbody>`` per trial: its figures' row (``data-trial``) and its configuration's row."""
    out = []
    for rank, r in enumerate(ordered, 1):
        tid = r.trial_id
        notes = ["best"] if tid == best_id else []
        if tid in front:
            notes.append("Pareto")
        if tid in members:
            notes.append(f"ensemble ×{members[tid]}")
        best = " best" if tid == best_id else ""
        out.append(f'<tbody class="trial{best}"><tr class="state-{esc(r.state.value)}{best}" data-trial="{esc(tid)}">'
                   + "".join(_trial_cells(rank, r, notes)) + f"</tr>{_config_row(r)}</tbody>")  # fmt: skip
    return out


def _table(cls: str, body: Sequence[str]) -> str:
    cols = "<colgroup>" + "".join(f'<col style="width: {w}%">' for w in TRIALS_WIDTHS) + "</colgroup>"
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in TRIALS_HEAD) + "</tr></thead>"
    return "\n".join([f'<div class="table-wrap"><table class="{cls}">', cols, head, *body, "</table></div>"])


def _shown(body: Sequence[str], best_rank: int | None) -> int:
    """How many of the table's rows show before the fold: every row of a short table, else the top
    rows and always down to the best trial's."""
    if len(body) <= TABLE_FOLD_OVER:
        return len(body)
    return max(TABLE_TOP, best_rank or 0)


def trials_table(rows: Sequence[TrialRow], front: set[str], best_id: str | None, members: Mapping[str, int]) -> str:
    """Every trial, best GAP first, untrained trials last; each row carries ``data-trial``. GAP is the
    best epoch's on the selection videos (which chose it), beside the same epoch's on the holdout. Beside the
    size: the analytic GFLOPs per 300-frame video and the measured latency, ms per video at the
    evaluation batch size (hover it for the device). A long table shows its top rows; the rest, in the
    same order and columns, open from a ``<details>`` below it (no script: the page stays static)."""
    if not rows:
        empty = f'<tbody><tr><td colspan="{len(TRIALS_HEAD)}" class="note">no trials</td></tr></tbody>'
        return _table("trials", [empty])
    ordered = _sorted_rows(rows)
    body = _trials_rows(ordered, front, best_id, members)
    shown = _shown(body, next((i for i, r in enumerate(ordered, 1) if r.trial_id == best_id), None))
    out = [_table("trials", body[:shown])]
    if shown < len(body):
        out.append(
            f'<details class="more-trials"><summary>Show the other {len(body) - shown} trials '
            f"(#{shown + 1}–{len(body)}, same order)</summary>{_table('trials more', body[shown:])}</details>"
        )
    return "\n".join(out)


def members_table(ens: _Ensemble, by_id: Mapping[str, TrialRow]) -> str:
    out = ['<table class="members">',
           "<thead><tr><th>#</th><th>trial</th><th>weight</th><th>model</th><th>GAP</th><th>size MB</th>"
           "<th>GFLOPs</th></tr></thead>", "<tbody>"]  # fmt: skip
    for i, tid in enumerate(ens.members):
        r = by_id.get(tid)
        w = ens.weights[i] if i < len(ens.weights) else ""
        out.append(
            f'<tr data-trial="{esc(tid)}"><td class="num">{i + 1}</td><td class="id">{esc(tid)}</td>'
            f'<td class="num">{esc(w)}</td><td>{esc(r.model if r else "")}</td>'
            f'<td class="num">{fmt(r.gap if r else None)}</td>'
            f'<td class="num">{fmt_mb(r.size_bytes if r else None)}</td>'
            f'<td class="num">{fmt_gflops(r.flops if r else None)}</td></tr>'
        )
    if not ens.members:
        out.append('<tr><td colspan="7" class="note">no members</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The run's facts


def _dl(items: Sequence[tuple[str, str]]) -> str:
    """A definition list from (label, already-escaped HTML) pairs."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _counts_html(summary: RunSummary, rows: Sequence[TrialRow]) -> str:
    counts: dict[str, int] = dict(summary.trials)
    if not counts:
        for r in rows:
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
    ordered = [s for s in STATE_ORDER if s in counts] + [s for s in counts if s not in STATE_ORDER]
    total = sum(int(num(counts[s]) or 0) for s in ordered)
    return '<span class="counts">' + "".join(
        f'<span><span class="badge {esc(s)}">{esc(s)}</span> {esc(counts[s])}</span>' for s in ordered
    ) + f"<span>total {total}</span></span>"  # fmt: skip


def _hparams_text(hparams: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in hparams.items())


def _best_facts(best: BestTrial | None) -> list[tuple[str, str]]:
    if best is None:
        return [("best trial", "none trained yet")]
    facts = [("best trial", (
        f"<b>{esc(best.trial_id)}</b> · {esc(best.model)} · GAP "
        f"{esc(fmt(best.gap))} on selection, <b>{esc(fmt(best.holdout_gap))}</b> on holdout · "
        f"{esc(fmt_int(best.epochs))} epochs · "
        f"{esc(fmt_int(best.params))} params · {esc(fmt_mb(best.size_bytes))} MB · "
        f"{esc(fmt_gflops(best.flops))} GFLOPs · {esc(fmt(best.latency_ms, '.3g'))} ms per video"
        + (f" ({esc(best.device)})" if best.device else "")
    ))]  # fmt: skip
    hp = _hparams_text(best.hparams)
    if hp:
        facts.append(("best hyperparameters", f"<code>{esc(hp)}</code>"))
    if best.checkpoint:
        facts.append(("best checkpoint", f"<code>{esc(best.checkpoint)}</code>"))
    return facts


def _facts(summary: RunSummary, rows: Sequence[TrialRow], ens: _Ensemble | None) -> list[tuple[str, str]]:
    budget = summary.budget
    max_model = size(budget.max_model_bytes)
    facts = [
        ("search space", f"<code>{esc(summary.space)}</code>"),
        ("space hash", f"<code>{esc(summary.space_hash)}</code>"),
        ("yt8m_search version", esc(summary.version)),
        ("run folder", f"<code>{esc(summary.run_dir)}</code>"),
        ("objectives", esc(", ".join(str(o) for o in summary.objectives))),
        ("trials", _counts_html(summary, rows)),
        ("per-model budget", esc(f"{fmt_mb(max_model)} MB" if max_model else "none")
         + (f" (stored as {esc(budget.storage_dtype)})" if budget.storage_dtype else "")),
    ]  # fmt: skip
    if size(budget.ensemble_bytes):
        facts.append(("ensemble budget", esc(f"{fmt_mb(budget.ensemble_bytes)} MB")))
    flops_budgets = (("per-model FLOPs budget", budget.max_flops), ("ensemble FLOPs budget", budget.ensemble_flops))
    for label, flops in flops_budgets:
        if size(flops):
            facts.append((label, esc(f"{fmt_gflops(flops)} GFLOPs per video")))
    facts += _best_facts(summary.best)
    prior = summary.baselines
    if prior:
        facts.append(("class-prior ranking (baseline)", (
            f"GAP {esc(fmt(prior.get('class_prior_selection_gap')))} on selection, "
            f"<b>{esc(fmt(prior.get('class_prior_holdout_gap')))}</b> on holdout: every video ranked by the "
            "classes' training frequencies")))  # fmt: skip
    if ens and ens.error:
        facts.append(("ensemble", f'<b class="failed">failed</b>: {esc(ens.error)}'))
    elif ens:
        facts += _ensemble_facts(ens)
    return facts


def _ensemble_facts(ens: _Ensemble) -> list[tuple[str, str]]:
    """The shipped bundle's GAP on both parts, beside the best single model's as shipped."""
    facts = [("ensemble", (
        f"{len(ens.members)} member(s) · GAP {esc(fmt(ens.gap))} on selection, <b>{esc(fmt(ens.holdout_gap))}</b> "
        f"on holdout (the selection's own estimate {esc(fmt(ens.selection_gap))}) · "
        f"{esc(fmt_mb(ens.size_bytes))} MB · {esc(fmt_gflops(ens.flops))} GFLOPs"
        + (" · <b>the best single model alone</b>: the ensemble scored below it" if ens.shipped_best_single else "")
    ))]  # fmt: skip
    single = ens.best_single or {}
    if single.get("trial_id"):
        facts.append(("best single model, as shipped", (
            f"{esc(single['trial_id'])} · GAP {esc(fmt(single.get('gap')))} on selection, "
            f"<b>{esc(fmt(single.get('holdout_gap')))}</b> on holdout (its stored weights)")))  # fmt: skip
    if ens.noise:
        facts.append(("ensemble selection", esc(ens.noise)))
    return facts


# ---------------------------------------------------------------------------------------------
# The page


def _cost_sections(rows: Sequence[TrialRow], summary: RunSummary) -> list[str]:
    """GAP against stored size, and against forward GFLOPs when the trials have them (a run from
    before they were recorded has none), each with its own Pareto front."""
    axes = [(SIZE, summary.budget.max_model_bytes)]
    if "flops" in summary.objectives or any(r.flops > 0 for r in rows):
        axes.append((FLOPS, summary.budget.max_flops))
    out = []
    for axis, budget in axes:
        svg, caption = cost_plot(rows, axis, size(budget))
        out += [f"<h2>{esc(axis.title)}</h2>", f'<section class="plot-box">{svg}'
                + (f'<p class="caption">{esc(caption)}</p>' if caption else "") + "</section>"]
    return out


def _plot_sections(rows: Sequence[TrialRow], summary: RunSummary, importances: Mapping[str, float]) -> list[str]:
    return [
        "<h2>Optimisation history</h2>",
        f'<section class="plot-box">{history_plot(rows)}'
        '<p class="caption">GAP is each trial\'s best GAP on the selection videos; stopped trials were cut short '
        'by ASHA '
        "(fewer epochs). Infeasible, failed and pending trials have no GAP.</p></section>",
        *_cost_sections(rows, summary),
        "<h2>Parameter importance</h2>",
        f'<section class="plot-box">{importance_plot(importances)}</section>',
    ]


def _ensemble_section(ens: _Ensemble, summary: RunSummary, rows: Sequence[TrialRow]) -> list[str]:
    if ens.error:
        return [
            "<h2>Ensemble</h2>",
            f'<p class="error ensemble-error"><b>The ensemble step failed:</b> {esc(ens.error)}</p>',
            '<p class="note">No ensemble was selected. Once the cause is fixed, run the step again with '
            "<code>python -m yt8m_search.ensemble RUN_DIR</code> (it updates summary.json, not this page).</p>",
        ]
    budget_bytes = size(ens.budget_bytes) or size(summary.budget.ensemble_bytes)
    shipped = num((ens.best_single or {}).get("gap"))  # like for like: its stored weights, the same videos
    best_gap = shipped if shipped is not None else num(summary.best.gap) if summary.best else None
    return [
        "<h2>Ensemble</h2>",
        f'<section class="plot-box">{ensemble_plot(ens.curve, budget_bytes, best_gap, ens.steps)}'
        + (f'<p class="caption">bundle: <code>{esc(ens.path)}</code></p>' if ens.path else "")
        + "</section>",
        f'<div class="table-wrap">{members_table(ens, {r.trial_id: r for r in rows})}</div>',
    ]


def _document(title: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body><main>",
        *body,
        "</main></body>",
        "</html>",
        "",
    ])  # fmt: skip


def render_report(rows: Sequence[TrialRow], summary: RunSummary, importances: Mapping[str, float]) -> str:
    """The report page as HTML text: facts, plots, ensemble (when the run has an ensemble entry) and
    the trials table. ``rows`` in any order: the page shows them in creation order."""
    rows = sorted(rows, key=lambda r: r.number)
    front = set(pareto_ids(rows, pareto_costs(summary.objectives)))  # the search's own front
    ens = _Ensemble.of(summary.ensemble)
    best_id = summary.best.trial_id if summary.best else None
    title = f"Sweep report — {summary.space or 'yt8m_search'}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(summary.run_dir)}</p>',
        _dl(_facts(summary, rows, ens)),
        *_plot_sections(rows, summary, importances or {}),
        *(_ensemble_section(ens, summary, rows) if ens else []),
        "<h2>Trials</h2>",
        '<p class="caption">Best GAP on the selection videos first, trials without a GAP last. Under each trial: '
        'its configuration and, in red, why it did not train.</p>',
        trials_table(rows, front, best_id, ens.member_weights() if ens else {}),
    ]
    return _document(title, body)


def write_report(run_dir: str, rows: Sequence[TrialRow], summary: RunSummary, importances: Mapping[str, float]) -> str:
    """Render the report and write it all-or-nothing to ``<run_dir>/report.html``; returns that path."""
    text = render_report(rows, summary, importances)
    path = fs.join(run_dir, REPORT_FILE)
    with fs.atomic_output(path) as f:
        f.write(text.encode("utf-8"))
    return path
