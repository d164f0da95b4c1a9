"""Only the ids and labels of Parquet frame-level shards (column projection: no frames are read), for
the class-prior baseline. Files are read by a pool of threads: at YouTube-8M scale that is about 4,900
shards, and each S3 read is a round trip or two of latency, not CPU (pyarrow releases the GIL)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError

__all__ = ["READ_THREADS", "read_labels"]

READ_THREADS = 16  # files in flight at once


def _read_one(path: str) -> pa.Table:
    filesystem, inner = fs.resolve(path)
    try:
        with filesystem.open_input_file(inner) as f:
            return pq.read_table(f, columns=["id", "labels"])
    except (pa.ArrowException, OSError, ValueError) as err:
        raise CorruptRecordError(path, None, f"cannot read its id and labels columns: {err}") from err


def read_labels(files: Sequence[str], threads: int = READ_THREADS) -> tuple[list[str], list[np.ndarray]]:
    """(video ids, int32 class-id arrays) of every row of the Parquet ``files``, in file order, read
    ``threads`` files at a time.

    Raises CorruptRecordError naming the file when one cannot be read or lacks the columns (the first
    such file in file order)."""
    ids: list[str] = []
    labels: list[np.ndarray] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(files))))
    try:
        tables = list(pool.map(_read_one, files))
    finally:
        pool.shutdown(cancel_futures=True)  # a bad file: the files not yet started are not read
    for table in tables:
        ids.extend(table.column("id").to_pylist())
        column = table.column("labels").combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        labels.extend(values[offsets[i]:offsets[i + 1]] for i in range(len(column)))
    return ids, labels
