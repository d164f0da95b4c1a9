"""Ray Data streaming of the Parquet shards into padded torch batches (the one ``ray.data`` user).

Shards hold quantized frames (see ``yt8m_search.data.parquet.FRAME_SCHEMA``); decoding happens
per batch, in Ray Data's prefetch threads, by ``yt8m_search.data.batch.collate_table`` (the
collation inference shares): each video's uint8 frames go into one ``[B, T, 1152]`` batch,
dequantized with the starter's float32 arithmetic (or left uint8 for a GPU), padding zeroed, so a
batch row equals ``read_frame_level``'s ``features[:T]`` bit for bit. The batches of one dataset
(or Train shard) reuse the memory of those already dropped. ``VideoBatch``, ``collate_table``,
``dequantize_batch`` and ``COLUMNS`` live in ``data.batch`` and are re-exported here.

No torch at import: the read tasks unpickle ``_read_shards`` by importing this module, and every
fresh Ray worker would pay for importing torch (seconds of CPU) before reading a byte.

In a Ray Train worker, ``ray.train.get_dataset_shard(name)`` gives each worker its share of the
streaming dataset (Ray Train splits it); ``iter_video_batches`` turns a shard or a whole dataset
into ``VideoBatch`` objects.
"""

from __future__ import annotations

import importlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.parquet import BATCH_COLUMNS as COLUMNS

if TYPE_CHECKING:
    import ray.data

    from yt8m_search.data.batch import FeatureBuffers, VideoBatch

READ_CPUS = 0.25

# Ray Data's output blocks of the read tasks. Its default (128 MiB) joins two row groups
# (ROW_GROUP_SIZE videos, ~64 MB at an average length, 90 MB at 300 frames) into one block of two
# Arrow chunks, and the batcher copies such a block whole when a batch takes part of it. Below a
# row group's size, most row groups are a block of their own, sliced without copying (Ray cuts a
# block over 1.5x this). Measured on 2 cores (bench_loader, 2000 videos): ~20% fewer CPU-seconds
# per pass and an earlier first batch (the first row group, not two).
BLOCK_BYTES = 48 << 20

_FROM_BATCH = ("VideoBatch", "collate_table", "dequantize_batch")


def __getattr__(name: str) -> Any:
    if name in _FROM_BATCH:  # the re-exports, imported (with torch) on first use
        return getattr(importlib.import_module("yt8m_search.data.batch"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Feature buffers live as long as the data they are filled from: a Train worker's shard is iterated
# every epoch, and its batches then reuse the memory of the previous epoch's.
_BUFFERS: weakref.WeakKeyDictionary[Any, dict[Any, FeatureBuffers]] = weakref.WeakKeyDictionary()
_BUFFERS_LOCK = threading.Lock()


def _buffers(data: Any, dequantize: bool, prefetch_batches: int) -> FeatureBuffers:
    """The reused feature buffers of ``data``'s batches. Fresh pages cost the kernel faults and
    zeroing (with transparent huge pages, compaction too): seconds of system time per pass over a
    small set. The prefetched batches, the one in use and the one being let go are alive at a time."""
    from yt8m_search.data.batch import FeatureBuffers

    dtype, keep = np.dtype(np.float32 if dequantize else np.uint8), prefetch_batches + 2
    with _BUFFERS_LOCK:
        try:
            per_kind = _BUFFERS.setdefault(data, {})
        except TypeError:  # no weak reference to it: buffers for this iteration only
            return FeatureBuffers(keep, dtype.type)
        return per_kind.setdefault((dtype, keep), FeatureBuffers(keep, dtype.type))


def _collate_fn(num_classes: int, pad_to: int | None, dequantize: bool, buffers: FeatureBuffers) -> Any:
    from ray.data.collate_fn import ArrowBatchCollateFn

    from yt8m_search.data.batch import collate_table

    class _Collate(ArrowBatchCollateFn):
        def __call__(self, batch: pa.Table) -> VideoBatch:
            return collate_table(batch, num_classes=num_classes, pad_to=pad_to, dequantize=dequantize,
                                 buffers=buffers)

    return _Collate()


def read_videos(
    paths: str | Sequence[str], *, shuffle: bool = False, listed: bool = False, cache: ShardCache | None = None,
    sizes: Sequence[int] | None = None,
) -> ray.data.Dataset:
    """A lazy Ray dataset over Parquet shards: a folder, a glob, a file or a list of them, local or s3://.

    ``shuffle`` shuffles the order of the read tasks anew for every epoch (every execution), and the
    files within each task; rows are shuffled further by the local shuffle buffer of
    ``iter_video_batches``. Unshuffled, rows come in file order every time, so an evaluation is
    reproducible: the starter's GAP breaks exact score ties by the order videos arrive in (see
    ``metrics``). ``listed``: ``paths`` already are the shard files, as ``fs.list_files`` returns them
    (no second round of listing calls); ``sizes``: their sizes in bytes, as the listing found them
    (``fs.list_sized``), else they are looked up (see ``plan_tasks``). ``cache``: remote shards are
    read through this node-local cache (``data.shard_cache``): each node fetches a shard once, not
    every trial and epoch (see ``yt8m_search.data.cache``).

    The shards are listed here, once, and each group of them (``plan_tasks``) is read by a task that
    asks for ``READ_CPUS``. ``ray.data.read_parquet`` would instead list the files in a task asking
    for a whole CPU, which never gets scheduled when training workers of concurrent trials hold all
    but a fraction of the CPUs: the trials then wait forever.

    An unshuffled dataset of listed files is made once per process (``_PLANNED``): the evaluation of
    every epoch asks for the same files, and planning thousands of them is what costs (one object per
    read task).
    """
    if listed and not shuffle:
        return _planned(tuple(paths), cache, None if sizes is None else tuple(sizes))
    return _plan(paths, shuffle, listed, cache, sizes)


def _plan(paths: str | Sequence[str], shuffle: bool, listed: bool, cache: ShardCache | None,
          sizes: Sequence[int] | None) -> ray.data.Dataset:
    import ray.data

    if listed:
        files = list(paths)
    else:
        found = fs.list_sized(paths, pattern="*.parquet")
        files, sizes = [f for f, _ in found], [n for _, n in found]
    if not files:
        raise FileNotFoundError(f"no Parquet shards (*.parquet) found at {paths}")
    groups = plan_tasks(files, sizes)
    dataset = ray.data.from_items([{"paths": g} for g in groups], override_num_blocks=len(groups))
    if shuffle:
        dataset = dataset.randomize_block_order()  # one group per block; reseeded per execution
    else:
        dataset.context.execution_options.preserve_order = True  # this dataset's own context copy
    dataset.context.target_max_block_size = BLOCK_BYTES
    return dataset.map_batches(_read_shards, fn_kwargs={"cache": cache, "shuffle": shuffle}, batch_size=1,
                               batch_format="pyarrow", num_cpus=READ_CPUS)


# The unshuffled datasets of listed files made in this process, newest last, keyed by the Ray job too:
# a dataset's items are objects of the Ray instance that made it.
_PLANNED: dict[tuple[Any, ...], ray.data.Dataset] = {}
_PLANNED_KEPT = 4
_PLANNED_LOCK = threading.Lock()


def _planned(files: tuple[str, ...], cache: ShardCache | None, sizes: tuple[int, ...] | None) -> ray.data.Dataset:
    import ray

    if not ray.is_initialized():  # Ray Data starts Ray on first use: nothing of it to keep yet
        return _plan(files, False, True, cache, sizes)
    key = (ray.get_runtime_context().get_job_id(), files, cache)
    with _PLANNED_LOCK:
        dataset = _PLANNED.pop(key, None)
        if dataset is None:
            dataset = _plan(files, False, True, cache, sizes)
        _PLANNED[key] = dataset
        while len(_PLANNED) > _PLANNED_KEPT:
            del _PLANNED[next(iter(_PLANNED))]
        return dataset


# A read task costs the driver and the scheduler about as much whatever it reads (measured on 2
# loaded cores: ~0.15 s per task over 400 shards of two videos). A YouTube-8M shard (~1,000 videos,
# ~270 MB) is a task of its own; small shards are read by the group, up to TASK_BYTES a task, but
# never fewer than MIN_TASKS tasks (the read's parallelism) when there are that many shards.
TASK_BYTES = 64 << 20
MIN_TASKS = 32
_SIZE_SAMPLE = 8


def plan_tasks(files: Sequence[str], sizes: Sequence[int] | None = None) -> list[list[str]]:
    """``files`` in consecutive groups, one read task each: up to ``TASK_BYTES`` and
    ``ceil(len(files) / MIN_TASKS)`` files a group (a file larger than that is a group of its own).

    Without ``sizes``: local files are measured (a ``stat`` each); remote ones are taken to weigh the
    median of a few evenly spread samples (one HEAD request each), not thousands of requests."""
    if not files:
        return []
    weights = list(sizes) if sizes is not None else _sizes(files)
    if len(weights) != len(files):
        raise ValueError(f"{len(files)} files but {len(weights)} sizes")
    most = -(-len(files) // MIN_TASKS)
    groups: list[list[str]] = [[]]
    held = 0
    for path, size in zip(files, weights):
        if groups[-1] and (held + size > TASK_BYTES or len(groups[-1]) >= most):
            groups.append([])
            held = 0
        groups[-1].append(path)
        held += size
    return groups


def _sizes(files: Sequence[str]) -> list[int]:
    if all(fs.is_local(f) for f in files):
        return [_size(f) for f in files]
    step = max(1, len(files) // _SIZE_SAMPLE)
    typical = int(np.median([_size(f) for f in files[::step][:_SIZE_SAMPLE]]))
    return [typical] * len(files)


def _size(path: str) -> int:
    try:
        return fs.file_size(path)
    except OSError:  # a task of its own, whose read names the file and what is wrong with it
        return TASK_BYTES


def _read_shards(groups: pa.Table, cache: ShardCache | None = None, shuffle: bool = False) -> Iterator[pa.Table]:
    """Stream each shard's row groups, only the columns training uses (through ``cache`` if given);
    shuffled, a group's files in a fresh order."""
    for paths in groups.column("paths").to_pylist():
        if shuffle:
            paths = [paths[i] for i in np.random.default_rng().permutation(len(paths))]
        for path in paths:
            yield from _read_shard(path, cache)


def _read_shard(path: str, cache: ShardCache | None) -> Iterator[pa.Table]:
    try:
        with _open_shard(path, cache) as f:
            shard = pq.ParquetFile(f)
            for group in range(shard.num_row_groups):
                yield shard.read_row_group(group, columns=COLUMNS)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read Parquet shard: {exc}") from exc


def ready_reader() -> int:
    """Nothing but this module's imports (pyarrow's Parquet reader with it): run as a Ray task of
    ``READ_CPUS`` before the trials start, it leaves a worker process that a trial's first read
    task takes over ready (``prestart_readers``). Returns the process id."""
    import os

    return os.getpid()


def prestart_readers(count: int) -> list[Any]:
    """Start ``count`` read-task processes of the running Ray now, without waiting for them: a local
    Ray that keeps its idle workers (``compat.keep_idle_workers``) hands them to the trials' first
    read tasks, which would otherwise each wait for a new Python process to start and import this
    module (about 3 CPU seconds on 2 cores). Returns the tasks' references."""
    import ray

    task = ray.remote(num_cpus=READ_CPUS)(ready_reader)
    return [task.remote() for _ in range(count)]


def _open_shard(path: str, cache: ShardCache | None) -> Any:
    # A local shard is memory-mapped: through a Python file object every page is copied once more,
    # under the GIL (measured: decoding uncompressed shards 3x slower).
    if fs.is_local(path):
        return pa.memory_map(fs.resolve(path)[1])
    return cache.open(path) if cache is not None else fs.open_input(path, seekable=True)


def iter_video_batches(
    data: ray.data.Dataset | ray.data.DataIterator,
    *,
    batch_size: int,
    num_classes: int = NUM_CLASSES,
    pad_to: int | None = None,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    prefetch_batches: int = 2,
    drop_last: bool = False,
    dequantize: bool = True,
) -> Iterator[VideoBatch]:
    """Padded ``VideoBatch`` objects (on the CPU) from a Ray dataset or a Train worker's shard.

    Decoding runs in Ray Data's prefetch threads. ``dequantize=False`` leaves that to
    ``VideoBatch.to(device)`` (see ``collate_table``).
    """
    return data.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=_collate_fn(num_classes, pad_to, dequantize, _buffers(data, dequantize, prefetch_batches)),
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed,
        prefetch_batches=prefetch_batches,
        drop_last=drop_last,
    )


__all__ = ["BLOCK_BYTES", "COLUMNS", "MIN_TASKS", "READ_CPUS", "TASK_BYTES", *_FROM_BATCH, "iter_video_batches",
           "plan_tasks", "prestart_readers", "read_videos"]
