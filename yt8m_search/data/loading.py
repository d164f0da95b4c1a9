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
    paths: str | Sequence[str], *, shuffle: bool = False, listed: bool = False, cache: ShardCache | None = None
) -> ray.data.Dataset:
    """A lazy Ray dataset over Parquet shards: a folder, a glob, a file or a list of them, local or s3://.

    ``shuffle`` shuffles the file order, anew for every epoch (every execution); rows are shuffled
    further by the local shuffle buffer of ``iter_video_batches``. Unshuffled, rows come in file order
    every time, so an evaluation is reproducible: the starter's GAP breaks exact score ties by the
    order videos arrive in (see ``metrics``). ``listed``: ``paths`` already are the shard files, as
    ``fs.list_files`` returns them (no second round of listing calls). ``cache``: remote shards are
    read through this node-local cache (``data.shard_cache``): each node fetches a shard once, not
    every trial and epoch (see ``yt8m_search.data.cache``).

    The shards are listed here, once, and each is read by a task that asks for ``READ_CPUS``.
    ``ray.data.read_parquet`` would instead list the files in a task asking for a whole CPU, which
    never gets scheduled when training workers of concurrent trials hold all but a fraction of
    the CPUs: the trials then wait forever.
    """
    import ray.data

    files = list(paths) if listed else fs.list_files(paths, pattern="*.parquet")
    if not files:
        raise FileNotFoundError(f"no Parquet shards (*.parquet) found at {paths}")
    dataset = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    if shuffle:
        dataset = dataset.randomize_block_order()  # one file per block; reseeded per execution
    else:
        dataset.context.execution_options.preserve_order = True  # this dataset's own context copy
    dataset.context.target_max_block_size = BLOCK_BYTES
    return dataset.map_batches(_read_shards, fn_kwargs={"cache": cache}, batch_size=1, batch_format="pyarrow",
                               num_cpus=READ_CPUS)


def _read_shards(paths: pa.Table, cache: ShardCache | None = None) -> Iterator[pa.Table]:
    """Stream each shard's row groups, only the columns training uses (through ``cache`` if given)."""
    for path in paths.column("path").to_pylist():
        try:
            with _open_shard(path, cache) as f:
                shard = pq.ParquetFile(f)
                for group in range(shard.num_row_groups):
                    yield shard.read_row_group(group, columns=COLUMNS)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{path}: cannot read Parquet shard: {exc}") from exc


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


__all__ = ["BLOCK_BYTES", "COLUMNS", "READ_CPUS", *_FROM_BATCH, "iter_video_batches", "read_videos"]
