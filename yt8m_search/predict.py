"""Kaggle submission from an ensemble bundle, and the batch iterator shared with ``evaluate``.

DATA is frame-level TFRecord files, Parquet shards (as written by ``yt8m_search.data.parquet``), or
folders or globs of them, local or s3://. Both formats become the same padded ``VideoBatch`` objects:
the videos are regrouped into batches of exactly ``batch_size`` (the last one shorter) across files,
each padded to its longest video and dequantized like the starter, so a TFRecord file and its Parquet
conversion give identical batches and identical predictions.

Corrupt input, as the data layer defines it: a damaged TFRecord record raises ``CorruptRecordError``
naming the file and record; with ``--skip-bad`` the record is skipped and reported (after a framing
error the rest of that file cannot be read). An unreadable Parquet file raises the same error type;
with ``--skip-bad`` the rest of that file is skipped and reported.

Output (spec §9): ``VideoId,LabelConfidencePairs`` then per video ``<id>,<class> <score> ...``, the
top 20 classes by score descending, ``"%i %g"`` per pair, written atomically.

Usage::

    python -m yt8m_search.predict BUNDLE DATA [DATA ...] --out submission.csv [--batch-size N]
        [--device cpu|cuda] [--skip-bad]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.loading import COLUMNS, VideoBatch, collate_table, dequantize_batch
from yt8m_search.data.tfrecord import QuantizedVideo, iter_frame_level_quantized

__all__ = ["DEFAULT_BATCH_SIZE", "HEADER", "data_files", "format_line", "iter_batches", "main", "predict"]

DEFAULT_BATCH_SIZE = 256
HEADER = "VideoId,LabelConfidencePairs"
TOP_K = 20
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
PARQUET_SUFFIXES = (".parquet",)


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


def _collate_videos(videos: Sequence[QuantizedVideo], num_classes: int, dequantize: bool = True) -> VideoBatch:
    """Quantized TFRecord videos -> ``VideoBatch``, built exactly as ``collate_table`` builds Parquet rows."""
    num_rgb = np.array([min(len(v.rgb), MAX_FRAMES) for v in videos], np.int64)
    num_audio = np.array([min(len(v.audio), MAX_FRAMES) for v in videos], np.int64)
    frames = int(max(num_rgb.max(initial=0), num_audio.max(initial=0), 1))
    quantized = np.zeros((len(videos), frames, FEATURE_DIM), np.uint8)
    labels = np.zeros((len(videos), num_classes), np.float32)
    for i, v in enumerate(videos):
        quantized[i, : num_rgb[i], :RGB_DIM] = v.rgb[: num_rgb[i]]
        quantized[i, : num_audio[i], RGB_DIM:] = v.audio[: num_audio[i]].reshape(-1, AUDIO_DIM)
        labels[i, np.asarray(v.labels, np.int64)] = 1.0
    rgb_t, audio_t = torch.from_numpy(num_rgb), torch.from_numpy(num_audio)
    features = torch.from_numpy(quantized)
    return VideoBatch(
        features=dequantize_batch(features, rgb_t, audio_t) if dequantize else features,
        mask=torch.arange(frames)[None, :] < rgb_t[:, None],
        num_frames=rgb_t,
        num_audio_frames=audio_t,
        labels=torch.from_numpy(labels),
        ids=[v.id for v in videos],
    )


def _parquet_rows(path: str, skip_bad: bool, on_bad: Callable[[CorruptRecordError], None]) -> Iterator[pa.Table]:
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


def _warn(err: CorruptRecordError) -> None:
    print(f"skipping corrupt input: {err}", file=sys.stderr)


def iter_batches(
    data: str | Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_classes: int = NUM_CLASSES,
    skip_bad: bool = False,
    on_bad: Callable[[CorruptRecordError], None] | None = None,
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
    report = on_bad or _warn
    total = None
    if all(_is_parquet(f) for f in files):
        try:
            total = sum(_num_rows(f) for f in files)
        except (pa.ArrowException, OSError, ValueError):
            total = None  # the bar counts without a total; the reader reports the damage
    from tqdm import tqdm

    # disable=None: a bar only when stderr is a terminal
    with tqdm(total=total, unit="video", desc=desc, disable=None if progress else True, file=sys.stderr) as bar:
        for batch in _batches(files, batch_size, num_classes, skip_bad, report, dequantize):
            bar.update(len(batch))
            yield batch


def _batches(files: list[str], batch_size: int, num_classes: int, skip_bad: bool,
             report: Callable[[CorruptRecordError], None], dequantize: bool) -> Iterator[VideoBatch]:
    def from_table(table: pa.Table) -> VideoBatch:
        return collate_table(table, num_classes=num_classes, dequantize=dequantize)

    def from_videos(videos: list[QuantizedVideo]) -> VideoBatch:
        return _collate_videos(videos, num_classes, dequantize)

    tables: list[pa.Table] = []  # pending Parquet rows
    videos: list[QuantizedVideo] = []  # pending TFRecord videos
    pending = 0
    for path in files:
        if _is_parquet(path):
            if videos:  # a format switch: flush the other kind's pending videos first
                yield from_videos(videos)
                videos = []
            for table in _parquet_rows(path, skip_bad, report):
                tables.append(table)
                pending += table.num_rows
                while pending >= batch_size:
                    merged = pa.concat_tables(tables)
                    yield from_table(merged.slice(0, batch_size))
                    rest = merged.slice(batch_size)
                    tables, pending = ([rest] if rest.num_rows else []), rest.num_rows
        else:
            if tables:
                yield from_table(pa.concat_tables(tables))
                tables, pending = [], 0
            on_error = report if skip_bad else None
            for video in iter_frame_level_quantized(path, num_classes=num_classes, on_error=on_error):
                videos.append(video)
                if len(videos) == batch_size:
                    yield from_videos(videos)
                    videos = []
    if tables and pending:
        yield from_table(pa.concat_tables(tables))
    if videos:
        yield from_videos(videos)


def format_line(video_id: str, classes: Sequence[int], scores: Sequence[float]) -> str:
    """One submission line: ``<id>,<class> <score> ...`` with ``"%i %g"`` per pair (the starter's)."""
    return video_id + "," + " ".join("%i %g" % (int(c), float(s)) for c, s in zip(classes, scores))


def predict(
    bundle: Any,
    data: str | Sequence[str],
    out: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = TOP_K,
    skip_bad: bool = False,
    progress: bool = False,
) -> int:
    """Write the Kaggle submission of ``bundle`` (a loaded ``ensemble.Bundle``) over DATA to ``out``
    (atomically: nothing appears on error). Returns the number of videos."""
    device = next(bundle.parameters()).device
    count = 0
    with fs.atomic_output(out) as f:
        f.write((HEADER + "\n").encode())
        batches = iter_batches(data, batch_size=batch_size, num_classes=bundle.num_classes, skip_bad=skip_bad,
                               progress=progress, desc="predict", dequantize=device.type == "cpu")
        with torch.inference_mode():
            for batch in batches:
                batch = batch.to(device)
                probs = bundle.predict(batch.features, batch.mask)
                top = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)
                classes, scores = top.indices.cpu().numpy(), top.values.cpu().numpy()
                text = io.StringIO()
                for video_id, c, s in zip(batch.ids, classes, scores):
                    text.write(format_line(video_id, c, s) + "\n")
                f.write(text.getvalue().encode())
                count += len(batch.ids)
    return count


def _device(name: str | None) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``predict`` and ``evaluate`` share."""
    parser.add_argument("bundle", help="the ensemble bundle (python -m yt8m_search.ensemble writes it)")
    parser.add_argument("data", nargs="+", help="TFRecord files, Parquet shards, folders or globs (local or s3://)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report corrupt records")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.predict",
                                     description="Write a Kaggle submission (top 20 classes per video).")
    common_arguments(parser)
    parser.add_argument("--out", default="submission.csv", help="output CSV, local or s3:// (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    from yt8m_search.ensemble import load_bundle

    try:
        device = _device(args.device)
        bundle = load_bundle(args.bundle, device)
        data_files(args.data)  # missing inputs: exit 2 before any work
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        count = predict(bundle, args.data, args.out, batch_size=args.batch_size, skip_bad=args.skip_bad,
                        progress=not args.no_progress)
    except Exception as err:  # noqa: BLE001 - a CLI: the message on the last line, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {count} videos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
