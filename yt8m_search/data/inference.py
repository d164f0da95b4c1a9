"""Inference batches over TFRecord files or Parquet shards (``predict``, ``evaluate``, the ensemble step).

DATA is frame-level TFRecord files, Parquet shards (as written by ``yt8m_search.data.parquet``), or
folders or globs of them, local or s3://. Both formats become the same padded ``VideoBatch`` objects
(one collation, ``data.batch``): the videos are regrouped into batches of exactly ``batch_size`` (the
last one shorter) across files, each padded to its longest video and dequantized like the starter, so
a TFRecord file and its Parquet conversion give identical batches and identical predictions.

Corrupt input, as the data layer defines it: a damaged TFRecord record raises ``CorruptRecordError``
naming the file and record; with ``skip_bad`` (``--skip-bad``) the record is skipped and reported
(after a framing error the rest of that file cannot be read). An unreadable Parquet file raises the
same error type; with ``skip_bad`` the rest of that file is skipped and reported.

No ray here: reading for inference needs no cluster.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.data.batch import COLUMNS, VideoBatch, collate_table, collate_videos
from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.tfrecord import QuantizedVideo, iter_frame_level_quantized

__all__ = ["DEFAULT_BATCH_SIZE", "PARQUET_SUFFIXES", "TFRECORD_SUFFIXES", "data_files", "iter_batches"]

DEFAULT_BATCH_SIZE = 256
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
PARQUET_SUFFIXES = (".parquet",)

OnBad = Callable[[CorruptRecordError], None]


def data_files(data: str | Sequence[str]) -> list[str]:
    """The TFRecord and Parquet files named by ``data`` (files, folders, globs; local or s3://), sorted."""
    specs = [data] if isinstance(data, str) else list(data)
    files: list[str] = []
    for spec in specs:
        listed = fs.list_files(spec)  # FileNotFoundError for a missing path or an empty glob
        usable = [f for f in listed if f.lower().endswith(TFRECORD_SUFFIXES + PARQUET_SUFFIXES)]
        if not usable:
            raise FileNotFoundError(f"no .tfrecord or .parquet files at {spec}")
        files.extend(usable)
    return list(dict.fromkeys(files))


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _parquet_rows(path: str, skip_bad: bool, on_bad: OnBad) -> Iterator[pa.Table]:
    """The rows of one Parquet shard in record batches; read errors become CorruptRecordError."""
    filesystem, inner = fs.resolve(path)
    try:
        with filesystem.open_input_file(inner) as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise CorruptRecordError(path, None, f"not a frame-level shard: missing columns {missing}")
            for batch in parquet.iter_batches(batch_size=1024, columns=COLUMNS):
                yield pa.Table.from_batches([batch])
    except (pa.ArrowException, OSError, ValueError) as err:
        error = err if isinstance(err, CorruptRecordError) else CorruptRecordError(
            path, None, f"unreadable Parquet file: {err}")
        if not skip_bad:
            raise error from err
        on_bad(error)


def _num_rows(path: str) -> int:
    filesystem, inner = fs.resolve(path)
    with filesystem.open_input_file(inner) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def _total_videos(files: list[str]) -> int | None:
    """The number of videos when every file is Parquet (its footer says); None otherwise."""
    if not all(_is_parquet(f) for f in files):
        return None
    try:
        return sum(_num_rows(f) for f in files)
    except (pa.ArrowException, OSError, ValueError):
        return None  # the bar counts without a total; the reader reports the damage


def _warn(err: CorruptRecordError) -> None:
    print(f"skipping corrupt input: {err}", file=sys.stderr)


def iter_batches(
    data: str | Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_classes: int = NUM_CLASSES,
    skip_bad: bool = False,
    on_bad: OnBad | None = None,
    progress: bool = False,
    desc: str = "videos",
    dequantize: bool = True,
) -> Iterator[VideoBatch]:
    """Padded ``VideoBatch`` objects (CPU) over DATA, ``batch_size`` videos each.

    ``skip_bad``: skip corrupt records (TFRecord) or the unreadable rest of a file (Parquet), calling
    ``on_bad`` with each error (default: a line on stderr) instead of raising it. ``dequantize=False``
    keeps the frames uint8 until ``VideoBatch.to(device)`` (4x less to copy to a GPU; same values).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = data_files(data)
    regroup = _Regrouper(batch_size, num_classes, dequantize)
    # disable=None: a bar only when stderr is a terminal
    with tqdm(total=_total_videos(files), unit="video", desc=desc, disable=None if progress else True,
              file=sys.stderr) as bar:
        for batch in regroup.batches(files, skip_bad, on_bad or _warn):
            bar.update(len(batch))
            yield batch


class _Regrouper:
    """Regroups the videos of a sequence of files into batches of exactly ``batch_size`` (the last one
    shorter). Parquet rows and TFRecord videos wait in separate queues; a switch of format between
    files flushes the other format's pending videos first, so batches keep the files' order."""

    def __init__(self, batch_size: int, num_classes: int, dequantize: bool) -> None:
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.dequantize = dequantize
        self.tables: list[pa.Table] = []  # pending Parquet rows
        self.pending = 0  # their number
        self.videos: list[QuantizedVideo] = []  # pending TFRecord videos

    def batches(self, files: list[str], skip_bad: bool, on_bad: OnBad) -> Iterator[VideoBatch]:
        for path in files:
            if _is_parquet(path):
                yield from self._flush_videos()
                yield from self._parquet(path, skip_bad, on_bad)
            else:
                yield from self._flush_tables()
                yield from self._tfrecord(path, on_bad if skip_bad else None)
        yield from self._flush_tables()
        yield from self._flush_videos()

    def _parquet(self, path: str, skip_bad: bool, on_bad: OnBad) -> Iterator[VideoBatch]:
        for table in _parquet_rows(path, skip_bad, on_bad):
            self.tables.append(table)
            self.pending += table.num_rows
            while self.pending >= self.batch_size:
                merged = pa.concat_tables(self.tables)
                yield self._from_table(merged.slice(0, self.batch_size))
                rest = merged.slice(self.batch_size)
                self.tables, self.pending = ([rest] if rest.num_rows else []), rest.num_rows

    def _tfrecord(self, path: str, on_error: OnBad | None) -> Iterator[VideoBatch]:
        for video in iter_frame_level_quantized(path, num_classes=self.num_classes, on_error=on_error):
            self.videos.append(video)
            if len(self.videos) == self.batch_size:
                yield from self._flush_videos()

    def _flush_tables(self) -> Iterator[VideoBatch]:
        if self.tables and self.pending:
            yield self._from_table(pa.concat_tables(self.tables))
        self.tables, self.pending = [], 0

    def _flush_videos(self) -> Iterator[VideoBatch]:
        if self.videos:
            yield collate_videos(self.videos, num_classes=self.num_classes, dequantize=self.dequantize)
        self.videos = []

    def _from_table(self, table: pa.Table) -> VideoBatch:
        return collate_table(table, num_classes=self.num_classes, dequantize=self.dequantize)
