"""TFRecord -> Parquet conversion, resume, skip-bad, readers and S3 (yt8m_search.data.parquet)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, RGB_DIM
from yt8m_search.data import CorruptRecordError, QuantizedVideo, fs, read_frame_level, write_frame_level
from yt8m_search.data.parquet import (
    COMPRESSION,
    FRAME_SCHEMA,
    VIDEO_SCHEMA,
    convert,
    decode_frame_batch,
    main,
    read_parquet_videos,
)
from yt8m_search.data.tfrecord import VideoLevelRecord, encode_record, read_video_level, write_video_level


def _videos(seed: int, count: int, first: int = 0) -> list[QuantizedVideo]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.choice([1, 7, 40, 300, 340]))
        m = n if i % 5 else max(0, n - 3)  # a few videos with fewer audio frames
        out.append(QuantizedVideo(f"s{seed}v{first + i}", rng.integers(0, 3862, size=int(rng.integers(0, 5))),
                                  rng.integers(0, 256, (n, RGB_DIM), dtype=np.uint8),
                                  rng.integers(0, 256, (m, AUDIO_DIM), dtype=np.uint8)))
    return out


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    src = tmp_path / "tfr"
    src.mkdir()
    paths = []
    for k, count in enumerate([9, 4, 6]):
        path = str(src / f"train{k:04d}.tfrecord")
        write_frame_level(path, _videos(k, count))
        paths.append(path)
    (src / "README.txt").write_text("not a shard")  # ignored when converting a directory
    return paths


def _assert_same(parquet_path: str, tfrecord_paths: list[str]) -> None:
    got = list(read_parquet_videos(parquet_path))
    want = [r for p in tfrecord_paths for r in read_frame_level(p)]
    assert [r.id for r in got] == [r.id for r in want]
    for a, b in zip(got, want):
        assert a.num_frames == b.num_frames
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features, b.features)


def test_round_trip_equals_read_frame_level(tmp_path: Path, shards: list[str]) -> None:
    out = tmp_path / "pq"
    report = convert(os.path.dirname(shards[0]), str(out), workers=1, progress=False)
    assert [s.status for s in report.shards] == ["converted"] * 3
    assert report.num_rows == 19 and not report.bad_records
    assert sorted(os.listdir(out)) == ["train0000.parquet", "train0001.parquet", "train0002.parquet"]
    for src in shards:
        dst = str(out / (Path(src).stem + ".parquet"))
        _assert_same(dst, [src])
        table = pq.read_table(dst)
        assert table.schema.equals(FRAME_SCHEMA)
        nf = table.column("num_frames").to_numpy()
        assert nf.max() <= MAX_FRAMES
        lengths = np.array([len(b) for b in table.column("rgb").to_pylist()])
        np.testing.assert_array_equal(lengths, nf * RGB_DIM)
        na = table.column("num_audio_frames").to_numpy()
        np.testing.assert_array_equal([len(b) for b in table.column("audio").to_pylist()], na * AUDIO_DIM)
    _assert_same(str(out), shards)  # a directory reads all files in order
    # the first 300 frames are stored byte-exact
    video = _videos(0, 9)[3]
    row = pq.read_table(out / "train0000.parquet").slice(3, 1).to_pylist()[0]
    assert row["rgb"] == video.rgb[:MAX_FRAMES].tobytes() and row["id"] == video.id


def test_decode_frame_batch(tmp_path: Path, shards: list[str]) -> None:
    convert(shards[0], str(tmp_path), workers=1, progress=False)
    table = pq.read_table(tmp_path / "train0000.parquet").slice(2, 5)  # a sliced table: offsets matter
    batch = decode_frame_batch(table, num_classes=3862)
    want = list(read_frame_level(shards[0]))[2:7]
    assert batch["features"].shape == (5, MAX_FRAMES, FEATURE_DIM)
    for i, r in enumerate(want):
        assert batch["id"][i] == r.id and batch["num_frames"][i] == r.num_frames
        np.testing.assert_array_equal(batch["features"][i], r.features)
        np.testing.assert_array_equal(np.flatnonzero(batch["labels"][i]), r.labels)


def test_resume_skips_verified_and_redoes_invalid(tmp_path: Path, shards: list[str]) -> None:
    out = tmp_path / "pq"
    convert(shards, str(out), workers=1, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = convert(shards, str(out), workers=1, progress=False)
    assert [s.status for s in again.shards] == ["skipped"] * 3 and again.num_rows == 19
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    (out / "train0001.parquet").write_bytes(b"PAR1 half written")  # not a complete file
    good = (out / "train0000.parquet").read_bytes()
    (out / "train0002.parquet").write_bytes(good)  # a valid file, but for another source
    third = convert(shards, str(out), workers=1, progress=False)
    assert [s.status for s in third.shards] == ["skipped", "converted", "converted"]
    _assert_same(str(out), shards)
    assert sorted(os.listdir(out)) == sorted(mtimes)  # no temp files left behind


def test_strict_mode_raises_and_leaves_no_partial_output(tmp_path: Path, shards: list[str]) -> None:
    data = bytearray(Path(shards[1]).read_bytes())
    data[-10] ^= 0xFF  # inside the data of the last record (index 3): data CRC mismatch
    Path(shards[1]).write_bytes(bytes(data))
    out = tmp_path / "pq"
    with pytest.raises(CorruptRecordError, match=r"train0001.tfrecord, record 3: data CRC mismatch") as info:
        convert(shards[1], str(out), workers=1, progress=False)
    assert info.value.record_index == 3
    assert not out.exists() or os.listdir(out) == []


def test_skip_bad_keeps_every_good_record(tmp_path: Path, shards: list[str]) -> None:
    # shard 0: record 4 has a data-CRC error; shard 2 is truncated inside its last record
    records = [encode_record(p) for p in _payloads(shards[0])]
    damaged = bytearray(records[4])
    damaged[30] ^= 0x01
    records[4] = bytes(damaged)
    Path(shards[0]).write_bytes(b"".join(records))
    data = Path(shards[2]).read_bytes()
    Path(shards[2]).write_bytes(data[:-50])
    out = tmp_path / "pq"

    report = convert(shards, str(out), workers=1, skip_bad=True, progress=False)
    bad = {(Path(b.path).name, b.record_index): b.reason for b in report.bad_records}
    assert set(bad) == {("train0000.tfrecord", 4), ("train0002.tfrecord", 5)}
    assert "data CRC mismatch" in bad[("train0000.tfrecord", 4)]
    assert "remaining records after offset" in bad[("train0002.tfrecord", 5)]
    assert report.num_rows == 19 - 2
    ids = [r.id for r in read_parquet_videos(str(out))]
    expected = [v.id for k, n in enumerate([9, 4, 6]) for v in _videos(k, n)]
    expected.remove("s0v4")
    expected.remove("s2v5")
    assert ids == expected
    assert "bad records skipped: 2" in report.summary()

    # the resumed run reports the same skipped records, and a strict run refuses those shards
    again = convert(shards, str(out), workers=1, skip_bad=True, progress=False)
    assert [s.status for s in again.shards] == ["skipped"] * 3 and len(again.bad_records) == 2
    with pytest.raises(CorruptRecordError):
        convert(shards, str(out), workers=1, progress=False)


def _payloads(path: str) -> Iterator[bytes]:
    from yt8m_search.data import iter_records

    return iter_records(path)


def test_parallel_workers_match_serial(tmp_path: Path, shards: list[str]) -> None:
    serial = convert(shards, str(tmp_path / "a"), workers=1, progress=False)
    parallel = convert(shards, str(tmp_path / "b"), workers=2, progress=False)
    assert [s.num_rows for s in serial.shards] == [s.num_rows for s in parallel.shards]
    for name in os.listdir(tmp_path / "a"):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))


def test_parallel_strict_failure_propagates(tmp_path: Path, shards: list[str]) -> None:
    Path(shards[2]).write_bytes(Path(shards[2]).read_bytes()[:-3])
    with pytest.raises(CorruptRecordError, match="train0002.tfrecord, record 5: truncated"):
        convert(shards, str(tmp_path / "pq"), workers=2, progress=False)
    assert "train0002.parquet" not in os.listdir(tmp_path / "pq")


def test_video_level_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    records = [VideoLevelRecord(f"v{i}", np.array([i, 2 * i]), rng.normal(size=FEATURE_DIM).astype(np.float32))
               for i in range(5)]
    src = str(tmp_path / "video0.tfrecord")
    write_video_level(src, records)
    report = convert([src], str(tmp_path / "pq"), workers=1, level="video", progress=False)
    assert report.num_rows == 5
    table = pq.read_table(tmp_path / "pq" / "video0.parquet")
    assert table.schema.equals(VIDEO_SCHEMA)
    for r, row in zip(read_video_level(src), table.to_pylist(), strict=True):
        assert row["id"] == r.id and row["labels"] == r.labels.tolist()
        np.testing.assert_array_equal(np.array(row["mean_rgb"], np.float32), r.mean_rgb)
        np.testing.assert_array_equal(np.array(row["mean_audio"], np.float32), r.mean_audio)


def test_cli(tmp_path: Path, shards: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    glob = os.path.join(os.path.dirname(shards[0]), "train000[01].tfrecord")
    assert main([glob, "--output", str(tmp_path / "pq"), "--workers", "1", "--no-progress"]) == 0
    assert "shards: 2 (2 converted, 0 already done)" in capsys.readouterr().out
    Path(shards[0]).write_bytes(b"garbage that is not a tfrecord file")
    assert main([shards[0], "--output", str(tmp_path / "pq2"), "--no-progress"]) == 2
    assert "not a TFRecord file?" in capsys.readouterr().err


def _codecs(path: Path) -> set[str]:
    meta = pq.ParquetFile(path).metadata
    return {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)}


def test_default_codec_is_none_and_zstd_shards_still_read(tmp_path: Path, shards: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Shards are written uncompressed (decoding is the loader's cost; frames barely compress), and
    shards written with zstd before still read, through every reader, and count as converted."""
    import pyarrow as pa

    from yt8m_search.data.batch import collate_table
    from yt8m_search.data.loading import _read_shards

    assert COMPRESSION == "none"
    convert(shards[0], str(tmp_path / "new"), workers=1, progress=False)
    convert(shards[0], str(tmp_path / "old"), workers=1, progress=False, compression="zstd")
    new, old = tmp_path / "new" / "train0000.parquet", tmp_path / "old" / "train0000.parquet"
    assert _codecs(new) == {"UNCOMPRESSED"} and _codecs(old) == {"ZSTD"}
    _assert_same(str(old), [shards[0]])
    assert pq.read_table(old).equals(pq.read_table(new))
    read = [pa.concat_tables(_read_shards(pa.table({"paths": [[str(p)]]}))) for p in (new, old)]  # memory-mapped
    assert read[0].equals(read[1]) and read[0].num_rows == 9
    a, b = (collate_table(t, num_classes=3862) for t in read)
    assert a.ids == b.ids and np.array_equal(a.features.numpy(), b.features.numpy())
    again = convert(shards[0], str(tmp_path / "old"), workers=1, progress=False)  # default codec: resumes
    assert [s.status for s in again.shards] == ["skipped"] and _codecs(old) == {"ZSTD"}
    assert main([shards[1], "--output", str(tmp_path / "cli"), "--compression", "lz4", "--no-progress"]) == 0
    assert _codecs(tmp_path / "cli" / "train0001.parquet") == {"LZ4"} and "1 converted" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# S3 via a local moto server


def test_s3_round_trip(tmp_path: Path, s3_bucket: str) -> None:
    videos = _videos(3, 5)
    for k in range(2):
        write_frame_level(f"{s3_bucket}/tfr/train{k:04d}.tfrecord", videos[k::2])
    assert fs.list_files(f"{s3_bucket}/tfr/*.tfrecord") == [f"{s3_bucket}/tfr/train0000.tfrecord",
                                                           f"{s3_bucket}/tfr/train0001.tfrecord"]
    assert [v.id for v in read_frame_level(f"{s3_bucket}/tfr/train0001.tfrecord")] == ["s3v1", "s3v3"]

    report = convert(f"{s3_bucket}/tfr", f"{s3_bucket}/pq", workers=2, progress=False)
    assert report.num_rows == 5 and fs.exists(f"{s3_bucket}/pq/train0000.parquet")
    got = {r.id: r for r in read_parquet_videos(f"{s3_bucket}/pq")}
    local = str(tmp_path / "local.tfrecord")
    write_frame_level(local, videos)
    for r in read_frame_level(local):
        np.testing.assert_array_equal(got[r.id].features, r.features)
    again = convert(f"{s3_bucket}/tfr", f"{s3_bucket}/pq", workers=1, progress=False)
    assert [s.status for s in again.shards] == ["skipped", "skipped"]


def test_training_reader_streams_row_groups_from_s3(s3_bucket: str) -> None:
    import pyarrow as pa

    from yt8m_search.data.batch import COLUMNS
    from yt8m_search.data.loading import _read_shards

    write_frame_level(f"{s3_bucket}/rg/train0000.tfrecord", _videos(5, 7))
    convert(f"{s3_bucket}/rg", f"{s3_bucket}/rg-pq", workers=1, progress=False)
    shard = f"{s3_bucket}/rg-pq/train0000.parquet"
    tables = list(_read_shards(pa.table({"paths": [[shard]]})))  # Parquet needs ranged reads: a seekable file
    assert sum(t.num_rows for t in tables) == 7 and tables[0].column_names == list(COLUMNS)
