"""Tests of yt8m_search.report: the self-contained HTML sweep report (structure, Pareto marks, escaping,
degenerate inputs, atomic write)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from html.parser import HTMLParser

import pytest

from yt8m_search.report import pareto_ids, render_report, write_report
from yt8m_search.results import (
    BestTrial,
    BudgetSummary,
    DataSummary,
    EnsembleFailure,
    EnsembleSummary,
    RunSummary,
    TrialRow,
    TrialState,
)

NAN = math.nan
EVIL_ID = "trial_<script>alert(1)</script>"
EVIL_REASON = "boom <script>alert('x')</script> & more"
VOID = {"meta", "br", "img", "link", "input", "hr", "area", "base", "col", "embed", "source", "track", "wbr"}


class Page(HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.decl: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.decl = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self, name: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.starts if t == name and all(a.get(k) == v for k, v in attrs.items())]


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    assert page.errors == []
    assert page.stack == []
    return page


def row(tid: str, state: str, gap: float, size: int, *, model: str = "nextvlad", epochs: int = 10,
        reason: str = "", number: int = 0, **config: object) -> TrialRow:  # fmt: skip
    trained = state in ("complete", "stopped")
    return TrialRow(
        number=number,
        trial_id=tid,
        state=TrialState(state),
        model=model,
        hparams={k: v for k, v in config.items() if v is not None},
        config={
            "family": model,
            "lr": config.get("lr", 1e-3),
            "cluster_size": config.get("cluster_size", NAN if model != "nextvlad" else 64),
            "gating": config.get("gating"),
        },
        gap=gap if trained else NAN,
        gap_last=gap - 0.001 if trained else NAN,
        hit_at_one=gap + 0.05 if trained else NAN,
        perr=NAN,
        map=NAN,
        epochs=epochs if trained else 0,
        best_epoch=epochs - 1 if trained else 0,
        params=size // 2 if size > 0 else 0,
        size_bytes=size,
        samples_per_s=1234.5 if trained else NAN,
        checkpoint=f"/runs/x/trials/{tid}/best" if trained else "",
        predictions=f"/runs/x/trials/{tid}/best/predictions.npy" if trained else "",
        reason=reason,
    )


def numbered(rows: list[TrialRow]) -> list[TrialRow]:
    """The rows with their creation numbers 0..n-1 in list order."""
    return [dataclasses.replace(r, number=i) for i, r in enumerate(rows)]


MB = 1_000_000


def small_rows() -> list[TrialRow]:
    """A small sweep with every state, a hostile id and reason, NaN GAPs and unknown sizes."""
    return numbered([
        row("t00", "complete", 0.80, 40 * MB, lr=3e-4),
        row("t01", "stopped", 0.60, 10 * MB, epochs=2),
        row("t02", "infeasible", NAN, 900 * MB, reason="size 900 MB over the 200 MB budget"),
        row("t03", "complete", 0.78, 20 * MB, model="netvlad", gating=True),
        row("t04", "complete", 0.76, 30 * MB),  # dominated by t03 (higher GAP, smaller)
        row("t05", "complete", 0.70, 5 * MB, model="netvlad"),
        row("t06", "stopped", 0.85, 3 * MB, epochs=1),  # best GAP but stopped: never on the front
        row("t07", "error", NAN, 50 * MB, reason=EVIL_REASON),
        row(EVIL_ID, "complete", 0.70, 8 * MB),  # dominated by t05 (same GAP, smaller)
        row("t09", "pending", NAN, -1),
        row("t10", "complete", 0.82, 120 * MB, model="nonlocal_netvlad", lr="cosine"),
        row("t11", "complete", NAN, 15 * MB),  # NaN GAP: plotted nowhere, not on the front
        row("t12", "infeasible", NAN, -1, reason="unknown size"),
    ])  # fmt: skip


@pytest.fixture()
def rows() -> list[TrialRow]:
    return small_rows()


def ensemble_summary(**values: object) -> EnsembleSummary:
    """An ensemble entry: the given fields over empty defaults."""
    fields: dict[str, object] = dict(
        members=[], weights=[], models=[], member_gaps=[], member_bytes=[], gap=NAN, selection_gap=NAN,
        best_single={}, hit_at_one=NAN, perr=NAN, map=None, validation_videos=0, size_bytes=0, file_bytes=0,
        budget_bytes=0, storage_dtype="float16", path="", format_version=1, strategy="greedy", curve=[], steps=[],
        local_moves=[], candidates=0, evaluations=0, selection_seconds=0.0, seconds=0.0, notes=[],
    )  # fmt: skip
    fields.update(values)
    return EnsembleSummary(**fields)  # type: ignore[arg-type]


def bare_summary(**values: object) -> RunSummary:
    """A summary with nothing in it but what is given."""
    fields: dict[str, object] = dict(
        space="", space_hash="", version="", run_dir="", objectives=[], trials={},
        budget=BudgetSummary(max_model_bytes=None, ensemble_bytes=0, storage_dtype=""),
        data=DataSummary(train="", validation=""), best=None, pareto=[],
    )  # fmt: skip
    fields.update(values)
    return RunSummary(**fields)  # type: ignore[arg-type]


def summary_for(rows: list[TrialRow], *, ensemble: bool = True) -> RunSummary:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    return RunSummary(
        space="search_spaces/smoke.yaml",
        space_hash="abc123",
        version="0.1.0",
        run_dir="/runs/x",
        objectives=["gap", "size"],
        trials=counts,
        budget=BudgetSummary(max_model_bytes=200 * MB, ensemble_bytes=100 * MB, storage_dtype="float16"),
        data=DataSummary(train="/data/train", validation="/data/validation"),
        best=BestTrial(trial_id="t10", model="nonlocal_netvlad", hparams={"lr": 1e-3}, gap=0.82, epochs=10,
                       params=60 * MB, size_bytes=120 * MB, checkpoint="/runs/x/t10/best",
                       predictions="/runs/x/t10/p.npy", config={"lr": 1e-3}),
        pareto=["t00", "t03", "t05", "t10"],
        ensemble=ensemble_summary(
            members=["t00", "t03", "t00"], weights=[2, 1, 0], gap=0.83, selection_gap=0.84, size_bytes=60 * MB,
            budget_bytes=100 * MB, path="/runs/x/ensemble", curve=[[40 * MB, 0.80], [60 * MB, 0.83], [60 * MB, 0.835]],
        ) if ensemble else None,
    )  # fmt: skip


IMPORTANCES = {"lr": 0.6, "cluster_size": 0.3, "gating": 0.1}

SWEEP_MODELS = ("nextvlad", "mix_nextvlad", "netvlad", "nonlocal_netvlad")
# a sweep's mix: mostly trials cut short by ASHA, a few over budget, failed or still running
SWEEP_STATES = ("stopped",) * 11 + ("complete",) * 5 + ("error", "pending")
LONG_ERROR = ("RuntimeError: CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 79.11 GiB total capacity; "
              "74.02 GiB already allocated; 1.12 GiB free; 76.31 GiB reserved in total by PyTorch)")  # fmt: skip


def sweep_trial(rng: random.Random, number: int) -> TrialRow:
    """One trial of a seeded sweep with a real sweep's dozen set parameters, GFLOPs and latency."""
    model = rng.choice(SWEEP_MODELS)
    clusters, hidden = rng.choice((8, 16, 32, 64, 128)), rng.choice((256, 512, 1024, 2048))
    stored = int(clusters * hidden * rng.uniform(500, 1300))
    state = "infeasible" if stored > 200 * MB else rng.choice(SWEEP_STATES)
    gap = rng.uniform(0.55, 0.86) if state == "complete" else rng.uniform(0.05, 0.80)
    reason = {"infeasible": f"{stored:,} bytes > budget 200,000,000", "error": LONG_ERROR}.get(state, "")
    base = row(f"{rng.getrandbits(32):08x}", state, gap, stored, model=model, epochs=rng.randint(1, 10),
               reason=reason, number=number)  # fmt: skip
    config = {"family": model, "groups": rng.choice((2, 4, 8)), "clusters": clusters, "expansion": 2,
              "hidden_size": hidden, "gating_reduction": 4, "dropout": rng.uniform(0.1, 0.6),
              "classifier": rng.choice(("logistic", "moe")), "learning_rate": 10 ** rng.uniform(-4.5, -2),
              "lr_decay": rng.uniform(0.7, 0.95), "batch_size": rng.choice((80, 160, 320)),
              "clip_norm": rng.uniform(0.5, 5.0), "temperature": rng.uniform(1, 4)}  # fmt: skip
    return dataclasses.replace(
        base, config=config, hparams={k: v for k, v in config.items() if k != "family"},
        flops=int(stored * rng.uniform(200, 400)), latency_ms=rng.uniform(0.2, 6.0),
        device="cuda (NVIDIA H200)", holdout_gap=gap - 0.01 if base.trained else NAN,
    )  # fmt: skip


def sweep(n: int, seed: int = 0) -> tuple[list[TrialRow], RunSummary]:
    """A seeded ``n``-trial sweep's rows and summary (its best trial the top complete one), no sweep run."""
    rng = random.Random(seed)
    rows = [sweep_trial(rng, i) for i in range(n)]
    done = [r for r in rows if r.state is TrialState.COMPLETE]
    top = max(done, key=lambda r: r.gap) if done else None
    summary = summary_for(rows)
    best = None if top is None else dataclasses.replace(
        summary.best, trial_id=top.trial_id, model=top.model, hparams=top.hparams, gap=top.gap,
        size_bytes=top.size_bytes, config=top.config)  # fmt: skip
    members = [r.trial_id for r in done[:3]]
    ensemble = dataclasses.replace(summary.ensemble, members=members, weights=[1] * len(members))
    return rows, dataclasses.replace(summary, best=best, ensemble=ensemble)


def brute_front(rows: list[TrialRow]) -> set[str]:
    done = [r for r in rows if r.state == "complete" and math.isfinite(r.gap) and r.size_bytes > 0]
    return {
        r.trial_id for r in done
        if not any(o.gap >= r.gap and o.size_bytes <= r.size_bytes
                   and (o.gap > r.gap or o.size_bytes < r.size_bytes) for o in done)
    }  # fmt: skip


def test_full_report(rows: list[TrialRow]) -> None:
    text = render_report(rows, summary_for(rows), IMPORTANCES)
    assert text.startswith("<!DOCTYPE html>")
    page = parse(text)
    assert page.decl is not None and page.decl.lower() == "doctype html"
    assert len(page.tags("svg")) == 4
    assert text.count("<svg") == 4 and text.count("</svg>") == 4
    assert len(page.tags("table")) == 2  # ensemble members + trials
    # Self-contained: no scripts, no external references.
    assert not page.tags("script") and not page.tags("link") and not page.tags("img")
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    # Every trial is listed in the trials table.
    table_ids = [a["data-trial"] for a in page.tags("tr") if a.get("data-trial")]
    for r in rows:
        assert r.trial_id in table_ids
    # Escaping: the hostile id and reason only appear escaped.
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert EVIL_ID in "".join(page.text)
    assert EVIL_REASON in "".join(page.text)


def test_pareto_points_are_the_non_dominated_complete_trials(rows: list[TrialRow]) -> None:
    page = parse(render_report(rows, summary_for(rows), IMPORTANCES))
    marked = {a["data-trial"] for a in page.tags("circle", **{"data-pareto": "1"})}
    expected = brute_front(rows)
    assert expected == {"t00", "t03", "t05", "t10"}
    assert marked == expected == set(pareto_ids(rows))
    unmarked = {a["data-trial"] for a in page.tags("circle", **{"data-pareto": "0"})}
    # Every other trained trial with a finite GAP and known size is plotted, unmarked.
    assert unmarked == {"t01", "t04", "t06", EVIL_ID}
    assert all(a["data-state"] == "complete" for a in page.tags("circle", **{"data-pareto": "1"}))
    # The infeasible trial of known size is marked along the x axis; the unknown-size one is not.
    assert {a["data-trial"] for a in page.tags("g", **{"data-state": "infeasible"})} == {"t02"}
    # Budget line present in the size plot (and in the ensemble plot).
    assert len(page.tags("line", **{"class": "budget"})) == 2


def test_history_and_table_order(rows: list[TrialRow]) -> None:
    page = parse(render_report(rows, summary_for(rows), IMPORTANCES))
    history = [a for a in page.tags("circle") if "data-pareto" not in a and a.get("data-trial")]
    # The history plot has one point per trained trial with a finite GAP.
    assert sorted(a["data-trial"] for a in history) == sorted(
        r.trial_id for r in rows if r.state in ("complete", "stopped") and math.isfinite(r.gap)
    )
    assert len(page.tags("path", **{"class": "running-best"})) == 1
    order = [a["data-trial"] for a in page.tags("tr") if a.get("data-trial") and "class" in a]
    assert order[:8] == ["t06", "t10", "t00", "t03", "t04", "t05", EVIL_ID, "t01"]
    # Untrained (and NaN-GAP) trials last, in trial order.
    assert order[8:] == ["t02", "t07", "t09", "t11", "t12"]
    bars = [a["data-param"] for a in page.tags("g", **{"class": "bar"})]
    assert bars == ["lr", "cluster_size", "gating"]


def test_no_ensemble_and_no_importances(rows: list[TrialRow]) -> None:
    text = render_report(rows, summary_for(rows, ensemble=False), {})
    page = parse(text)
    assert len(page.tags("svg")) == 2
    assert "not enough fully trained trials" in text.lower()
    assert len(page.tags("table")) == 1


@pytest.mark.parametrize(
    "case",
    ["empty", "only_infeasible", "one_trial", "nan_gaps", "all_equal", "single_stopped", "missing_keys"],
)
def test_degenerate_inputs(case: str) -> None:
    summary = bare_summary(space="s.yaml", space_hash="h", version="0", run_dir="r", objectives=["gap"],
                           budget=BudgetSummary(max_model_bytes=None, ensemble_bytes=0, storage_dtype="float32"))
    if case == "empty":
        rows: list[TrialRow] = []
    elif case == "only_infeasible":
        rows = numbered([row("a", "infeasible", NAN, 5 * MB, reason="too big"), row("b", "infeasible", NAN, -1)])
        summary = dataclasses.replace(summary, budget=dataclasses.replace(summary.budget, max_model_bytes=1 * MB))
    elif case == "one_trial":
        rows = [row("a", "complete", 0.5, 2 * MB)]
        best = BestTrial(trial_id="a", model="nextvlad", hparams={}, gap=0.5, epochs=10, params=1, size_bytes=2 * MB,
                         checkpoint="", predictions="", config={})  # fmt: skip
        summary = dataclasses.replace(summary, best=best, ensemble=ensemble_summary(
            members=["a"], weights=[1], gap=0.5, selection_gap=0.5, size_bytes=2 * MB, budget_bytes=2 * MB,
            curve=[[2 * MB, 0.5]]))  # fmt: skip
    elif case == "nan_gaps":  # b's size unknown (-1), c's zero
        rows = numbered([row("a", "complete", NAN, 2 * MB), row("b", "stopped", NAN, -1), row("c", "error", NAN, 0)])
        summary = dataclasses.replace(summary, ensemble=ensemble_summary(gap=NAN, curve=[[NAN, NAN]]))
    elif case == "all_equal":
        rows = numbered([row(f"t{i}", "complete", 0.0, 3 * MB) for i in range(4)])
        summary = dataclasses.replace(summary, budget=dataclasses.replace(summary.budget, max_model_bytes=3 * MB))
    elif case == "single_stopped":
        rows = [row("a", "stopped", 1.0, 7, epochs=1)]
    else:  # a summary and rows with nothing set: no counts, no budget, no model, no metrics
        rows = numbered([dataclasses.replace(row("a", "complete", 0.4, -1, model=""), config={}, params=0),
                         dataclasses.replace(row("b", "pending", NAN, -1, model=""), config={})])
        summary = bare_summary()
    text = render_report(rows, summary, {"x": NAN} if case == "nan_gaps" else {})
    page = parse(text)
    assert text.startswith("<!DOCTYPE html>")
    assert len(page.tags("svg")) == (3 if summary.ensemble is not None else 2)
    assert "nan" not in "".join(page.text).lower().replace("nonlocal", "")
    for r in rows:
        assert r.trial_id in [a.get("data-trial") for a in page.tags("tr")]
    # No coordinate is NaN or infinite.
    for _, attrs in page.starts:
        for k in ("cx", "cy", "x", "y", "x1", "x2", "y1", "y2", "width", "d"):
            v = attrs.get(k) or ""
            assert "nan" not in v.lower() and "inf" not in v.lower(), (k, v)
    if case == "all_equal":
        assert {a["data-trial"] for a in page.tags("circle", **{"data-pareto": "1"})} == {f"t{i}" for i in range(4)}


def test_write_report(tmp_path, rows: list[TrialRow]) -> None:
    run_dir = tmp_path / "run"
    path = write_report(str(run_dir), rows, summary_for(rows), IMPORTANCES)
    assert path == os.path.join(str(run_dir), "report.html")
    assert os.listdir(run_dir) == ["report.html"]  # no temp file left behind
    text = open(path, encoding="utf-8").read()
    assert text == render_report(rows, summary_for(rows), IMPORTANCES)
    # Overwrites in place.
    write_report(str(run_dir), [], summary_for([], ensemble=False), {})
    assert os.listdir(run_dir) == ["report.html"]
    assert "no trials" in open(path, encoding="utf-8").read()


def test_page_follows_creation_order_whatever_the_input_order(rows: list[TrialRow]) -> None:
    """The history's x axis and the table's ties are creation order (``number``), not list order."""
    shuffled = rows[::-1]
    in_order = render_report(rows, summary_for(rows), IMPORTANCES)
    assert render_report(shuffled, summary_for(rows), IMPORTANCES) == in_order
    page = parse(render_report(shuffled, summary_for(rows), IMPORTANCES))
    history = [a["data-trial"] for a in page.tags("circle") if "data-pareto" not in a and a.get("data-trial")]
    assert history == [r.trial_id for r in rows if r.trained and math.isfinite(r.gap)]


def test_a_failed_ensemble_step_shows_its_error_where_the_ensemble_would_be(rows: list[TrialRow]) -> None:
    error = "RuntimeError: boom <script>alert('x')</script> & more"
    summary = dataclasses.replace(summary_for(rows), ensemble=EnsembleFailure(error))
    text = render_report(rows, summary, IMPORTANCES)
    page = parse(text)
    assert len(page.tags("svg")) == 3 and len(page.tags("table")) == 1  # no ensemble plot, no members table
    assert not page.tags("circle", **{"data-step": "1"}) and "member(s)" not in text
    shown = "".join(page.text)
    assert f"failed: {error}" in shown and f"The ensemble step failed: {error}" in shown
    assert "<script>" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert len(page.tags("p", **{"class": "error ensemble-error"})) == 1


def test_the_report_labels_selection_and_holdout_figures_beside_the_baseline(rows: list[TrialRow]) -> None:
    summary = summary_for(rows)
    best = dataclasses.replace(summary.best, gap=0.31, holdout_gap=0.27)
    ensemble = ensemble_summary(
        members=["t00", "t03"], weights=[2, 1], gap=0.33, holdout_gap=0.29, selection_gap=0.335,
        best_single={"trial_id": "t10", "gap": 0.3099, "holdout_gap": 0.2701}, method="bagged", bags=10,
        noise_z=1.28, noise_sd=0.004, noise_tests=5, noise_rejections=2, curve=[[1 * MB, 0.31], [2 * MB, 0.33]],
        steps=["bag 1", "bag 2"])  # fmt: skip
    summary = dataclasses.replace(summary, best=best, ensemble=ensemble,
                                  baselines={"class_prior_selection_gap": 0.0395, "class_prior_holdout_gap": 0.0353})
    text = render_report(rows, summary, {})
    assert "0.3100 on selection, <b>0.2700</b> on holdout" in text  # the best trial
    assert "0.3300 on selection, <b>0.2900</b> on holdout" in text  # the shipped bundle
    assert "t10 · GAP 0.3099 on selection, <b>0.2701</b> on holdout (its stored weights)" in text
    assert "GAP 0.0395 on selection, <b>0.0353</b> on holdout" in text  # the class-prior ranking
    assert "2 of 5 steps refused as noise" in text and "step 2 (bag 2)" in text
    assert "<th>GAP (selection)</th><th>GAP (holdout)</th>" in text
    shipped_alone = dataclasses.replace(ensemble, shipped_best_single=True, members=["t10"], weights=[1])
    assert "the best single model alone" in render_report(rows, dataclasses.replace(summary, ensemble=shipped_alone),
                                                          {})  # fmt: skip


def _folded(text: str) -> tuple[list[str], list[str]]:
    """The trial ids of the trials table above its fold and those in the fold, in page order."""
    top, _, rest = text.partition('<details class="more-trials">')
    ids = re.compile(r'<tr class="state-[a-z]+(?: best)?" data-trial="([^"]+)"')
    return ids.findall(top[top.index('<table class="trials"'):]), ids.findall(rest)


def test_a_long_trials_table_shows_its_top_trials_and_folds_the_rest() -> None:
    rows, summary = sweep(256)
    text = render_report(rows, summary, IMPORTANCES)
    parse(text)
    top, rest = _folded(text)
    assert (len(top), len(rest)) == (25, 231)
    by_gap = sorted((r for r in rows if r.trained and math.isfinite(r.gap)), key=lambda r: -r.gap)
    assert top == [r.trial_id for r in by_gap[:25]]
    assert sorted(top + rest) == sorted(r.trial_id for r in rows) and summary.best.trial_id in top
    assert "Show the other 231 trials (#26–256, same order)</summary>" in text
    ranks = [int(n) for n in re.findall(r'<tr class="state-[^"]+" data-trial="[^"]+"><td class="num">(\d+)</td>', text)]
    assert ranks == list(range(1, 257))


def test_the_fold_never_hides_the_best_trial_and_a_short_table_never_folds(rows: list[TrialRow]) -> None:
    many, summary = sweep(256)
    thirtieth = sorted((r for r in many if r.trained), key=lambda r: -r.gap)[29]
    best = dataclasses.replace(summary.best, trial_id=thirtieth.trial_id)
    top, rest = _folded(render_report(many, dataclasses.replace(summary, best=best), IMPORTANCES))
    assert (len(top), len(rest), top[-1]) == (30, 226, thirtieth.trial_id)
    forty, summary = sweep(40)
    for short, short_summary in ((rows, summary_for(rows)), (forty, summary)):
        text = render_report(short, short_summary, IMPORTANCES)
        assert "<details" not in text and len(_folded(text)[0]) == len(short)


def test_the_page_grows_by_a_few_kilobytes_a_trial() -> None:
    """Each trial costs its table rows and one dot (with its hover text) per plot: 256 trials stay far
    under 5 MB, and a trial's long reason is written whole once, in the table, not into every plot."""
    sizes = {n: len(render_report(*sweep(n), IMPORTANCES).encode()) for n in (64, 256)}
    assert sizes[256] < 1_500_000 and (sizes[256] - sizes[64]) / 192 < 4_000, sizes
    long_reason = "ValueError: " + "x" * 20_000
    rows, summary = sweep(64)
    over = next(i for i, r in enumerate(rows) if r.state is TrialState.INFEASIBLE)
    rows[over] = dataclasses.replace(rows[over], reason=long_reason)
    text = render_report(rows, summary, IMPORTANCES)
    assert text.count(long_reason) == 1 and text.count(long_reason[:199] + "…") == 2  # size and GFLOPs plots


def test_dots_shrink_when_a_plot_holds_many_trials(rows: list[TrialRow]) -> None:
    def radii(text: str) -> set[str]:
        return {a["r"] for a in parse(text).tags("circle") if a.get("data-trial") and a.get("data-pareto") != "1"}

    assert radii(render_report(rows, summary_for(rows), IMPORTANCES)) == {"4.5"}
    assert radii(render_report(*sweep(256), IMPORTANCES)) == {"3.0"}
