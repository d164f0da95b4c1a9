"""The ensemble step's dense re-score as Ray tasks: ``rescore_on_ray`` (a ``ensemble.Rescore``).

The validation shards stream through Ray Data (``data.loading.read_videos``, file order kept) into
``map_batches`` over an actor pool of ``_BundleScorer``: each actor loads the job's bundles once (an
exported bundle file, or a trial's ``best/`` folder as a model as shipped: ``ensemble.Scored``), on
its GPU when the cluster has GPUs (``num_gpus=1`` per actor) and on CPUs otherwise, and turns each
batch into the per-part metric accumulators' states (``bundle.accumulate_parts``). The driver merges
them in the batches' order (``MetricAccumulator.merge``): the figures of one pass in this process
(``ensemble.rescore_in_driver``), which tests/test_ensemble_scale.py checks. Only accumulators come back (per
video its top-20 entries), never probabilities ``[B, 3862]``.

The head node of ``cluster.yaml`` advertises no CPU or GPU: the actors run on the GPU workers, which
are still up after a sweep (idle ones leave after 5-10 minutes) or are started for them. Data that is
not all Parquet (TFRecord files) is scored in the driver instead, with a line saying so.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from yt8m_search import bundle
from yt8m_search.data.inference import PARQUET_SUFFIXES, data_files
from yt8m_search.data.loading import READ_CPUS, read_videos
from yt8m_search.ensemble.rescoring import PartMetrics, RescoreJob, rescore_in_driver
from yt8m_search.metrics import MetricAccumulator
from yt8m_search.metrics.holdout import PARTS

__all__ = ["MAX_CPU_ACTORS", "rescore_on_ray"]

Log = Callable[[str], None]
MAX_CPU_ACTORS = 4  # each holds every bundle in float32 (up to 4 GB for a 1 GB bf16 bundle)


class _BundleScorer:
    """One actor: the job's bundles, loaded once on its device; a batch of Parquet rows -> one row
    holding the pickled accumulator states of every bundle and part."""

    def __init__(self, job: RescoreJob, device: str) -> None:
        import torch

        if device == "cpu":  # the actor holds one CPU
            torch.set_num_threads(1)
        self.job, self.device = job, device
        self.bundles = [scored.load(device) for scored in job.bundles]
        self.num_classes = self.bundles[0].num_classes

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        from yt8m_search.data.batch import collate_table

        batch = collate_table(table, num_classes=self.num_classes, dequantize=self.device == "cpu")
        parts = bundle.accumulate_parts(self.bundles, [batch], holdout_fraction=self.job.holdout_fraction)
        states = [{name: accs[name].state() for name in PARTS} for accs in parts]
        return {"states": np.array([pickle.dumps(states, protocol=5)], dtype=object)}


def _placement(gpus: bool | None, actors: int | None, cpus_per_actor: float) -> tuple[str, int, dict[str, Any]]:
    """The actors' device, how many, and their resources: one GPU each when the cluster has GPUs
    (or ``gpus``), else ``cpus_per_actor`` each, leaving the read tasks their share (``READ_CPUS``):
    actors holding every CPU would wait forever for the batches no read task can make."""
    resources = ray.cluster_resources()
    use_gpus = resources.get("GPU", 0) >= 1 if gpus is None else gpus
    if use_gpus:
        return "cuda", max(1, actors or int(resources.get("GPU", 1))), {"num_gpus": 1}
    room = max(1, int((resources.get("CPU", 1) - READ_CPUS) // cpus_per_actor))
    count = min(actors or min(MAX_CPU_ACTORS, max(1, room // 2)), room)
    return "cpu", count, {"num_cpus": cpus_per_actor}


def _merged(rows: list[dict[str, Any]], bundles: int, num_classes: int) -> list[PartMetrics]:
    """The actors' states, merged in the batches' order, as ``bundle.evaluate_parts`` reports them."""
    parts = [{name: MetricAccumulator(num_classes) for name in PARTS} for _ in range(bundles)]
    for row in rows:
        for accs, states in zip(parts, pickle.loads(row["states"])):
            for name in PARTS:
                accs[name].merge(states[name])
    return bundle.part_results(parts)


def rescore_on_ray(job: RescoreJob, log: Log, *, gpus: bool | None = None, actors: int | None = None,
                   cpus_per_actor: float = 1.0) -> list[PartMetrics]:
    """``job`` as Ray Data actors (module doc) on the running Ray cluster (``ray.init`` first).

    ``gpus``: None decides by the cluster (GPUs when it has any); ``actors``: how many (default: one
    per GPU, or half the CPUs up to ``MAX_CPU_ACTORS``; CPU actors never take the read tasks' share).
    ``job.device`` is not used: the actors' is.
    """
    files = data_files(job.validation)
    if not all(f.lower().endswith(PARQUET_SUFFIXES) for f in files):
        log("re-score: the validation data is not all Parquet shards: scoring in this process")
        return rescore_in_driver(job, log)
    device, count, resources = _placement(gpus, actors, cpus_per_actor)
    log(f"re-scoring {len(job.bundles)} bundle(s) on Ray: {count} actor(s) on {device}")
    dataset = read_videos(files, listed=True).map_batches(
        _BundleScorer, fn_constructor_kwargs={"job": job, "device": device}, batch_size=job.batch_size,
        batch_format="pyarrow", concurrency=count, **resources,
    )  # fmt: skip
    rows = dataset.take_all()
    if not rows:
        raise ValueError(f"no videos to evaluate in {job.validation}")
    return _merged(rows, len(job.bundles), int(pickle.loads(rows[0]["states"])[0][PARTS[0]]["num_classes"]))
