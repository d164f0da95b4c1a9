"""Fixed cost per trial: what a Tune trial costs beyond Tune's own floor, for each way a trial trains.

    .venv/bin/python benchmarks/bench_trial_overhead.py [--trials 6] [--kinds tune,here,fresh,trainer,ddp]

Each kind runs as its own sequential sweep of ``--trials`` trials under one ``ray.init(num_cpus=2)``,
as ``run`` runs them (the sweep's Train settings, ``train.TRAIN_ENV`` and ``LOCAL_TRAIN_ENV``, and
its actor reuse, ``search.reuse_actors``):

  tune     a function trainable that reports once: Tune's own floor, a new trial process each
  tune+    the same with Tune reusing the trial's process: the floor for reused processes
  here     a one-worker trial as the sweep runs it: ``train.fit`` in the trial's own process
           (``LocalSession``), one training step of a tiny NeXtVLAD on a tiny synthetic set, one
           evaluation, one checkpoint, one report; Tune reuses the process for the next trial
  fresh    the same in a new process per trial (no reuse): start, torch import and first use each time
  trainer  the same trial through a one-worker TorchTrainer (``fit(..., in_process=False)``): the
           way every trial ran before; Train V2 starts a controller, a worker and Ray Data's
           dataset actors per run
  ddp      the same through a two-worker TorchTrainer (gloo DDP), as a multi-worker trial runs

Per trial = the sweep's wall time / trials (Tune's experiment start and end, and a reused process's
first start, included: the figure is what a sweep of N trials pays N times over); marginal = per
trial - the floor with the same reuse. Targets on 2 cores: one-worker trials <= floor + 5 s,
multi-worker trials <= 15 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

ONE_WORKER_GOAL_S = 5.0  # over the floor
MULTI_WORKER_GOAL_S = 15.0  # per trial
CLASSES = 40
TINY = {"groups": 2, "clusters": 8, "hidden_size": 32, "gating_reduction": 4, "num_classes": CLASSES}


def _tune_only(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"epoch": 1})


def _fit_trial(config: dict[str, Any]) -> None:
    from ray import tune

    from yt8m_search.train import TrainConfig, fit

    cfg = TrainConfig(model="nextvlad", hparams=TINY, epochs=1, batch_size=8, eval_batch_size=32,
                      max_steps_per_epoch=1, shuffle_buffer=0, num_workers=config["workers"],
                      cpus_per_worker=0.5)  # fmt: skip
    trial_id = tune.get_context().get_trial_id()
    fit(cfg, config["train"], config["validation"], config["storage"], f"trial-{trial_id}",
        report=tune.report, in_process=config["in_process"])  # fmt: skip


def sweep(trainable: Any, config: dict[str, Any], resources: dict[str, float], reuse: bool, trials: int,
          storage: str) -> float:
    """Wall seconds per trial of a sequential sweep of ``trials`` trials."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=storage, name=f"{trainable.__name__}-{time.time_ns()}", verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - start
    assert not results.errors, results.errors
    return elapsed / trials


def _kinds(data: Any, storage: str) -> dict[str, tuple[Any, dict[str, Any], dict[str, float], bool]]:
    """Each kind's trainable, config, trial resources (as ``search.trial_resources`` asks) and
    whether Tune reuses trial processes (as ``search.reuse_actors`` decides)."""
    base = {"train": data.train, "validation": data.validation, "storage": storage}
    here = {**base, "workers": 1, "in_process": True}
    return {
        "tune": (_tune_only, {}, {"cpu": 0.01}, False),
        "tune+": (_tune_only, {}, {"cpu": 0.01}, True),
        "here": (_fit_trial, here, {"cpu": 0.5}, True),
        "fresh": (_fit_trial, here, {"cpu": 0.5}, False),
        "trainer": (_fit_trial, {**base, "workers": 1, "in_process": False}, {"cpu": 0.01}, False),
        "ddp": (_fit_trial, {**base, "workers": 2, "in_process": False}, {"cpu": 0.01}, False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--kinds", default="tune,tune+,here,fresh,trainer,ddp",
                    help="comma-separated; the floors (tune, tune+) always run")
    args = ap.parse_args()
    wanted = ["tune", "tune+", *[k for k in args.kinds.split(",") if k and k not in ("tune", "tune+")]]

    import ray
    from ray.data import DataContext

    from yt8m_search.data.prepare import synthetic_dataset
    from yt8m_search.train import LOCAL_TRAIN_ENV, TRAIN_ENV

    os.environ.update({**TRAIN_ENV, **LOCAL_TRAIN_ENV})  # as ``run`` sets them on the Ray it starts
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_dataset(tmp, "bench", train_videos=64, validation_videos=16, shards=2, seed=0,
                                 num_classes=CLASSES, max_frames=10, progress=False)
        ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
        kinds = _kinds(data, os.path.join(tmp, "trials"))
        rows = [(name, kinds[name][3], sweep(*kinds[name], args.trials, tmp)) for name in wanted]
        ray.shutdown()
    print_table(rows, args.trials)


def print_table(rows: list[tuple[str, bool, float]], trials: int) -> None:
    """Each kind's seconds per trial, beside the floor with the same process reuse."""
    floors = {reuse: seconds for name, reuse, seconds in rows if name.startswith("tune")}
    print(f"\nfixed cost per trial, {trials} sequential trials each, ray.init(num_cpus=2), {os.cpu_count()} cores")
    print(f"{'trial':<9}{'reuse':>6}{'s/trial':>9}{'marginal s':>12}{'x floor':>9}   goal")
    for name, reuse, seconds in rows:
        goal, marginal = "", seconds - floors[reuse]
        if name in ("here", "fresh", "trainer"):
            goal = f"marginal <= {ONE_WORKER_GOAL_S:.0f} s: " + ("ok" if marginal <= ONE_WORKER_GOAL_S else "over")
        elif name == "ddp":
            goal = f"<= {MULTI_WORKER_GOAL_S:.0f} s: " + ("ok" if seconds <= MULTI_WORKER_GOAL_S else "over")
        print(f"{name:<9}{'yes' if reuse else 'no':>6}{seconds:>9.2f}{marginal:>12.2f}{seconds / floors[reuse]:>9.1f}"
              f"   {goal}")


if __name__ == "__main__":
    main()
