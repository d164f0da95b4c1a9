"""Does temporal aggregation pay on the synthetic data? NeXtVLAD against a mean-pooled logistic baseline.

    .venv/bin/python benchmarks/bench_baseline.py [key.path=value ...] [--space search_spaces/smoke.yaml]
        [--seeds 0 1 2] [--epochs N]

The synthetic data (``yt8m_search.data.synthetic``) puts each label's evidence in a minority of the frames
and gives half the classes a twin with the same mean frame, so averaging the frames loses what tells them
apart. Side by side, each trained as one trial of the space (its recipe, epochs, batch, data, holdout), with
the same seeds:

  frame_logistic   the starter's FrameLevelLogisticModel: the mean of the frames, a logistic head
  nextvlad / ...   of each family of the space, the smallest and the largest configuration within its
                   per-model budget (floats, the learning rate included, at the middle of their ranges),
                   as ``bench_train`` picks them

and the class-prior ranking (every video scored by the training labels' class frequencies). Printed: GAP on
the selection videos (which chose each trial's best epoch) and on the holdout videos (which chose nothing),
the median over the seeds with the range, and each model's holdout GAP over the baseline's.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from bench_train import SMOKE, Pick, representative, start_ray, structural_names, train_config  # noqa: E402

from yt8m_search import config, models  # noqa: E402
from yt8m_search.data.prepare import DataPaths  # noqa: E402
from yt8m_search.search.summary import class_prior_baselines  # noqa: E402
from yt8m_search.train import fit  # noqa: E402

BASELINE = "frame_logistic"


def baseline_pick(spec: config.Spec) -> Pick:
    """The mean-pooled logistic model on the space's classes."""
    hparams: dict[str, object] = {"classifier": "logistic"}
    fixed = {p.name: p.value for p in spec.parameters if p.distribution is None}
    num_classes = fixed.get("num_classes") or (spec.data.synthetic.num_classes if spec.data.synthetic else None)
    if num_classes:
        hparams["num_classes"] = int(num_classes)
    return Pick(BASELINE, hparams, models.param_count(BASELINE, **hparams),
                models.size_bytes(BASELINE, dtype=spec.budget.storage_dtype, **hparams))


def train_gaps(spec: config.Spec, pick: Pick, data: DataPaths, seed: int) -> tuple[float, float]:
    """(selection GAP, holdout GAP) of the best epoch of one trial of ``pick`` trained with ``seed``."""
    cfg = dataclasses.replace(train_config(spec, pick), seed=seed)
    with tempfile.TemporaryDirectory() as storage:
        result = fit(cfg, data.train, data.validation, storage, f"baseline-{pick.family}-{seed}")
    return result.gap, float(result.metrics["holdout_gap_best"])


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def print_table(spec: config.Spec, picks: Sequence[Pick], gaps: dict[str, list[tuple[float, float]]],
                prior: dict[str, float]) -> None:  # fmt: skip
    shown = structural_names(spec)
    base = statistics.median(h for _, h in gaps[picks[0].label(shown)])
    print(f"\n{'model':<40}{'params':>11}{'GAP selection: median (range)':>32}{'GAP holdout: median (range)':>30}"
          f"{'holdout / ' + BASELINE:>26}")
    for pick in picks:
        runs = gaps[pick.label(shown)]
        holdout = statistics.median(h for _, h in runs)
        print(f"{pick.label(shown):<40}{pick.params:>11,}{spread([s for s, _ in runs]):>32}"
              f"{spread([h for _, h in runs]):>30}{holdout / base:>25.2f}x")
    print(f"{'class-prior ranking':<40}{'':>11}{prior['class_prior_selection_gap']:>32.4f}"
          f"{prior['class_prior_holdout_gap']:>30.4f}{prior['class_prior_holdout_gap'] / base:>25.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the space file")
    parser.add_argument("--space", default=str(SMOKE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="trial.epochs (default: the space's)")
    parser.add_argument("--configs", type=int, default=None, help="only the first N of the space's picks")
    args = parser.parse_args(argv)
    spec = config.load(args.space, [*args.overrides, *([f"trial.epochs={args.epochs}"] if args.epochs else [])])
    from yt8m_search.run import prepare_data

    data = prepare_data(spec.data, progress=False)
    picks = [baseline_pick(spec), *representative(spec)[: args.configs]]
    started = time.perf_counter()
    ours = start_ray(2)
    gaps: dict[str, list[tuple[float, float]]] = {}
    try:
        for pick in picks:
            for seed in args.seeds:
                gaps.setdefault(pick.label(structural_names(spec)), []).append(train_gaps(spec, pick, data, seed))
            print(f"  {pick.family} {pick.hparams}: {gaps[pick.label(structural_names(spec))]}", flush=True)
    finally:
        if ours:
            import ray

            ray.shutdown()
    print(f"{spec.source}: {spec.trial.epochs} epochs, seeds {args.seeds}, holdout fraction "
          f"{spec.data.holdout_fraction}; {time.perf_counter() - started:.0f} s")
    print_table(spec, picks, gaps, class_prior_baselines(spec, data))


if __name__ == "__main__":
    main()
