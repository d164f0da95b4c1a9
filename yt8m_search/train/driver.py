"""The driver side of one trial: ``fit`` runs the worker loop and returns the trial's result.

One worker: the loop runs in the calling process (``session.LocalSession``). Several: a
TorchTrainer runs it on every worker (DDP), and ``relay_reports`` hands each of its reports to the
caller's thread. Either way the caller sees one report per epoch through ``report``.

It lists the shards once per trial (workers never list storage; every epoch reads the same lists),
reads the PCA eigenvalues file when the model whitens its input back (models take values, never
paths), and resumes automatically: the run name is fixed, and the loop continues from the newest
checkpoint in ``<storage_path>/<name>``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from yt8m_search import models
from yt8m_search.data import fs
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.loading import read_videos
from yt8m_search.train.loop import StepHooks, run_loop, train_loop_per_worker
from yt8m_search.train.session import LocalSession, Report, local_device
from yt8m_search.train.settings import TrainConfig

# Ray Train settings for every run (the calling process's environment; Train V2 passes these to its
# controller). Its controller polls the workers every 2 s by default, so a finished trial waits up
# to 2 s before its run ends; 0.5 s costs a few small RPCs a second.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# Only on a one-machine Ray that ``run`` starts itself: the preemption watcher (one more process per
# trial) only matters where cloud nodes can be taken away.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass(frozen=True)
class TrialResult:
    """What one trained trial hands to the search (the results contract)."""

    gap: float
    epochs: int
    params: int
    size_bytes: int
    checkpoint: str
    predictions: str
    metrics: dict[str, Any]  # the last report
    history: list[dict[str, Any]]  # every epoch's report
    flops: int = 0  # analytic forward FLOPs per 300-frame video
    latency_ms: float = math.nan  # measured in the last epoch's evaluation: ms per video at eval_batch_size

    @classmethod
    def from_report(cls, report: dict[str, Any], history: list[dict[str, Any]]) -> TrialResult:
        return cls(gap=report["gap_best"], epochs=report["epoch"], params=report["params"],
                   size_bytes=report["size_bytes"], checkpoint=report["checkpoint"],
                   predictions=report["predictions"], metrics=dict(report), history=history,
                   flops=report.get("flops", 0), latency_ms=report.get("latency_ms", math.nan))


def fit(
    cfg: TrainConfig,
    train: str | Sequence[str],
    validation: str | Sequence[str],
    storage_path: str,
    name: str,
    *,
    report: Report | None = None,
    hooks: StepHooks | None = None,
    in_process: bool | None = None,
    cache: ShardCache | None = None,
) -> TrialResult:
    """Train ``cfg``; resume automatically from ``<storage_path>/<name>``.

    Call with Ray initialised. The run name must be deterministic (no timestamps): a restarted
    driver then finds and resumes the same run. ``report(metrics)`` is called in this thread after
    every epoch (a Tune trial passes ``tune.report``). ``in_process`` (default: one worker) runs the
    loop here, else a TorchTrainer runs it; a killed in-process run is restarted by its caller (Tune's
    ``max_failures``), a TorchTrainer's workers by Train (``cfg.max_failures``).
    ``cache``: read remote shards through this node-local cache (``data.shard_cache``).
    ``hooks.on_step(epoch, step, rank)`` is called before every step (tests inject faults this way)."""
    train_listed, (validation_files, validation_sizes) = _shards(train, validation)
    storage_path = os.path.abspath(storage_path) if fs.is_local(storage_path) else storage_path
    loop_config = {
        "train": dataclasses.asdict(cfg),
        "validation_files": validation_files,
        "run_dir": fs.join(storage_path, name),
        "eigenvalues": _eigenvalues(cfg.pca_eigenvals) if cfg.reverse_whitening else None,
        "hooks": hooks,
        "cache": cache,
    }
    in_process = cfg.num_workers == 1 if in_process is None else in_process
    if in_process:
        if cfg.num_workers != 1:
            raise ValueError(f"an in-process run has one worker, not num_workers={cfg.num_workers}")
        history = _fit_here(cfg, loop_config, train_listed, validation_sizes, report)
    else:
        history = relay_reports(lambda callback: _fit_trainer(cfg, loop_config, train_listed, storage_path, name,
                                                              callback), report)
    if not history:
        raise RuntimeError(f"{name}: the run ended without a report")
    return TrialResult.from_report(history[-1], history)


def _fit_here(cfg: TrainConfig, loop_config: dict[str, Any], train: Listed, validation_sizes: list[int],
              report: Report | None) -> list[dict[str, Any]]:
    from ray.data import DataContext

    # this process's datasets (training and every evaluation) copy the current context when made:
    # no progress bars on a trial's stderr, which Ray forwards to the sweep's terminal
    DataContext.get_current().enable_progress_bars = False
    # planned here, with the sizes the listing found: every epoch's evaluation (in this process) asks
    # read_videos for these files again and gets this dataset, without a request or a plan more
    read_videos(loop_config["validation_files"], listed=True, cache=loop_config["cache"], sizes=validation_sizes)
    session = LocalSession(
        run_dir=loop_config["run_dir"],
        train_data=read_videos(train[0], shuffle=True, listed=True, cache=loop_config["cache"], sizes=train[1]),
        keep=_checkpoints_kept(cfg),
        on_report=report,
        device=local_device(cfg.gpus_per_worker),
    )
    return run_loop(session, loop_config)


def _fit_trainer(cfg: TrainConfig, loop_config: dict[str, Any], train: Listed, storage_path: str,
                 name: str, callback: Any) -> list[dict[str, Any]]:
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)  # a user's own setting wins
    result = _trainer(cfg, loop_config, train, storage_path, name, [callback]).fit()
    if result.error is not None:
        raise result.error
    return list(result.return_value or [result.metrics])


def relay_reports(run: Callable[[Any], Any], report: Report | None) -> Any:
    """Run ``run(callback)`` (a TorchTrainer's ``fit`` with ``callback`` among its Train callbacks)
    in a thread; call ``report`` with each of its reports from this thread, in order; return what
    ``run`` returned, or re-raise what it raised.

    Why not Ray's ``TuneReportCallback``: it hands reports to the Tune trial actor's *main* thread,
    which puts them on the function session's one-slot result queue. When the driver is slow on
    one result (another trial finishing beside it, a loaded machine), the next report and the end of
    ``fit`` can both come first; the trainable's closing report then takes that slot and the main
    thread blocks on it for ever (Ray 2.60): the trial never ends and neither does the sweep. Here
    the caller's thread is the only one that reports, as Tune's function API expects.
    """
    from ray.util.queue import Queue

    reports: Queue = Queue(actor_options={"num_cpus": 0})
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def train() -> None:
        try:
            outcome.append(run(_callback(reports)))
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(error)
        finally:
            reports.put(_END)  # after every report: each put returned before the controller went on

    thread = threading.Thread(target=train, name="train-fit", daemon=True)
    thread.start()
    while (metrics := reports.get()) != _END:
        if report is not None:
            report(metrics)  # tune.report blocks until Tune asks for the next result
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


_END = "end of the Train run"


def _callback(reports: Any) -> Any:
    """A Train controller callback putting each report's metrics (rank 0's, the ones every rank
    agrees on) on ``reports``."""
    from ray.train import UserCallback

    class _ReportToQueue(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            reports.put(dict(metrics[0]))

    return _ReportToQueue()


def _checkpoints_kept(cfg: TrainConfig) -> int:
    return max(cfg.keep_checkpoints, cfg.average_last, 1)


def _eigenvalues(path: str | None) -> np.ndarray:
    """The PCA eigenvalues file, local or s3:// (read here, once, not by every worker)."""
    assert path is not None  # TrainConfig refuses reverse whitening without it
    try:
        data = fs.read_bytes(path)
    except OSError as err:
        raise ValueError(f"pca_eigenvals: cannot read eigenvalues from {path}: {err}") from err
    return models.load_eigenvals(io.BytesIO(data), name=path)


# Shard files and their sizes in bytes, as listed.
Listed = tuple[list[str], list[int]]


def _shards(train: str | Sequence[str], validation: str | Sequence[str]) -> tuple[Listed, Listed]:
    """The Parquet shards of both sets and their sizes, listed once per trial (ValueError naming the
    set and the location if there are none)."""
    listed = []
    for role, where in (("training", train), ("validation", validation)):
        found = fs.list_sized(where, pattern="*.parquet")
        if not found:
            raise ValueError(f"no {role} Parquet shards (*.parquet) found at {where}")
        listed.append(([path for path, _ in found], [size for _, size in found]))
    return listed[0], listed[1]


def _trainer(
    cfg: TrainConfig, loop_config: dict[str, Any], train: Listed, storage_path: str, name: str,
    callbacks: list[Any],
) -> Any:
    """The TorchTrainer of one trial (Ray is imported here: a driver-side call, made with Ray running)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    gpus = {"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **gpus},
            placement_strategy=cfg.placement_strategy,
        ),
        datasets={"train": lambda: read_videos(train[0], shuffle=True, listed=True, cache=loop_config["cache"],
                                               sizes=train[1])},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=_checkpoints_kept(cfg)),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
    )


__all__ = ["LOCAL_TRAIN_ENV", "TRAIN_ENV", "TrialResult", "fit", "relay_reports"]
