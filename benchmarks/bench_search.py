"""Search efficiency: TPE + ASHA against random search at equal trial-epochs, over several seeds.

    .venv/bin/python benchmarks/bench_search.py [key.path=value ...] [--seeds 0 1 2 3 4] [--trials 8]
        [--plot benchmarks/search_efficiency.svg] [--space search_spaces/smoke.yaml] [--cpus 2]

Goal (issue #15): TPE + ASHA reaches random search's final best GAP with at most 50% of random's
trial-epochs, as the median over the seeds.

For each seed, two sweeps of ``search_spaces/smoke.yaml`` (its data: 1200 training and 400 validation
synthetic videos, 3862 classes; ``key.path=value`` overrides apply to both) run through
``yt8m_search.run.main`` in one ``ray.init``, two trials at a time:

  tpe+asha   the space's TPE sampler and its ``search.asha`` rungs (``SignalHalving``), ``--trials``
             trials; the trial-epochs it spends are the seed's budget
  random     ``search.sampler=random search.asha=null``: as many full trials as the budget holds, rounded
             up, and its curve cut at the budget (configurations over the per-model budget cost nothing
             in either: the searcher rejects them before they become Tune trials)

Every reported epoch of every trial (Tune's ``result.json`` rows, in wall-clock order) is one
trial-epoch spent. Per seed: the budget, each method's best selection GAP within the budget, the
holdout GAP of the epoch that reached it (``holdout_gap_best``: the holdout videos chose nothing), the
trial-epochs TPE + ASHA needed to reach random's best as a share of the budget, and the trials ASHA
stopped; then the median and the min–max over the seeds. ``--plot`` writes the median best-so-far
GAP against the share of the budget, with the min–max band, as SVG (after every seed, so an
interrupted run leaves the seeds it finished). The holdout figure is read from the result rows, not
``summary.json``: random's sweep runs past the budget, and its summary's best may lie beyond the cut
(within the budget the two are the same epoch's).

The scale: 3 epochs per trial (so ASHA's rungs sit at epochs 1 and 2), 12 trials per seed, which are
the space's 3 random startup trials and 9 that TPE proposes: about 3 minutes a seed on 2 quiet cores,
15 for five. The README reports two spaces: the smoke space as it is, whose learning rate was narrowed
by hand to the band where 3 epochs learn, and the same space with the learning rate over three decades
(``'trial.learning_rate={logfloat: [1.0e-4, 1.0e-1]}'``), as a user who has not tuned it would search.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray's processes inherit it: one thread each on a small machine

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import median  # noqa: E402

from yt8m_search import config  # noqa: E402
from yt8m_search.report.svg import Plot, esc  # noqa: E402
from yt8m_search.search.rungs import milestones  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
PLOT = ROOT / "benchmarks" / "search_efficiency.svg"
GOAL = 0.5  # of random's trial-epochs
METHODS = {"tpe+asha": "#1f77b4", "random": "#ff7f0e"}
GRID = 100  # points of the plotted curves over the budget


@dataclass(frozen=True)
class Epoch:
    """One reported epoch of one trial: one trial-epoch spent."""

    timestamp: float
    trial: str
    epoch: int
    gap: float
    holdout_gap_best: float  # the trial's best epoch so far, on the holdout videos


@dataclass(frozen=True)
class Sweep:
    """One sweep's reported epochs in wall-clock order, its Tune trial count and its wall time."""

    epochs: list[Epoch]
    trials: int
    seconds: float

    def best(self, spent: int) -> Epoch | None:
        """The epoch with the best selection GAP among the first ``spent`` (None before any)."""
        return max(self.epochs[:spent], key=lambda e: e.gap, default=None)

    def reached(self, gap: float) -> int | None:
        """The trial-epochs spent when the best GAP first reached ``gap`` (None: never)."""
        return next((i for i, e in enumerate(self.epochs, start=1) if e.gap >= gap), None)

    def stopped(self, epochs: int) -> dict[int, int]:
        """Trials that ended before ``epochs`` (stopped at a rung), counted by their last epoch."""
        last: dict[str, int] = {}
        for e in self.epochs:
            last[e.trial] = max(last.get(e.trial, 0), e.epoch)
        out: dict[int, int] = {}
        for epoch in last.values():
            if epoch < epochs:
                out[epoch] = out.get(epoch, 0) + 1
        return dict(sorted(out.items()))


def read_epochs(run_dir: Path) -> list[Epoch]:
    """Every trial's reported epochs from Tune's result files, in wall-clock order. Tune's timestamps
    are whole seconds; ties (two trials side by side) go by trial and epoch, never by GAP, which would
    favour neither method but would bias the curve."""
    out = []
    for log in (run_dir / "tune").glob("*/result.json"):
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                holdout = r.get("holdout_gap_best")
                out.append(Epoch(float(r["timestamp"]), str(r["trial_id"]), int(r["epoch"]), float(r["gap"]),
                                 math.nan if holdout is None else float(holdout)))
    return sorted(out, key=lambda e: (e.timestamp, e.trial, e.epoch))


def run_sweep(space: Path, overrides: Sequence[str], out: Path) -> Sweep:
    from yt8m_search import run

    start = time.perf_counter()
    code = run.main([str(space), *overrides, "--output", str(out)])
    if code != 0:
        raise SystemExit(f"the sweep in {out} failed with exit code {code} (its run.log says why)")
    epochs = read_epochs(out)
    return Sweep(epochs, len({e.trial for e in epochs}), time.perf_counter() - start)


@dataclass(frozen=True)
class SeedResult:
    """One seed's comparison at the budget TPE + ASHA spent."""

    seed: int
    budget: int
    tpe: Sweep
    random: Sweep
    stopped: dict[int, int]  # ASHA's stops: last epoch -> trials

    def best(self, method: str) -> Epoch:
        sweep = self.tpe if method == "tpe+asha" else self.random
        found = sweep.best(self.budget)
        assert found is not None  # the budget is at least one epoch of each
        return found

    @property
    def share(self) -> float:
        """Trial-epochs TPE + ASHA needed to reach random's best, as a share of the budget (inf: never)."""
        spent = self.tpe.reached(self.best("random").gap)
        return math.inf if spent is None else spent / self.budget

    def curve(self, method: str) -> list[float]:
        """The best GAP so far at each of GRID equal shares of the budget (NaN before the first epoch)."""
        sweep = self.tpe if method == "tpe+asha" else self.random
        points = []
        for k in range(1, GRID + 1):
            best = sweep.best(math.floor(self.budget * k / GRID))
            points.append(math.nan if best is None else best.gap)
        return points


def compare(seed: int, trials: int, epochs: int, space: Path, common: Sequence[str], out: Path) -> SeedResult:
    """The seed's two sweeps: TPE + ASHA first (its spend is the budget), then random search."""
    seeded = [*common, f"search.seed={seed}"]
    tpe = run_sweep(space, [*seeded, f"search.num_samples={trials}"], out / f"tpe-{seed}")
    budget = len(tpe.epochs)
    # every random trial runs all its epochs: enough of them to spend the budget, the curve cut there
    random_trials = -(-budget // epochs)
    random = run_sweep(space, [*seeded, "search.sampler=random", "search.asha=null",
                               f"search.num_samples={random_trials}"], out / f"random-{seed}")
    if len(random.epochs) < budget:  # a failed trial: the comparison would not be at equal trial-epochs
        raise SystemExit(f"seed {seed}: random search spent {len(random.epochs)} of the {budget} trial-epochs")
    return SeedResult(seed, budget, tpe, random, tpe.stopped(epochs))


# ---------------------------------------------------------------------------------------------
# The table


def fmt_share(share: float) -> str:
    return "never" if math.isinf(share) else f"{share:.0%}"


def fmt_stopped(stopped: dict[int, int]) -> str:
    return ", ".join(f"{n} at e{epoch}" for epoch, n in stopped.items()) or "none"


HEADER = (f"{'seed':>5}{'budget':>8}{'TPE+ASHA GAP':>14}{'random GAP':>12}{'TPE+ASHA holdout':>18}"
          f"{'random holdout':>16}{'TPE+ASHA to random best':>25}  ASHA stopped (trials, seconds)")


def seed_row(r: SeedResult) -> str:
    tpe, rnd = r.best("tpe+asha"), r.best("random")
    share = f"{fmt_share(r.share)}" + ("" if math.isinf(r.share) else f" ({round(r.share * r.budget)})")
    return (f"{r.seed:>5}{r.budget:>8}{tpe.gap:>14.4f}{rnd.gap:>12.4f}{tpe.holdout_gap_best:>18.4f}"
            f"{rnd.holdout_gap_best:>16.4f}{share:>25}  {fmt_stopped(r.stopped)} "
            f"({r.tpe.trials} + {r.random.trials}, {r.tpe.seconds:.0f} + {r.random.seconds:.0f})")


def spread(values: Sequence[float], show: Callable[[float], str]) -> str:
    """median (min–max) of the values."""
    return f"{show(median(values))} ({show(min(values))}–{show(max(values))})"


def summary_lines(results: Sequence[SeedResult]) -> list[str]:
    """Median and min–max over the seeds of every figure, and the goal's verdict."""
    def gaps(method: str, holdout: bool = False) -> list[float]:
        return [r.best(method).holdout_gap_best if holdout else r.best(method).gap for r in results]

    f4 = "{:.4f}".format
    shares = [r.share for r in results]
    verdict = "met" if median(shares) <= GOAL else "NOT met"
    return [
        f"over {len(results)} seed{'s' if len(results) > 1 else ''}, median (min–max):",
        f"  budget (trial-epochs)              {spread([r.budget for r in results], '{:g}'.format)}",
        f"  best selection GAP   TPE+ASHA      {spread(gaps('tpe+asha'), f4)}",
        f"                       random        {spread(gaps('random'), f4)}",
        f"  its holdout GAP      TPE+ASHA      {spread(gaps('tpe+asha', True), f4)}",
        f"                       random        {spread(gaps('random', True), f4)}",
        f"  TPE+ASHA's trial-epochs to reach random's best, share of the budget: {spread(shares, fmt_share)}"
        f" (reached in {sum(not math.isinf(s) for s in shares)} of {len(shares)} seeds)",
        f"  trials ASHA stopped: {spread([sum(r.stopped.values()) for r in results], '{:g}'.format)}",
        f"goal (median share <= {GOAL:.0%}): {verdict}",
    ]


# ---------------------------------------------------------------------------------------------
# The plot


def band(plot: Plot, xs: Sequence[float], lo: Sequence[float], hi: Sequence[float], color: str, cls: str) -> str:
    """The min–max band as one closed polygon."""
    upper = [f"{plot.x(x):.1f},{plot.y(v):.1f}" for x, v in zip(xs, hi, strict=True)]
    lower = [f"{plot.x(x):.1f},{plot.y(v):.1f}" for x, v in zip(xs, lo, strict=True)][::-1]
    return f'<polygon class="band {cls}" points="{" ".join(upper + lower)}" fill="{color}" fill-opacity="0.18"/>'


def line(plot: Plot, xs: Sequence[float], values: Sequence[float], color: str, cls: str, label: str) -> str:
    d = "".join(f"{'M' if i == 0 else 'L'}{plot.x(x):.1f},{plot.y(v):.1f}" for i, (x, v) in enumerate(zip(
        xs, values, strict=True)))
    return (f'<path class="curve {cls}" d="{d}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{esc(label)}</title></path>")


def plot_svg(results: Sequence[SeedResult]) -> str:
    """Median best-so-far GAP against the share of the budget, both methods, min–max bands."""
    percent = [100 * k / GRID for k in range(1, GRID + 1)]
    curves = {m: [r.curve(m) for r in results] for m in METHODS}
    # a point is drawn once every seed has spent an epoch there, so the median is over all seeds
    shown = [i for i in range(GRID) if all(not math.isnan(c[i]) for cs in curves.values() for c in cs)]
    values = [c[i] for cs in curves.values() for c in cs for i in shown]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    plot = Plot(f"Best GAP so far, median over {len(results)} seeds (bands: min–max)",
                "budget spent (% of the trial-epochs TPE + ASHA spent)", "best selection GAP so far",
                (0.0, 100.0), (lo - pad, hi + pad))
    plot.add('<style>text { font-family: sans-serif; } text.tick, text.legend { font-size: 11px; } '
             "text.axis-title { font-size: 12px; fill: #444; }</style>")
    x = [percent[i] for i in shown]
    for method, color in METHODS.items():
        cls = method.replace("+", "-")
        columns = [[c[i] for c in curves[method]] for i in shown]
        plot.add(band(plot, x, [min(v) for v in columns], [max(v) for v in columns], color, cls))
        plot.add(line(plot, x, [median(v) for v in columns], color, cls, f"{method}: median"))
        plot.key("line", color, method)
    plot.vline(100 * GOAL, "#7b3fa0", f"the goal: random's best within {GOAL:.0%} of the budget", "goal")
    plot.key("dash", "#7b3fa0", f"{GOAL:.0%} of the budget (the goal)")
    svg = plot.render("search-efficiency")
    head, title, rest = svg.split("\n", 2)  # an opaque background: the file is shown on its own (README)
    return f'{head}\n{title}\n<rect width="100%" height="100%" fill="white"/>\n{rest}\n'


# ---------------------------------------------------------------------------------------------
# The command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides of the space, for both sweeps")
    ap.add_argument("--space", type=Path, default=SMOKE)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--trials", type=int, default=12, help="TPE + ASHA trials per seed")
    ap.add_argument("--plot", type=Path, default=PLOT, help="the SVG to write")
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    return ap.parse_intermixed_args(argv)


def init_ray(cpus: int) -> bool:
    """One Ray for every sweep (``run.main`` joins it), with the environment the main command gives;
    True when this call started it (a test's Ray is left running)."""
    import ray
    from ray.data import DataContext

    from yt8m_search import compat
    from yt8m_search.train import LOCAL_TRAIN_ENV

    if ray.is_initialized():
        return False
    env = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "WANDB_SILENT": "true",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **LOCAL_TRAIN_ENV}
    # as run.py starts a local Ray for one-worker trials: idle read workers kept, no dashboard (no Train run)
    compat.keep_idle_workers(compat.idle_workers_kept(cpus))
    ray.init(num_cpus=cpus, configure_logging=False, log_to_driver=False, include_dashboard=False,
             runtime_env={"env_vars": env})
    DataContext.get_current().enable_progress_bars = False
    return True


def main(argv: Sequence[str] | None = None) -> list[SeedResult]:
    args = parse_args(argv)
    common = [*args.overrides, "search.max_concurrent=2", "wandb.mode=disabled"]
    spec = config.load(args.space, [*common, f"search.num_samples={args.trials}"])  # the space's errors first
    epochs, asha = spec.trial.epochs, spec.search.asha
    rungs = milestones(asha.grace_period, asha.reduction_factor, epochs) if asha else []
    load, started = os.getloadavg()[0], time.perf_counter()
    import ray

    started_ray = init_ray(args.cpus)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for seed in args.seeds:
                results.append(compare(seed, args.trials, epochs, args.space, common, Path(tmp)))
                print(f"done: {seed_row(results[-1])}", flush=True)  # a partial run still says something
                args.plot.write_text(plot_svg(results))
        finally:
            if started_ray:
                ray.shutdown()
    print(f"\nsearch efficiency: {args.space.name} ({spec.data.synthetic.num_classes if spec.data.synthetic else '?'}"
          f" classes), {epochs} epochs per full trial, ASHA rungs at epochs {rungs} (noise margin "
          f"{asha.noise_margin if asha else '-'} SE); {args.trials} TPE + ASHA trials per seed, budget = the "
          f"trial-epochs they spent, random search cut there; overrides {list(args.overrides)}")
    print(HEADER)
    for r in results:
        print(seed_row(r))
    print("\n".join(summary_lines(results)))
    print(f"plot: {args.plot}; total {time.perf_counter() - started:.0f} s on {args.cpus} CPUs; load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    return results


if __name__ == "__main__":
    main()
