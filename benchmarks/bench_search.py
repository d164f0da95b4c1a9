"""Search efficiency: TPE + ASHA against random search at equal trial-epochs, on synthetic data.

    .venv/bin/python benchmarks/bench_search.py [--trials 10] [--epochs 4] [--seed 0]

Both sweeps run ``search_spaces/smoke.yaml`` through ``yt8m_search.run`` on a small synthetic set
(40 classes, so a few epochs separate good configs from bad), two trials at a time:

  tpe+asha   the space's TPE sampler with ASHA on ``epoch`` (grace 1, reduction 2), ``--trials`` trials
  random     random sampling, no early stopping, as many trials as fit in the trial-epochs the first
             sweep spent (infeasible configs cost nothing in either: the searcher rejects them before
             they become Tune trials)

Every reported epoch of every trial, in wall-clock order, is one trial-epoch spent; the printed
curves are the best validation GAP reached after each share of the common budget.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(trial-epochs spent, best GAP so far) after every reported epoch, in wall-clock order."""
    events = []
    for log in (run_dir / "tune").glob("*/result.json"):
        for line in log.read_text().splitlines():
            result = json.loads(line) if line.strip() else {}
            if result:
                events.append((result["timestamp"], result["gap"]))
    best, points = 0.0, []
    for spent, (_, gap) in enumerate(sorted(events), start=1):
        best = max(best, gap)
        points.append((spent, best))
    return points


def best_at(points: list[tuple[int, float]], spent: int) -> float:
    return max((gap for s, gap in points if s <= spent), default=0.0)


def sweep(name: str, overrides: list[str], out: Path) -> tuple[list[tuple[int, float]], float]:
    from yt8m_search import run

    start = time.perf_counter()
    code = run.main([str(SMOKE), *overrides, "--output", str(out / name)])
    if code != 0:
        raise SystemExit(f"{name} sweep failed with exit code {code}")
    return curve(out / name), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="TPE + ASHA trials")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    from ray.data import DataContext

    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        common = [
            f"data.synthetic.cache={out / 'cache'}", "data.synthetic.train_videos=480",
            "data.synthetic.validation_videos=160", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
            "trial.batch_size=32", f"trial.epochs={args.epochs}", f"search.seed={args.seed}",
            "search.max_concurrent=2", "wandb.mode=disabled",
        ]
        tpe, tpe_s = sweep("tpe", [*common, f"search.num_samples={args.trials}"], out)
        budget = tpe[-1][0]
        # random trials cost `epochs` each; over-provision and cut the curve at the same budget
        random_trials = -(-budget // args.epochs) + 2
        rnd, rnd_s = sweep("random", [*common, "search.sampler=random", "search.asha=null",
                                      f"search.num_samples={random_trials}"], out)
    ray.shutdown()
    print(f"\nsearch efficiency, smoke space on 40 synthetic classes, {args.epochs} epochs per full trial, "
          f"seed {args.seed}; budget = {budget} trial-epochs (what TPE + ASHA spent)")
    print(f"  tpe+asha: {args.trials} trials in {tpe_s:.0f} s; random: {random_trials} trials in {rnd_s:.0f} s "
          f"({rnd[-1][0] if rnd else 0} trial-epochs, curve cut at {budget})")
    print(f"{'trial-epochs':>13}{'tpe+asha GAP':>14}{'random GAP':>12}{'ratio':>8}")
    for share in (0.25, 0.5, 0.75, 1.0):
        spent = max(1, round(budget * share))
        a, b = best_at(tpe, spent), best_at(rnd, spent)
        print(f"{spent:>13}{a:>14.4f}{b:>12.4f}{(a / b if b else float('nan')):>8.2f}")


if __name__ == "__main__":
    main()
