"""TFRecord framing, protobuf parsing/writing and starter-exact decoding (yt8m_search.data.tfrecord)."""

from __future__ import annotations

import struct
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tfrecord import example_pb2
from tfrecord.reader import sequence_loader, tfrecord_loader
from tfrecord.writer import TFRecordWriter

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.data import (
    CorruptRecordError,
    QuantizedVideo,
    VideoLevelRecord,
    dequantize,
    frames_to_features,
    iter_frame_level_quantized,
    iter_records,
    multi_hot,
    quantize,
    read_frame_level,
    read_video_level,
    write_frame_level,
    write_video_level,
)
from yt8m_search.data.tfrecord import encode_frame_level, encode_record, masked_crc32c, write_records


def _video(rng: np.random.Generator, i: int, n: int, m: int | None = None, labels: list[int] | None = None
           ) -> QuantizedVideo:
    m = n if m is None else m
    return QuantizedVideo(
        id=f"vid{i}",
        labels=np.array(labels if labels is not None else rng.integers(0, NUM_CLASSES, 3), dtype=np.int64),
        rgb=rng.integers(0, 256, (n, RGB_DIM), dtype=np.uint8),
        audio=rng.integers(0, 256, (m, AUDIO_DIM), dtype=np.uint8),
    )


def _reference_decode(rgb: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """Spec §1.8, written independently of the module: dequantize in float32, then zero-pad."""
    x = np.zeros((300, 1152), np.float32)
    n = min(len(rgb), 300)
    m = min(len(audio), 300)
    x[:n, :1024] = rgb[:n].astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    x[:m, 1024:] = audio[:m].astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    return x, n


# ---------------------------------------------------------------------------------------------------------------
# hand-built protobuf pieces (independent of the module's encoder)


def _vint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _ld(field: int, payload: bytes) -> bytes:
    return _vint(field << 3 | 2) + _vint(len(payload)) + payload


def _entry(key: str, value: bytes) -> bytes:
    return _ld(1, _ld(1, key.encode()) + _ld(2, value))


def _bytes_feat(*values: bytes) -> bytes:
    return _ld(1, b"".join(_ld(1, v) for v in values))


def _unpacked_int64_feat(*values: int) -> bytes:
    return _ld(3, b"".join(_vint(1 << 3 | 0) + _vint(v % (1 << 64)) for v in values))


def _frames_list(frames: list[bytes]) -> bytes:
    return b"".join(_ld(1, _bytes_feat(f)) for f in frames)


def _seq_example(context: dict[str, bytes], lists: dict[str, bytes]) -> bytes:
    return (_ld(1, b"".join(_entry(k, v) for k, v in context.items()))
            + _ld(2, b"".join(_entry(k, v) for k, v in lists.items())))


def _good_parts(n: int = 3) -> tuple[dict[str, bytes], dict[str, bytes]]:
    context = {"id": _bytes_feat(b"abc"), "labels": _unpacked_int64_feat(5, 2)}
    lists = {"rgb": _frames_list([bytes([i]) * RGB_DIM for i in range(n)]),
             "audio": _frames_list([bytes([i]) * AUDIO_DIM for i in range(n)])}
    return context, lists


def _write_tf_package(path: Path, payloads: list[bytes]) -> None:
    """Frame payloads with the independent tfrecord package's CRC code."""
    with open(path, "wb") as f:
        for p in payloads:
            length = struct.pack("<Q", len(p))
            f.write(length + TFRecordWriter.masked_crc(length) + p + TFRecordWriter.masked_crc(p))


# ---------------------------------------------------------------------------------------------------------------
# CRC and framing


def test_crc32c_test_vector_and_mask() -> None:
    assert crc32c.crc32c(b"123456789") == 0xE3069283
    # rotate right by 15 then add 0xa282ead8: 0xe3069283 -> 0x2507c60d -> 0xc78ab0e5 (worked by hand)
    assert masked_crc32c(b"123456789") == 0xC78AB0E5
    assert masked_crc32c(b"") == 0xA282EAD8


def test_framing_matches_independent_writer(tmp_path: Path) -> None:
    payloads = [b"", b"x", bytes(range(256)) * 3]
    _write_tf_package(tmp_path / "ref.tfrecord", payloads)
    ours = b"".join(encode_record(p) for p in payloads)
    assert ours == (tmp_path / "ref.tfrecord").read_bytes()
    assert len(encode_record(b"x")) == 1 + 16
    assert list(iter_records(str(tmp_path / "ref.tfrecord"))) == payloads


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    assert list(read_frame_level(str(tmp_path / "empty.tfrecord"))) == []


# ---------------------------------------------------------------------------------------------------------------
# frame level round trips


def test_frame_level_round_trip_and_starter_semantics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    videos = [
        _video(rng, 0, 300),
        _video(rng, 1, 1, labels=[7, 3, 7, 3861, 0]),  # unsorted with duplicates
        _video(rng, 2, 450),  # > 300 frames: truncated
        _video(rng, 3, 10, m=7),  # audio shorter than rgb: padded independently
        _video(rng, 4, 5, m=320),
        _video(rng, 5, 0, labels=[]),
    ]
    path = str(tmp_path / "f.tfrecord")
    assert write_frame_level(path, videos) == len(videos)

    quantized = list(iter_frame_level_quantized(path))
    decoded = list(read_frame_level(path))
    assert len(quantized) == len(decoded) == len(videos)
    for v, q, d in zip(videos, quantized, decoded, strict=True):
        assert q.id == d.id == v.id
        expected_labels = np.unique(v.labels)
        np.testing.assert_array_equal(q.labels, expected_labels)
        np.testing.assert_array_equal(d.labels, expected_labels)
        assert d.labels.dtype == np.int32
        np.testing.assert_array_equal(q.rgb, v.rgb)  # all frames, exact uint8
        np.testing.assert_array_equal(q.audio, v.audio)
        ref, n = _reference_decode(v.rgb, v.audio)
        assert d.num_frames == n == min(len(v.rgb), MAX_FRAMES)
        assert d.features.shape == (MAX_FRAMES, FEATURE_DIM) and d.features.dtype == np.float32
        np.testing.assert_array_equal(d.features, ref)  # bit-exact
    # padding is exactly 0.0 (not dequantize(0) = -1.992), and real frames are never 0.0
    assert not decoded[1].features[1:].any()
    assert (decoded[3].features[7:, RGB_DIM:] == 0).all() and (decoded[3].features[:10, :RGB_DIM] != 0).all()
    np.testing.assert_array_equal(decoded[1].labels, [0, 3, 7, 3861])


def test_encoding_is_byte_identical_to_protobuf() -> None:
    rng = np.random.default_rng(1)
    v = _video(rng, 0, 4, labels=[3, 17, 3861])
    ours = encode_frame_level(v)
    msg = example_pb2.SequenceExample()
    msg.ParseFromString(ours)
    assert msg.context.feature["id"].bytes_list.value == [b"vid0"]
    assert list(msg.context.feature["labels"].int64_list.value) == [3, 17, 3861]
    rgb = msg.feature_lists.feature_list["rgb"].feature
    assert [f.bytes_list.value[0] for f in rgb] == [row.tobytes() for row in v.rgb]
    assert msg.SerializeToString(deterministic=True) == ours


def test_independent_reader_reads_our_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    videos = [_video(rng, i, n) for i, n in enumerate([3, 300, 1])]
    path = str(tmp_path / "f.tfrecord")
    write_frame_level(path, videos)
    loaded = list(sequence_loader(path, None, {"id": "byte", "labels": "int"}, {"rgb": "byte", "audio": "byte"}))
    assert len(loaded) == len(videos)
    for v, (context, lists) in zip(videos, loaded):
        assert context["id"] == v.id.encode()
        np.testing.assert_array_equal(context["labels"], v.labels)
        assert b"".join(lists["rgb"]) == v.rgb.tobytes()
        assert b"".join(lists["audio"]) == v.audio.tobytes()


def test_reads_files_of_independent_writer(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, RGB_DIM), dtype=np.uint8)
    audio = rng.integers(0, 256, (6, AUDIO_DIM), dtype=np.uint8)
    path = tmp_path / "ref.tfrecord"
    writer = TFRecordWriter(str(path))
    writer.write({"id": (b"Ab3d", "byte"), "labels": ([17, 3, 17], "int")},
                 {"rgb": ([r.tobytes() for r in rgb], "byte"), "audio": ([a.tobytes() for a in audio], "byte")})
    writer.close()
    (v,) = iter_frame_level_quantized(str(path))
    assert v.id == "Ab3d"
    np.testing.assert_array_equal(v.labels, [3, 17])
    np.testing.assert_array_equal(v.rgb, rgb)
    np.testing.assert_array_equal(v.audio, audio)


def test_unpacked_labels_and_general_frame_path(tmp_path: Path) -> None:
    context, lists = _good_parts(3)
    # A non-canonical frame (an unknown field 9 inside the Feature) forces the general parser for rgb.
    odd = _ld(1, _bytes_feat(b"\x07" * RGB_DIM) + _vint(9 << 3) + _vint(1))
    lists["rgb"] = _frames_list([b"\x00" * RGB_DIM]) + odd
    lists["audio"] = _frames_list([b"\x00" * AUDIO_DIM, b"\x07" * AUDIO_DIM])
    context["mean_rgb"] = _ld(2, b"")  # extra context keys (as the extractor writes) are ignored
    path = tmp_path / "hand.tfrecord"
    _write_tf_package(path, [_seq_example(context, lists)])
    (v,) = iter_frame_level_quantized(str(path))
    assert v.id == "abc"
    np.testing.assert_array_equal(v.labels, [2, 5])
    assert v.rgb.shape == (2, RGB_DIM) and (v.rgb[1] == 7).all() and (v.rgb[0] == 0).all()
    assert v.audio.shape == (2, AUDIO_DIM) and (v.audio[1] == 7).all()


# ---------------------------------------------------------------------------------------------------------------
# video level


def test_video_level_round_trip_and_independent_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    records = [VideoLevelRecord(f"v{i}", np.array(lab), rng.normal(size=FEATURE_DIM).astype(np.float32))
               for i, lab in enumerate([[4, 1, 4], [], [3861]])]
    path = str(tmp_path / "video.tfrecord")
    assert write_video_level(path, records) == 3
    back = list(read_video_level(path))
    for r, b in zip(records, back, strict=True):
        assert b.id == r.id
        np.testing.assert_array_equal(b.labels, np.unique(r.labels))
        np.testing.assert_array_equal(b.features, r.features)
        np.testing.assert_array_equal(b.mean_audio, r.features[RGB_DIM:])
    desc = {"id": "byte", "labels": "int", "mean_rgb": "float", "mean_audio": "float"}
    for r, ex in zip(records, tfrecord_loader(path, None, desc), strict=True):
        assert ex["id"] == r.id.encode()
        np.testing.assert_array_equal(ex["mean_rgb"], r.features[:RGB_DIM])
        np.testing.assert_array_equal(ex["mean_audio"], r.features[RGB_DIM:])


# ---------------------------------------------------------------------------------------------------------------
# numeric helpers


def test_quantize_dequantize() -> None:
    x = np.array([-5.0, -2.0, -1e-3, 0.0, 1.0, 2.0, 7.0], np.float32)
    q = quantize(x)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 0, 127, 128, 191, 255, 255])  # 127.5 rounds half to even
    grid = np.linspace(-2, 2, 1001, dtype=np.float32)
    # dequantize carries the starter's +4/512 half-bucket bias, so the error bound is one full step
    assert np.abs(dequantize(quantize(grid)) - grid).max() <= 4 / 255 / 2 + 4 / 512 + 1e-6
    assert dequantize(np.array([0], np.uint8))[0] == np.float32(4 / 512 - 2)


def test_frames_to_features_into_batch_row() -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (12, RGB_DIM), dtype=np.uint8)
    audio = rng.integers(0, 256, (12, AUDIO_DIM), dtype=np.uint8)
    batch = np.full((2, 20, FEATURE_DIM), np.nan, np.float32)
    _, n = frames_to_features(rgb, audio, max_frames=20, out=batch[1])
    assert n == 12
    expected = np.zeros((20, FEATURE_DIM), np.float32)
    expected[:12] = dequantize(np.concatenate([rgb, audio], axis=1))
    np.testing.assert_array_equal(batch[1], expected)
    assert np.isnan(batch[0]).all()


def test_multi_hot() -> None:
    y = multi_hot(np.array([3, 3, 0]), 5)
    assert y.dtype == np.bool_ and y.tolist() == [True, False, False, True, False]
    assert multi_hot([], 4, dtype=np.float32).tolist() == [0, 0, 0, 0]
    assert multi_hot([NUM_CLASSES - 1]).shape == (NUM_CLASSES,)
    with pytest.raises(ValueError):
        multi_hot([5], 5)


# ---------------------------------------------------------------------------------------------------------------
# bad input: every case raises CorruptRecordError naming the file and the record index


def _file_with_bad_record(tmp_path: Path, bad_payload: bytes, index: int = 1) -> Path:
    good = _seq_example(*_good_parts())
    payloads = [good] * 3
    payloads[index] = bad_payload
    path = tmp_path / "bad.tfrecord"
    _write_tf_package(path, payloads)
    return path


def _raw_file(tmp_path: Path, mutate: str) -> tuple[Path, int, str]:
    """A 3-record file damaged at the byte level; returns (path, expected record index, message part)."""
    rec = encode_record(_seq_example(*_good_parts()))
    data = bytearray(rec * 3)
    path = tmp_path / "gs.tfrecord"
    if mutate == "length_crc":
        data[len(rec) + 9] ^= 0xFF
        expected = (1, "length CRC mismatch")
    elif mutate == "length_value":
        data[2 * len(rec)] ^= 0x01  # the length itself: its CRC no longer matches
        expected = (2, "length CRC mismatch")
    elif mutate == "data_crc":
        data[len(rec) + 20] ^= 0x01
        expected = (1, "data CRC mismatch")
    elif mutate == "footer_crc":
        data[2 * len(rec) - 1] ^= 0x01
        expected = (1, "data CRC mismatch")
    elif mutate == "partial_header":
        data = data[: 2 * len(rec) + 5]
        expected = (2, "partial record header")
    elif mutate == "partial_data":
        data = data[: 2 * len(rec) + 100]
        expected = (2, "(partial data)")
    elif mutate == "partial_footer":
        data = data[:-2]
        expected = (2, "partial data CRC footer")
    else:
        raise AssertionError(mutate)
    path.write_bytes(bytes(data))
    return path, *expected


@pytest.mark.parametrize("mutate", ["length_crc", "length_value", "data_crc", "footer_crc", "partial_header",
                                    "partial_data", "partial_footer"])
def test_framing_errors(tmp_path: Path, mutate: str) -> None:
    path, index, part = _raw_file(tmp_path, mutate)
    with pytest.raises(CorruptRecordError) as info:
        list(read_frame_level(str(path)))
    err = info.value
    assert err.path == str(path) and err.record_index == index
    assert f"gs.tfrecord, record {index}: " in str(err) and part in str(err)
    assert err.recoverable == (mutate in ("data_crc", "footer_crc"))


def test_not_a_tfrecord_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is a plain text file and not a TFRecord at all\n" * 3)
    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), parquet)
    for path in (text, parquet):
        with pytest.raises(CorruptRecordError, match=r"record 0: length CRC mismatch .*not a TFRecord file\?"):
            list(read_frame_level(str(path)))


def _without(d: dict[str, bytes], key: str) -> dict[str, bytes]:
    return {k: v for k, v in d.items() if k != key}


def _bad_payloads() -> dict[str, tuple[bytes, str]]:
    context, lists = _good_parts()
    return {
        "garbage": (b"\xff\xff\xff\xff", "malformed record"),
        "wire_type_group": (b"\x0b", "unsupported wire type"),
        "overrun": (b"\x0a\x10abc", "past its message"),
        "missing_rgb": (_seq_example(context, _without(lists, "rgb")), "missing feature list 'rgb'"),
        "missing_audio": (_seq_example(context, _without(lists, "audio")), "missing feature list 'audio'"),
        "missing_id": (_seq_example(_without(context, "id"), lists), "missing feature 'id'"),
        "id_two_values": (_seq_example({**context, "id": _bytes_feat(b"a", b"b")}, lists), "holds 2 values"),
        "labels_as_bytes": (_seq_example({**context, "labels": _bytes_feat(b"1")}, lists), "expected int64_list"),
        "label_too_big": (_seq_example({**context, "labels": _unpacked_int64_feat(1, NUM_CLASSES)}, lists),
                          f"label {NUM_CLASSES} outside 0..{NUM_CLASSES - 1}"),
        "label_negative": (_seq_example({**context, "labels": _unpacked_int64_feat(-1)}, lists),
                           "label -1 outside"),
        "rgb_frame_size": (_seq_example(context, {**lists, "rgb": _frames_list([b"\x00" * 1000])}),
                           "rgb frame 0 has 1000 bytes, expected 1024"),
        "audio_frame_size": (_seq_example(context, {**lists, "audio": _frames_list([b"\x00" * 128] * 2
                                                                                    + [b"\x00" * 129])}),
                             "audio frame 2 has 129 bytes, expected 128"),
        "frame_two_values": (_seq_example(context, {**lists, "rgb": _ld(1, _bytes_feat(b"\x00" * 1024,
                                                                                       b"\x00" * 1024))}),
                             "rgb frame 0 holds 2 values"),
        "frame_floats": (_seq_example(context, {**lists, "rgb": _ld(1, _ld(2, b""))}),
                         "rgb frame 0 is a float_list"),
    }


@pytest.mark.parametrize("case", sorted(_bad_payloads()))
def test_malformed_records(tmp_path: Path, case: str) -> None:
    payload, part = _bad_payloads()[case]
    path = _file_with_bad_record(tmp_path, payload, index=1)
    with pytest.raises(CorruptRecordError) as info:
        list(iter_frame_level_quantized(str(path)))
    assert info.value.record_index == 1 and info.value.recoverable
    assert "bad.tfrecord, record 1: malformed record" in str(info.value)
    assert part in str(info.value)


def test_video_level_errors(tmp_path: Path) -> None:
    good = {"id": _bytes_feat(b"x"), "labels": _unpacked_int64_feat(1),
            "mean_rgb": _ld(2, _ld(1, b"\x00" * 4 * RGB_DIM)), "mean_audio": _ld(2, _ld(1, b"\x00" * 4 * AUDIO_DIM))}
    cases = {
        "mean_rgb": (_without(good, "mean_rgb"), "missing feature 'mean_rgb'"),
        "mean_audio": (_without(good, "mean_audio"), "missing feature 'mean_audio'"),
        "short": ({**good, "mean_rgb": _ld(2, _ld(1, b"\x00" * 4 * 1000))}, "holds 1000 floats, expected 1024"),
    }
    for name, (features, part) in cases.items():
        path = tmp_path / f"{name}.tfrecord"
        _write_tf_package(path, [_ld(1, b"".join(_entry(k, v) for k, v in good.items())),
                                 _ld(1, b"".join(_entry(k, v) for k, v in features.items()))])
        with pytest.raises(CorruptRecordError, match=rf"{name}.tfrecord, record 1: .*{part}"):
            list(read_video_level(str(path)))
    # a frame-level file is not a video-level one
    frame_file = tmp_path / "frame.tfrecord"
    _write_tf_package(frame_file, [_seq_example(*_good_parts())])
    with pytest.raises(CorruptRecordError, match="record 0: .*missing feature"):
        list(read_video_level(str(frame_file)))


def test_on_error_skips_recoverable_and_stops_after_framing_errors(tmp_path: Path) -> None:
    path = _file_with_bad_record(tmp_path, b"\xff\xff", index=1)
    errors: list[CorruptRecordError] = []
    ids = [v.id for v in iter_frame_level_quantized(str(path), on_error=errors.append)]
    assert ids == ["abc", "abc"] and [e.record_index for e in errors] == [1]

    path, _, _ = _raw_file(tmp_path, "data_crc")
    errors = []
    assert len(list(read_frame_level(str(path), on_error=errors.append))) == 2
    assert [e.record_index for e in errors] == [1]

    path, _, _ = _raw_file(tmp_path, "length_crc")
    errors = []
    assert len(list(read_frame_level(str(path), on_error=errors.append))) == 1
    assert [e.record_index for e in errors] == [1] and "remaining records after offset" in errors[0].reason


def test_writer_rejects_float_frames(tmp_path: Path) -> None:
    bad = QuantizedVideo("x", np.array([1]), np.zeros((2, RGB_DIM), np.float32), np.zeros((2, AUDIO_DIM), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_frame_level(str(tmp_path / "x.tfrecord"), [bad])
    assert not (tmp_path / "x.tfrecord").exists()  # atomic: nothing left behind
    assert not list(tmp_path.iterdir())


def test_write_records_counts(tmp_path: Path) -> None:
    assert write_records(str(tmp_path / "r.tfrecord"), [b"a", b"bc"]) == 2
    assert list(iter_records(str(tmp_path / "r.tfrecord"))) == [b"a", b"bc"]
