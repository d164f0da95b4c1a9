"""Fixed cost per trial: the start and stop of a Tune trial that trains nothing.

    .venv/bin/python benchmarks/bench_trial_overhead.py [--trials 4]

Goal: under 10 s per trial on a 2-core machine (a trivial trainer inside Tune cost about 23 s
here before the sweep's settings). Three kinds of trial, run one after another in one Tune sweep
each under the same ``ray.init(num_cpus=2)``, as the sweep runs them:

  tune only     a function trainable that reports once (Tune's own floor)
  train, empty  the sweep's shape: a function trainable that builds a one-worker TorchTrainer
                whose loop reports once and returns, relayed by ``search.relay_to_tune``
  train, data   the same, but the trainer gets the training set as ``fit`` passes it
                (``datasets=`` with a split ``DataConfig``) and the loop takes one batch from its
                shard: Ray Data's dataset manager, split coordinator and executor start every trial
  + our env     the same under the Train settings ``fit`` and ``run`` use (``train.TRAIN_ENV``:
                workers polled every 0.5 s, not 2 s; no preemption watcher on a local Ray)

Per trial = the sweep's wall time / trials (Tune startup and shutdown of the experiment included,
so the figure is what a sweep of N trials pays N times over). Printed side by side with the ratio
to ``tune only``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

GOAL_S = 10.0


def _tune_only(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"epoch": 1})


def _empty_loop(config: dict[str, Any]) -> None:
    import ray.train

    if config.get("shard"):
        from yt8m_search.data.loading import iter_video_batches

        shard = ray.train.get_dataset_shard("train")
        next(iter(iter_video_batches(shard, batch_size=8, num_classes=config["classes"])))
    ray.train.report({"epoch": 1})


def _with_trainer(config: dict[str, Any]) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer

    from yt8m_search.data.loading import read_videos
    from yt8m_search.search import relay_to_tune

    os.environ.update(config.get("env", {}))  # this trial actor's env: Train propagates it to its controller
    trial_id = tune.get_context().get_trial_id()
    shard = config.get("shard")
    relay_to_tune(lambda callback: TorchTrainer(
        _empty_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        datasets={"train": lambda: read_videos(shard, shuffle=True)} if shard else None,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]) if shard else None,
        run_config=ray.train.RunConfig(name=f"trial-{trial_id}", storage_path=config["storage"],
                                       callbacks=[callback]),
    ).fit())


def sweep(trainable: Any, trials: int, config: dict[str, Any], storage: str) -> float:
    """Wall seconds per trial of a sequential sweep of ``trials`` trials."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=storage, name=f"{trainable.__name__}-{time.time_ns()}", verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - start
    assert not results.errors, results.errors
    return elapsed / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    args = ap.parse_args()

    import ray
    from ray.data import DataContext

    from yt8m_search.data.prepare import synthetic_dataset
    from yt8m_search.train import LOCAL_TRAIN_ENV, TRAIN_ENV

    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_dataset(tmp, "bench", train_videos=64, validation_videos=16, shards=1, seed=0,
                                 num_classes=40, max_frames=10, progress=False)
        ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
        base = {"storage": os.path.join(tmp, "train"), "classes": 40}
        rows = [
            ("tune only", sweep(_tune_only, args.trials, {}, tmp)),
            ("train, empty", sweep(_with_trainer, args.trials, base, tmp)),
            ("train, data", sweep(_with_trainer, args.trials, {**base, "shard": data.train}, tmp)),
            ("+ our env", sweep(_with_trainer, args.trials,
                                {**base, "shard": data.train, "env": {**TRAIN_ENV, **LOCAL_TRAIN_ENV}}, tmp)),
        ]
        ray.shutdown()
    print(f"\nfixed cost per trial, {args.trials} sequential trials each, ray.init(num_cpus=2), {os.cpu_count()} cores")
    print(f"{'trial':<14}{'s/trial':>9}{'x tune only':>13}{'goal':>12}")
    for name, seconds in rows:
        verdict = "ok" if seconds < GOAL_S else "over"
        print(f"{name:<14}{seconds:>9.2f}{seconds / rows[0][1]:>13.1f}{f'<{GOAL_S:.0f} s ' + verdict:>12}")


if __name__ == "__main__":
    main()
