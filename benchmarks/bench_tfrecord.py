"""Single-core decode throughput of frame-level TFRecords, against a floor and an independent reader.

    .venv/bin/python benchmarks/bench_tfrecord.py [--videos 1000] [--dir /tmp/yt8m_bench]

Writes one frame-level file (90% of the videos with 300 frames, the rest 1..299), pins the process to one core
and reports videos/s (best of ``--repeats`` passes over a warm page cache) for:

  floor      read each record's bytes and ``np.frombuffer(frame bytes).astype(float32)``: no parsing, no CRC
  ours       ``read_frame_level``: both CRCs, protobuf parse, starter decode to float32 [300, 1152]
  tfrecord   the ``tfrecord`` package (protobuf parse, no CRC check) + join + frombuffer + the same decode
  tf.data    TFRecordDataset + parse_single_sequence_example + decode_raw + dequantize (only if TF is installed)

plus Parquet conversion throughput (one process) and Parquet read-back decode.
"""

from __future__ import annotations

import os

# One core: BLAS/OpenMP pools must be sized before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, RGB_DIM  # noqa: E402
from yt8m_search.data import QuantizedVideo, quantize, read_frame_level, write_frame_level  # noqa: E402
from yt8m_search.data.parquet import COMPRESSION, convert, read_parquet_videos  # noqa: E402
from yt8m_search.data.tfrecord import (  # noqa: E402
    encode_frame_level,
    frames_to_features,
    iter_frame_level_quantized,
    iter_records,
)


def _videos(count: int, seed: int = 0) -> Iterator[QuantizedVideo]:
    rng = np.random.default_rng(seed)
    # A bank of realistic-looking quantized frames (std ~0.35 around 0), sampled per video: fast to build.
    bank = quantize(rng.normal(0.0, 0.35, size=(4096, FEATURE_DIM)).astype(np.float32))
    for i in range(count):
        n = MAX_FRAMES if rng.random() < 0.9 else int(rng.integers(1, MAX_FRAMES))
        frames = bank[rng.integers(0, len(bank), n)]
        yield QuantizedVideo(f"b{i:06d}", rng.integers(0, 3862, 3), frames[:, :RGB_DIM], frames[:, RGB_DIM:])


def _best_rate(fn: Callable[[], int], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - start))
    return best


def _floor(path: str, record_sizes: list[tuple[int, int]]) -> int:
    with open(path, "rb", buffering=1 << 20) as f:
        for length, frame_bytes in record_sizes:
            buf = f.read(length + 16)
            np.frombuffer(buf, np.uint8, count=frame_bytes, offset=12).astype(np.float32)
    return len(record_sizes)


def _ours(path: str) -> int:
    return sum(1 for _ in read_frame_level(path))


def _tfrecord_package(path: str) -> int:
    from tfrecord.reader import sequence_loader

    count = 0
    for _, lists in sequence_loader(path, None, ["id", "labels"], ["rgb", "audio"]):
        rgb = np.frombuffer(b"".join(lists["rgb"]), np.uint8).reshape(-1, RGB_DIM)
        audio = np.frombuffer(b"".join(lists["audio"]), np.uint8).reshape(-1, AUDIO_DIM)
        frames_to_features(rgb, audio)
        count += 1
    return count


def _tf_data(path: str) -> Callable[[], int] | None:
    try:
        import tensorflow as tf  # type: ignore[import-not-found]
    except ImportError:
        return None
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    ctx = {"id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}
    seq = {k: tf.io.FixedLenSequenceFeature([], tf.string) for k in ("rgb", "audio")}

    def decode(serialized: object) -> object:
        _, lists = tf.io.parse_single_sequence_example(serialized, ctx, seq)
        parts = []
        for name, dim in (("rgb", RGB_DIM), ("audio", AUDIO_DIM)):
            x = tf.reshape(tf.cast(tf.io.decode_raw(lists[name], tf.uint8), tf.float32), [-1, dim])
            x = x[:MAX_FRAMES] * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)
            parts.append(tf.pad(x, [[0, MAX_FRAMES - tf.shape(x)[0]], [0, 0]]))
        return tf.concat(parts, axis=1)

    dataset = tf.data.TFRecordDataset(path).map(decode)
    return lambda: sum(1 for _ in dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/yt8m_bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    path = os.path.join(args.dir, "bench0000.tfrecord")

    videos = list(_videos(args.videos))
    start = time.perf_counter()
    write_frame_level(path, videos)
    write_s = time.perf_counter() - start
    # (payload length, frame bytes) per record, for the floor
    sizes = [(len(encode_frame_level(v)), len(v.rgb) * FEATURE_DIM) for v in videos]
    file_mb = os.path.getsize(path) / 1e6
    mean_frames = np.mean([len(v.rgb) for v in videos])
    print(f"file: {args.videos} videos, {mean_frames:.0f} frames on average, {file_mb:.0f} MB "
          f"(written in {write_s:.1f} s, {file_mb / write_s:.0f} MB/s); one core, best of {args.repeats}\n")

    rows: list[tuple[str, float]] = []
    floor = _best_rate(lambda: _floor(path, sizes), args.repeats)
    rows.append(("floor: read + frombuffer + astype(float32)", floor))
    rows.append(("ours: iter_records (framing + both CRCs)",
                 _best_rate(lambda: sum(1 for _ in iter_records(path)), args.repeats)))
    rows.append(("ours: iter_frame_level_quantized (uint8)",
                 _best_rate(lambda: sum(1 for _ in iter_frame_level_quantized(path)), args.repeats)))
    ours = _best_rate(lambda: _ours(path), args.repeats)
    rows.append(("ours: read_frame_level -> [300,1152] f32", ours))
    package = _best_rate(lambda: _tfrecord_package(path), args.repeats)
    rows.append(("tfrecord 1.14.6 + join + frombuffer + decode", package))
    tf_fn = _tf_data(path)
    if tf_fn is not None:
        rows.append(("tf.data parse_single_sequence_example", _best_rate(tf_fn, args.repeats)))

    print(f"{'reader':<48} {'videos/s':>10} {'MB/s':>8} {'vs floor':>9}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>10.0f} {rate * file_mb / args.videos:>8.0f} {rate / floor:>9.2f}")
    if tf_fn is None:
        print("tf.data: skipped (tensorflow is not installed)")
    print(f"\nours / tfrecord package: {ours / package:.2f}x; ours / floor: {ours / floor:.2f}")

    out = os.path.join(args.dir, "parquet")
    start = time.perf_counter()
    report = convert([path], out, workers=1, progress=False)
    convert_s = time.perf_counter() - start
    pq_mb = report.shards[0].output_bytes / 1e6
    print(f"\nparquet convert (1 process): {1 / convert_s:.2f} shards/s, {file_mb / convert_s:.0f} MB/s of "
          f"TFRecord, {args.videos / convert_s:.0f} videos/s; output {pq_mb:.0f} MB "
          f"({pq_mb / file_mb:.2f} of input, {COMPRESSION}, first 300 frames)")
    pq_rate = _best_rate(lambda: sum(1 for _ in read_parquet_videos(out)), args.repeats)
    print(f"parquet read_parquet_videos -> [300,1152] f32: {pq_rate:.0f} videos/s")


if __name__ == "__main__":
    main()
