"""Only the ids and labels of Parquet frame-level shards (column projection: no frames are read), for
the class-prior baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError

__all__ = ["read_labels"]


def read_labels(files: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """(video ids, int32 class-id arrays) of every row of the Parquet ``files``, in file order.

    Raises CorruptRecordError naming the file when one cannot be read or lacks the columns."""
    ids: list[str] = []
    labels: list[np.ndarray] = []
    for path in files:
        filesystem, inner = fs.resolve(path)
        try:
            with filesystem.open_input_file(inner) as f:
                table = pq.read_table(f, columns=["id", "labels"])
        except (pa.ArrowException, OSError, ValueError) as err:
            raise CorruptRecordError(path, None, f"cannot read its id and labels columns: {err}") from err
        ids.extend(table.column("id").to_pylist())
        column = table.column("labels").combine_chunks()
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        labels.extend(values[offsets[i]:offsets[i + 1]] for i in range(len(column)))
    return ids, labels
