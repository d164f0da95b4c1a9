"""Smoke trials: videos trained per second of a real ``fit()`` against the same model's compute-bound rate.

    .venv/bin/python benchmarks/bench_train.py [key.path=value ...] [--space search_spaces/smoke.yaml]
        [--configs N] [--epochs N] [--by-classifier] [--steps 20] [--warmup 3] [--cpus 2]

Goal: a one-worker trial of the smoke space trains at >= 50% of what its model's steps alone allow, i.e.
loading, evaluation, checkpoints and the trial's start cost at most as much time as the steps themselves.

The configurations come from the space file (``yt8m_search.config``), so the benchmark follows it: every
model configuration the space can produce (its choices and integer grids; float parameters such as dropout,
temperature and the learning rate at the middle of their ranges), within the space's per-model budget (larger
ones never train), and of each family (``--by-classifier``: of each family and classifier) the smallest and
the largest by stored size. The trial settings are the space's (epochs, batch, eval batch, shuffle buffer,
CPUs per worker), the data its synthetic set (smoke: 1500 training and 500 validation videos of up to 20
frames). For each configuration, side by side:

  compute   the recipe's step (``make_optimizer``, ``train_step``: forward, backward, per-parameter clipping,
            Adam) on in-memory batches of ``trial.batch_size`` training videos (the first rows of the first
            shard, padded as the loader pads them), one thread (``torch.set_num_threads(1)``, what a worker
            of 0.5 or 1 CPU gets), fp32; samples/s of the median step after ``--warmup``
  fit       ``yt8m_search.train.fit`` of the trial on the space's data under ``ray.init(num_cpus=--cpus)``:
            videos trained (the last report's ``examples_seen``: epochs x full batches) per second of fit's
            wall time, evaluation, checkpoints, ``best/`` and the start included
  ratio     fit / compute, against the 50% goal

Also printed: the loop's own training rate (the reports' ``samples_per_s``: the steps and the loader, no
evaluation) and how fit's wall time splits into training and the rest (start, evaluation, checkpoints).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray's processes inherit it: one thread each on a small machine

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import median  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from yt8m_search import config, models  # noqa: E402
from yt8m_search.data import fs  # noqa: E402
from yt8m_search.data.batch import COLUMNS, VideoBatch, collate_table  # noqa: E402
from yt8m_search.data.prepare import DataPaths  # noqa: E402
from yt8m_search.train import LOCAL_TRAIN_ENV, TrainConfig, fit, make_optimizer, train_step  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
GOAL = 0.5
SHORT = {"groups": "G", "clusters": "K", "hidden_size": "H", "num_mixtures": "M", "num_branches": "B"}


@dataclass(frozen=True)
class Pick:
    """One configuration to measure: its family, hyperparameters and analytic size."""

    family: str
    hparams: dict[str, Any]
    params: int
    size_bytes: int

    def label(self, shown: Sequence[str]) -> str:
        """The family and the values the space varies, in the papers' shorthand where there is one (8G/64K)."""
        parts = [f"{self.hparams[k]}{SHORT[k]}" if k in SHORT else str(self.hparams[k]) if k == "classifier"
                 else f"{k}={self.hparams[k]}" for k in shown if k in self.hparams]
        return " ".join([self.family, *parts])


def middle(dist: config.Distribution) -> float:
    """The middle of a float range (geometric for a log range): a typical value of a parameter that
    changes neither the model's shape nor its cost."""
    low, high = float(dist.low), float(dist.high)  # type: ignore[arg-type]
    return math.sqrt(low * high) if dist.log else (low + high) / 2


def typical_values(spec: config.Spec) -> dict[str, float]:
    """Every float parameter of the space (model or trial) at the middle of its range."""
    return {p.name: middle(p.distribution) for p in spec.parameters
            if p.distribution is not None and p.distribution.kind == "float"}


def representative(spec: config.Spec, by_classifier: bool = False) -> list[Pick]:
    """Of each family (and classifier), the smallest and the largest configuration within the budget."""
    floats = typical_values(spec)
    limit = spec.budget.max_model_bytes
    groups: dict[tuple[str, ...], list[Pick]] = {}
    for values in config.configurations(spec.parameters)[0]:
        hparams = {k: floats.get(k, v) for k, v in values.items() if k != "family"}
        try:
            size = models.size_bytes(values["family"], dtype=spec.budget.storage_dtype, **hparams)
        except ValueError:  # an invalid combination: the sweep would never train it either
            continue
        if limit is not None and size > limit:
            continue
        key = (values["family"], str(hparams.get("classifier", ""))) if by_classifier else (values["family"],)
        groups.setdefault(key, []).append(
            Pick(values["family"], hparams, models.param_count(values["family"], **hparams), size))
    picks: list[Pick] = []
    for members in groups.values():
        members.sort(key=lambda p: (p.size_bytes, p.params))
        picks.extend([members[0]] if len(members) == 1 else [members[0], members[-1]])
    return picks


def structural_names(spec: config.Spec) -> list[str]:
    """The model parameters the space varies over a choice or an integer grid (what tells picks apart)."""
    return [p.name for p in spec.parameters if p.section == "hparams" and p.distribution is not None
            and p.distribution.kind != "float"]


def train_config(spec: config.Spec, pick: Pick) -> TrainConfig:
    """The trial's config as the search builds it (the family's recipe included), searched trial
    settings at their typical values."""
    floats = typical_values(spec)
    searched = {k: v for k, v in floats.items() if k in config.TrialSettings.searchable_names()}
    settings = config.trial_settings(spec, {"family": pick.family, **searched})
    return TrainConfig.from_settings(settings, model=pick.family, hparams=pick.hparams,
                                     storage_dtype=spec.budget.storage_dtype, seed=spec.search.seed,
                                     holdout_fraction=spec.data.holdout_fraction)


def memory_batches(train: str, batch_size: int, count: int, num_classes: int,
                   pad_to: int | None = None) -> list[VideoBatch]:
    """Up to ``count`` float32 batches of the first training shard's first rows, collated as the loader does."""
    first = fs.list_files(train, pattern="*.parquet")[0]
    table = pq.read_table(first, columns=COLUMNS)
    starts = range(0, max(1, len(table) - batch_size + 1), batch_size)
    return [collate_table(table.slice(s, batch_size), num_classes=num_classes, pad_to=pad_to)
            for s in list(starts)[:count]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(cfg: TrainConfig, batches: Sequence[VideoBatch], steps: int, warmup: int,
               device: torch.device) -> list[float]:
    """Wall seconds of ``steps`` steps of the recipe after ``warmup`` untimed ones (Adam's state, the
    allocator), each as the loop takes it: the batch to the device, the step, the loss read back."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, **cfg.hparams).to(device).train()
    optimizer = make_optimizer(model, cfg)
    examples_seen, times = 0, []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, batch.to(device), cfg, examples_seen).item()
        sync(device)
        examples_seen += len(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def compute_rate(cfg: TrainConfig, batches: Sequence[VideoBatch], steps: int, warmup: int) -> float:
    """Samples/s of the median step on one thread (the thread count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return len(batches[0]) / median(step_times(cfg, batches, steps, warmup, torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)


def fit_rate(cfg: TrainConfig, data: DataPaths, name: str) -> dict[str, float]:
    """One real fit(): its wall time, the videos it trained, its training seconds (from the reports)."""
    threads = torch.get_num_threads()  # an in-process fit sets this process's threads to the worker's
    try:
        with tempfile.TemporaryDirectory() as storage:
            start = time.perf_counter()
            result = fit(cfg, data.train, data.validation, storage, name)
            wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    trained, seen = 0.0, 0
    for report in result.history:  # each epoch's training seconds = its examples / its rate
        trained += (report["examples_seen"] - seen) / report["samples_per_s"]
        seen = report["examples_seen"]
    videos = result.metrics["examples_seen"]
    return {"wall": wall, "videos": videos, "rate": videos / wall, "train_s": trained,
            "loop_rate": videos / trained, "gap": result.gap}


def warm_ray(data: DataPaths) -> float:
    """Seconds of one pass over the validation shards: Ray starts the worker processes its read tasks
    run in, as the first trial of a sweep does once; the configurations then compare on equal terms."""
    from yt8m_search.data.loading import iter_video_batches, read_videos

    start = time.perf_counter()
    for _ in iter_video_batches(read_videos(data.validation), batch_size=256):
        pass
    return time.perf_counter() - start


def start_ray(cpus: int) -> bool:
    """A quiet local Ray as ``run`` starts one (True), or the one already running (False)."""
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return False
    # the dashboard stays: Train V2's placement-group cleaner queries its state API
    ray.init(num_cpus=cpus, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", **LOCAL_TRAIN_ENV}})
    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # one INFO block per dataset execution
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the space file")
    parser.add_argument("--space", default=str(SMOKE))
    parser.add_argument("--configs", type=int, default=None, help="measure only the first N picks")
    parser.add_argument("--epochs", type=int, default=None, help="trial.epochs (default: the space's)")
    parser.add_argument("--by-classifier", action="store_true", help="smallest and largest per classifier too")
    parser.add_argument("--steps", type=int, default=20, help="timed compute-bound steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    return parser.parse_args(argv)


def print_table(spec: config.Spec, picks: Sequence[Pick], rows: Sequence[tuple[float, dict[str, float]]]) -> None:
    shown = structural_names(spec)
    print(f"\n{'#':<3}{'configuration':<40}{'params':>10}{'compute/s':>11}{'loop/s':>8}{'fit s':>8}"
          f"{'train s':>9}{'fit/s':>8}{'fit/compute':>13}{'>=50%':>7}{'GAP':>7}")
    for i, (pick, (compute, r)) in enumerate(zip(picks, rows), 1):
        ratio = r["rate"] / compute
        verdict = "yes" if ratio >= GOAL else "NO"
        print(f"{i:<3}{pick.label(shown):<40}{pick.params:>10,}{compute:>11.0f}{r['loop_rate']:>8.0f}"
              f"{r['wall']:>8.1f}{r['train_s']:>9.1f}{r['rate']:>8.0f}{ratio:>12.0%}{verdict:>7}{r['gap']:>7.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    overrides = [*args.overrides, *([f"trial.epochs={args.epochs}"] if args.epochs else [])]
    spec = config.load(args.space, overrides)
    picks = representative(spec, args.by_classifier)[: args.configs]
    started = time.perf_counter()
    from yt8m_search.run import prepare_data

    data = prepare_data(spec.data, progress=False)
    trial = spec.trial
    print(f"{spec.source}: {len(picks)} configurations, {trial.epochs} epochs, batch {trial.batch_size}, "
          f"eval batch {trial.eval_batch_size}, {trial.cpus_per_worker} CPU per worker, shuffle buffer "
          f"{trial.shuffle_buffer}; data ready in {time.perf_counter() - started:.1f} s: {data.train}")
    ours = start_ray(args.cpus)
    rows = []
    try:
        print(f"Ray's read workers started by a pass over the validation set: {warm_ray(data):.1f} s", flush=True)
        for i, pick in enumerate(picks):
            cfg = train_config(spec, pick)
            batches = memory_batches(data.train, cfg.batch_size, 4, cfg.num_classes, cfg.pad_to)
            compute = compute_rate(cfg, batches, args.steps, args.warmup)
            rows.append((compute, fit_rate(cfg, data, f"bench-{i}")))
            print(f"  {i + 1}/{len(picks)} {pick.family} {pick.hparams}: compute {compute:.0f}/s on "
                  f"{list(batches[0].features.shape)}, fit {rows[-1][1]['rate']:.0f}/s", flush=True)
    finally:
        if ours:
            import ray

            ray.shutdown()
    print_table(spec, picks, rows)
    print(f"compute/s: the step alone, 1 thread; loop/s: the reports' samples_per_s (steps + loader); fit s: "
          f"fit()'s wall time, train s of it in the epochs' training; fit/s: videos trained / fit s "
          f"(ray.init(num_cpus={args.cpus}), {os.cpu_count()} cores). total {time.perf_counter() - started:.0f} s; "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other load slows both rates)")


if __name__ == "__main__":
    main()
