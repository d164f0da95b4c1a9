"""TFRecord shards -> Parquet shards (one per input), and the readers for those Parquet files.

Frames stay quantized (uint8 bytes, ~4x smaller than float32) and only the first 300 are kept, so a row holds
exactly what the starter reader would use; decoding shares :func:`frames_to_features` with the TFRecord reader.

Conversion is resumable: each output is written under a temp name and renamed only when complete, and its footer
carries key-value metadata (source size, row count, skipped records). A re-run skips a shard whose output opens,
has the expected schema and row count, and was made from a source of the same size; anything else is redone.

Usage::

    python -m yt8m_search.data.parquet data/frame/train*.tfrecord --output parquet/train --workers 8
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.tfrecord import (
    FrameLevelRecord,
    frames_to_features,
    iter_frame_level_quantized,
    multi_hot,
    read_video_level,
)

__all__ = [
    "FRAME_SCHEMA",
    "VIDEO_SCHEMA",
    "ROW_GROUP_SIZE",
    "BATCH_COLUMNS",
    "COMPRESSION",
    "BadRecord",
    "ShardResult",
    "ConversionReport",
    "convert",
    "read_parquet_videos",
    "decode_frame_batch",
    "main",
]

_LABELS = pa.list_(pa.field("element", pa.int32(), nullable=False))

FRAME_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("labels", _LABELS, nullable=False),  # sorted unique class ids
    pa.field("num_frames", pa.int32(), nullable=False),  # min(rgb frames, 300)
    pa.field("rgb", pa.binary(), nullable=False),  # uint8 [num_frames, 1024] row-major
    pa.field("num_audio_frames", pa.int32(), nullable=False),  # min(audio frames, 300)
    pa.field("audio", pa.binary(), nullable=False),  # uint8 [num_audio_frames, 128] row-major
])

VIDEO_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("labels", _LABELS, nullable=False),
    pa.field("mean_rgb", pa.list_(pa.float32(), RGB_DIM), nullable=False),
    pa.field("mean_audio", pa.list_(pa.float32(), AUDIO_DIM), nullable=False),
])

# The frame-level columns a batch is built from (``yt8m_search.data.batch.collate_table``); defined
# here, torch-free, for the loader's read tasks.
BATCH_COLUMNS = ["id", "labels", "num_frames", "num_audio_frames", "rgb", "audio"]

# ~256 x 350 KB = ~90 MB of frame bytes per row group: big enough for efficient scans, small enough to stream.
ROW_GROUP_SIZE = 256

# No codec by default. Quantized frames are close to incompressible: lz4 and snappy find nothing to
# match (their files come out as large as uncompressed ones) and only zstd's entropy stage saves ~17%,
# while decoding is the training loader's main cost: on one core, 500 synthetic videos (bench_loader)
# read at 2,200 videos/s from zstd (104 MB), 8,000 from lz4 (126 MB), 7,500 from snappy (125 MB) and
# 11,700 uncompressed (125 MB). A training node runs short of CPU long before disk or network.
# Shards written with any codec (the earlier zstd ones included) read the same.
COMPRESSION = "none"

_FORMATS = {"frame": ("yt8m-frame-v1", FRAME_SCHEMA), "video": ("yt8m-video-v1", VIDEO_SCHEMA)}
_META = "yt8m_search."
_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")


@dataclass(frozen=True)
class BadRecord:
    """A record skipped because it was corrupt (``record_index`` None when not tied to one record)."""

    path: str
    record_index: int | None
    reason: str

    @classmethod
    def from_error(cls, err: CorruptRecordError) -> BadRecord:
        return cls(err.path, err.record_index, err.reason)

    def __str__(self) -> str:
        return f"{self.path}, record {self.record_index}: {self.reason}"


@dataclass(frozen=True)
class ShardResult:
    """What happened to one input shard."""

    source: str
    output: str
    status: str  # "converted" or "skipped" (already converted and verified)
    num_rows: int
    bad_records: tuple[BadRecord, ...] = ()
    source_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0


@dataclass
class ConversionReport:
    """Per-shard results of :func:`convert`, in input order."""

    shards: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def converted(self) -> list[ShardResult]:
        return [s for s in self.shards if s.status == "converted"]

    @property
    def skipped(self) -> list[ShardResult]:
        return [s for s in self.shards if s.status == "skipped"]

    @property
    def bad_records(self) -> list[BadRecord]:
        return [b for s in self.shards for b in s.bad_records]

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def summary(self) -> str:
        converted = self.converted
        mb = sum(s.source_bytes for s in converted) / 1e6
        out_mb = sum(s.output_bytes for s in converted) / 1e6
        lines = [
            f"shards: {len(self.shards)} ({len(converted)} converted, {len(self.skipped)} already done)",
            f"rows: {self.num_rows}; converted {mb:.1f} MB of TFRecords into {out_mb:.1f} MB of Parquet "
            f"in {self.seconds:.1f} s ({mb / max(self.seconds, 1e-9):.1f} MB/s)",
            f"bad records skipped: {len(self.bad_records)}",
        ]
        lines += [f"  {b}" for b in self.bad_records]
        return "\n".join(lines)


def _output_name(source: str) -> str:
    name = fs.basename(source)
    for suffix in _TFRECORD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".parquet"
    return name + ".parquet"


def plan(inputs: str | Sequence[str], output_dir: str) -> list[tuple[str, str]]:
    """(source, output) pairs: one ``<stem>.parquet`` in ``output_dir`` per TFRecord input."""
    sources = fs.list_files(inputs, pattern="*.tfrecord*")
    if not sources:
        raise FileNotFoundError(f"no TFRecord files in {inputs}")
    pairs = [(s, fs.join(output_dir, _output_name(s))) for s in sources]
    outputs = [o for _, o in pairs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two inputs map to the same output name; convert them into separate directories")
    return pairs


def convert(inputs: str | Sequence[str], output_dir: str, *, workers: int | None = None, skip_bad: bool = False,
            progress: bool = True, level: str = "frame", compression: str = COMPRESSION) -> ConversionReport:
    """Convert TFRecord shards to one Parquet file per shard (``<stem>.parquet`` in ``output_dir``).

    Args:
        inputs: files, a directory (its ``*.tfrecord*`` files) or globs; local or s3://.
        output_dir: local directory or s3:// prefix.
        workers: parallel processes (default: CPU count); 1 converts in this process.
        skip_bad: skip and report corrupt records instead of failing on the first one.
        progress: show a tqdm bar over shards.
        level: "frame" (SequenceExample, FRAME_SCHEMA) or "video" (Example, VIDEO_SCHEMA).
        compression: the Parquet codec (see ``COMPRESSION``); an existing verified shard is kept whatever its codec.

    Raises:
        CorruptRecordError: without ``skip_bad``, for the first corrupt record; its shard leaves no output.
    """
    if level not in _FORMATS:
        raise ValueError(f"level must be one of {sorted(_FORMATS)}, got {level!r}")
    start = time.perf_counter()
    pairs = plan(inputs, output_dir)
    fs.makedirs(output_dir)
    workers = min(workers or os.cpu_count() or 1, len(pairs))
    results: dict[int, ShardResult] = {}
    bar = progress_bar(len(pairs), progress)
    try:
        if workers == 1:
            for i, (src, dst) in enumerate(pairs):
                results[i] = convert_shard(src, dst, skip_bad, level, compression)
                advance_progress(bar, results[i])
        else:
            _convert_parallel(pairs, workers, skip_bad, level, compression, results, bar)
    finally:
        if bar is not None:
            bar.close()
    return ConversionReport([results[i] for i in range(len(pairs))], time.perf_counter() - start)


def _convert_parallel(pairs: list[tuple[str, str]], workers: int, skip_bad: bool, level: str, compression: str,
                      results: dict[int, ShardResult], bar: Any) -> None:
    # spawn, not fork: forking a process whose pyarrow/S3 thread pools are running can deadlock the child.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(convert_shard, s, d, skip_bad, level, compression): i
                   for i, (s, d) in enumerate(pairs)}
        try:
            for future in cf.as_completed(futures):
                results[futures[future]] = future.result()
                advance_progress(bar, results[futures[future]])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # only the CLI-facing path needs it

    return tqdm(total=total, unit="shard", desc="tfrecord->parquet")


def advance_progress(bar: Any, result: ShardResult) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"{result.status} {fs.basename(result.source)}", refresh=False)


def convert_shard(source: str, output: str, skip_bad: bool, level: str,
                  compression: str = COMPRESSION) -> ShardResult:
    """Convert one shard, or skip it when a complete, verified output of the same source exists."""
    start = time.perf_counter()
    source_bytes = fs.file_size(source)
    done = _verified(output, source_bytes, skip_bad, level)
    if done is not None:
        return done
    tag, schema = _FORMATS[level]
    bad: list[BadRecord] = []
    on_error = (lambda e: bad.append(BadRecord.from_error(e))) if skip_bad else None
    rows = _frame_rows(source, on_error) if level == "frame" else _video_rows(source, on_error)
    num_rows = 0
    with fs.atomic_output(output) as f:
        # No dictionaries or min/max statistics for the frame blobs: useless there and costly.
        small = [n for n in ("id", "num_frames", "num_audio_frames") if n in schema.names]
        writer = pq.ParquetWriter(f, schema, compression=compression, use_dictionary=False,
                                  write_statistics=small)
        try:
            for table in _tables(rows, schema):
                writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
                num_rows += table.num_rows
            writer.add_key_value_metadata({
                _META + "format": tag,
                _META + "source": source,
                _META + "source_bytes": str(source_bytes),
                _META + "num_rows": str(num_rows),
                _META + "bad_records": json.dumps([[b.record_index, b.reason] for b in bad]),
            })
        finally:
            writer.close()
    if _verified(output, source_bytes, True, level) is None:  # read back the footer we just wrote
        raise OSError(f"{output}: the written shard does not verify (schema, row count or source size)")
    return ShardResult(source, output, "converted", num_rows, tuple(bad), source_bytes,
                       fs.file_size(output), time.perf_counter() - start)


def _verified(output: str, source_bytes: int, skip_bad: bool, level: str) -> ShardResult | None:
    """The result recorded in an existing, complete output; None when it must be (re)converted."""
    if not fs.exists(output):
        return None
    tag, schema = _FORMATS[level]
    try:
        filesystem, inner = fs.resolve(output)
        with filesystem.open_input_file(inner) as f:
            pf = pq.ParquetFile(f)
            meta = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
            ok = (meta.get(_META + "format") == tag
                  and pf.schema_arrow.equals(schema)
                  and meta.get(_META + "source_bytes") == str(source_bytes)
                  and meta.get(_META + "num_rows") == str(pf.metadata.num_rows))
            bad = tuple(BadRecord(meta[_META + "source"], i, r)
                        for i, r in json.loads(meta.get(_META + "bad_records", "[]")))
            num_rows = pf.metadata.num_rows
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    if not ok or (bad and not skip_bad):
        return None  # a strict run must not accept a shard that lost records
    return ShardResult(meta[_META + "source"], output, "skipped", num_rows, bad, source_bytes,
                       fs.file_size(output))


def _frame_rows(source: str, on_error: Any) -> Iterator[tuple[Any, ...]]:
    for v in iter_frame_level_quantized(source, on_error=on_error):
        rgb, audio = v.rgb[:MAX_FRAMES], v.audio[:MAX_FRAMES]
        yield v.id, v.labels, len(rgb), rgb, len(audio), audio


def _video_rows(source: str, on_error: Any) -> Iterator[tuple[Any, ...]]:
    for r in read_video_level(source, on_error=on_error):
        yield r.id, r.labels, r.mean_rgb, r.mean_audio


def _tables(rows: Iterable[tuple[Any, ...]], schema: pa.Schema) -> Iterator[pa.Table]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == ROW_GROUP_SIZE:
            yield _table(batch, schema)
            batch = []
    if batch:
        yield _table(batch, schema)


def _table(batch: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*batch, strict=True))
    arrays: list[pa.Array] = []
    for f, values in zip(schema, columns, strict=True):
        if f.name == "labels":
            offsets = np.cumsum([0] + [len(v) for v in values], dtype=np.int32)
            flat = np.concatenate(values).astype(np.int32) if values else np.zeros(0, np.int32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), type=f.type))
        elif pa.types.is_fixed_size_list(f.type):
            flat = np.concatenate(values).astype(np.float32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), type=f.type))
        elif pa.types.is_binary(f.type):
            arrays.append(_binary_array(values))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _binary_array(frames: Sequence[np.ndarray]) -> pa.Array:
    """A binary array of uint8 frame blocks built with one copy (no intermediate bytes objects)."""
    sizes = np.array([f.size for f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)  # < 2 GiB: 256 rows x 353 KB
    data = np.concatenate([f.reshape(-1) for f in frames]) if len(frames) else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(pa.binary(), len(frames), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _binary_column(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy (offsets int64 [n + 1], data uint8) of a binary array."""
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, count=len(column) + 1, offset=column.offset * 4)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def _frame_rows_of(batch: pa.RecordBatch | pa.Table) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(id, labels int32, rgb uint8 [n, 1024], audio uint8 [m, 128])`` per row of a FRAME_SCHEMA batch."""
    if isinstance(batch, pa.Table):
        for b in batch.to_batches():
            yield from _frame_rows_of(b)
        return
    ids = batch.column("id").to_pylist()
    labels = batch.column("labels")
    label_offsets = np.frombuffer(labels.buffers()[1], np.int32, count=len(labels) + 1, offset=labels.offset * 4)
    # .values ignores the array's slice offset, and so do the raw offsets: index it with them directly.
    label_values = labels.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    columns = {}
    for name, dim in (("rgb", RGB_DIM), ("audio", AUDIO_DIM)):
        offsets, data = _binary_column(batch.column(name))
        counts = batch.column("num_frames" if name == "rgb" else "num_audio_frames").to_numpy()
        if not np.array_equal(np.diff(offsets), counts.astype(np.int64) * dim):
            raise ValueError(f"{name} byte lengths do not match the frame counts")
        columns[name] = (offsets, data, dim)
    for i, video_id in enumerate(ids):
        frames = []
        for offsets, data, dim in columns.values():
            frames.append(data[offsets[i]:offsets[i + 1]].reshape(-1, dim))
        yield video_id, label_values[label_offsets[i]:label_offsets[i + 1]], frames[0], frames[1]


def read_parquet_videos(path: str | Sequence[str], *, max_frames: int = MAX_FRAMES,
                        batch_size: int = 64) -> Iterator[FrameLevelRecord]:
    """Yield the videos of FRAME_SCHEMA Parquet file(s), decoded exactly like ``read_frame_level``.

    Args:
        path: a file, directory, glob or list of them (local or s3://); files are read in sorted order.
    """
    for file in fs.list_files(path, pattern="*.parquet"):
        filesystem, inner = fs.resolve(file)
        with filesystem.open_input_file(inner) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                for video_id, labels, rgb, audio in _frame_rows_of(batch):
                    features, num_frames = frames_to_features(rgb, audio, max_frames=max_frames)
                    yield FrameLevelRecord(video_id, labels, features, num_frames)


def decode_frame_batch(batch: pa.RecordBatch | pa.Table, *, max_frames: int = MAX_FRAMES,
                       num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Decode a FRAME_SCHEMA batch (e.g. from Ray Data with ``batch_format="pyarrow"``) to model inputs.

    Returns:
        ``id`` object [B], ``features`` float32 [B, max_frames, 1152], ``num_frames`` int32 [B],
        ``labels`` float32 [B, num_classes] multi-hot.
    """
    n = batch.num_rows
    features = np.empty((n, max_frames, FEATURE_DIM), np.float32)
    num_frames = np.empty(n, np.int32)
    labels = np.zeros((n, num_classes), np.float32)
    ids = np.empty(n, dtype=object)
    for i, (video_id, label_ids, rgb, audio) in enumerate(_frame_rows_of(batch)):
        _, num_frames[i] = frames_to_features(rgb, audio, max_frames=max_frames, out=features[i])
        labels[i] = multi_hot(label_ids, num_classes, dtype=np.float32)
        ids[i] = video_id
    return {"id": ids, "features": features, "num_frames": num_frames, "labels": labels}


# ---------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.data.parquet", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="TFRecord files, directories or globs (local or s3://)")
    parser.add_argument("--output", "-o", required=True, help="output directory or s3:// prefix")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report corrupt records")
    parser.add_argument("--level", choices=sorted(_FORMATS), default="frame")
    parser.add_argument("--compression", choices=["none", "lz4", "snappy", "zstd"], default=COMPRESSION,
                        help=f"Parquet codec (default {COMPRESSION}: frames barely compress, decoding costs CPU)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = convert(args.inputs, args.output, workers=args.workers, skip_bad=args.skip_bad,
                         progress=not args.no_progress, level=args.level, compression=args.compression)
    except (CorruptRecordError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    # Run the package module's main (not this __main__ copy) so worker processes unpickle the same functions.
    from yt8m_search.data import parquet as _module

    sys.exit(_module.main())
