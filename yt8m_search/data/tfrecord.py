"""YouTube-8M TFRecord files without TensorFlow: framing, protobuf wire format, decode and encode.

Framing (spec §1.3): each record is ``uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)``,
little-endian; both CRCs are verified. Payloads are ``tf.train.SequenceExample`` (frame level: context ``id`` and
``labels``, feature lists ``rgb`` with 1024 bytes per frame and ``audio`` with 128) or ``tf.train.Example``
(video level: ``id``, ``labels``, ``mean_rgb`` [1024], ``mean_audio`` [128]). The protobuf wire format (§1.4) is
parsed by hand over index ranges of one record buffer, so nothing is copied until numpy needs it.

Frame lists take a fast path: when every frame has the canonical encoding ``0a <len> 0a <len> 0a <len> <D bytes>``,
the list is one strided numpy view after checking all per-frame headers at once; anything else (non-minimal
varints, unknown fields, merged messages) goes through the general parser, which gives the same result.

Decoding follows the starter reader exactly (§1.6, §1.8): dequantize ``q * 4/255 + 4/512 - 2`` in float32, keep
the first 300 frames, zero-pad after dequantizing, ``num_frames`` from rgb; labels are sorted unique class ids.
Any damage raises :class:`CorruptRecordError` naming the file and the record index.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

import crc32c
import numpy as np

from yt8m_search.constants import (
    AUDIO_DIM,
    DEQUANT_BIAS,
    DEQUANT_SCALE,
    FEATURE_DIM,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_DIM,
)
from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError

__all__ = [
    "QuantizedVideo",
    "FrameLevelRecord",
    "VideoLevelRecord",
    "ErrorHandler",
    "masked_crc32c",
    "iter_records",
    "iter_frame_level_quantized",
    "read_frame_level",
    "read_video_level",
    "frames_to_features",
    "dequantize",
    "quantize",
    "multi_hot",
    "encode_record",
    "encode_frame_level",
    "encode_video_level",
    "write_records",
    "write_frame_level",
    "write_video_level",
]

ErrorHandler = Callable[[CorruptRecordError], None]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_SCALE = np.float32(DEQUANT_SCALE)
_BIAS = np.float32(DEQUANT_BIAS)
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
# Feature oneof field numbers (feature.proto).
_BYTES, _FLOATS, _INT64S = 1, 2, 3
_KIND_NAMES = {_BYTES: "bytes_list", _FLOATS: "float_list", _INT64S: "int64_list", None: "no value"}


@dataclass(frozen=True, slots=True, eq=False)
class QuantizedVideo:
    """One frame-level video as stored: every frame, still uint8 (arrays may be read-only views)."""

    id: str
    labels: np.ndarray  # int32 [k], sorted unique when read; written as given
    rgb: np.ndarray  # uint8 [n, 1024]
    audio: np.ndarray  # uint8 [m, 128]; m == n in real data, but not enforced (the starter does not)


@dataclass(frozen=True, slots=True, eq=False)
class FrameLevelRecord:
    """One frame-level video decoded like the starter reader."""

    id: str
    labels: np.ndarray  # int32 [k] sorted unique class ids
    features: np.ndarray  # float32 [300, 1152]: rgb columns then audio, zero rows after the last frame
    num_frames: int  # min(rgb frames, 300)


@dataclass(frozen=True, slots=True, eq=False)
class VideoLevelRecord:
    """One video-level record: the mean of the dequantized frame features."""

    id: str
    labels: np.ndarray  # int32 [k] sorted unique class ids
    features: np.ndarray  # float32 [1152]: mean_rgb then mean_audio

    @property
    def mean_rgb(self) -> np.ndarray:
        return self.features[:RGB_DIM]

    @property
    def mean_audio(self) -> np.ndarray:
        return self.features[RGB_DIM:]


class _ProtoError(Exception):
    """A record's payload is not the expected protobuf; re-raised as CorruptRecordError with its location."""


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C: ``((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


# ---------------------------------------------------------------------------------------------------------------
# Framing


def _iter_framed(path: str, on_error: ErrorHandler | None) -> Iterator[tuple[int, int, bytes, int]]:
    """Yield ``(record_index, file_offset, buffer, length)``; the payload is ``buffer[:length]``.

    The buffer also holds the 4-byte data CRC, so slicing the payload out (a copy) is never needed.
    """
    size = fs.file_size(path)
    with fs.open_input(path) as f:
        offset = index = 0
        while offset < size:
            buf, length, err = _read_one(f, path, index, offset, size)
            if err is None:
                yield index, offset, buf, length
            else:
                _report(err, on_error)
                if not err.recoverable:
                    return
            offset += 16 + length
            index += 1


def _read_one(f: BinaryIO, path: str, index: int, offset: int,
              size: int) -> tuple[bytes, int, CorruptRecordError | None]:
    """Read the record at ``offset``; on a data-CRC error the framing is still valid and ``length`` usable."""

    def fail(reason: str) -> tuple[bytes, int, CorruptRecordError]:
        reason += f"; the remaining records after offset {offset} are unreadable"
        return b"", 0, CorruptRecordError(path, index, reason, offset=offset, recoverable=False)

    header = f.read(12)
    if len(header) < 12:
        return fail(f"truncated file: partial record header ({len(header)} of 12 bytes) at offset {offset}")
    length, length_crc = _HEADER.unpack(header)
    computed = masked_crc32c(header[:8])
    if computed != length_crc:
        hint = " (not a TFRecord file?)" if index == 0 else ""
        return fail(f"length CRC mismatch at offset {offset}{hint} "
                    f"(stored 0x{length_crc:08x}, computed 0x{computed:08x})")
    remaining = size - offset - 12
    if length + 4 > remaining:
        part = "data" if length > remaining else "data CRC footer"
        return fail(f"truncated file: record declares {length} data bytes + 4 CRC bytes but only {remaining} "
                    f"remain (partial {part})")
    buf = f.read(length + 4)
    if len(buf) < length + 4:
        return fail(f"truncated file: short read of record data at offset {offset}")
    (data_crc,) = _CRC.unpack_from(buf, length)
    computed = masked_crc32c(memoryview(buf)[:length])
    if computed != data_crc:
        reason = f"data CRC mismatch (stored 0x{data_crc:08x}, computed 0x{computed:08x})"
        return buf, length, CorruptRecordError(path, index, reason, offset=offset, recoverable=True)
    return buf, length, None


def _report(err: CorruptRecordError, on_error: ErrorHandler | None) -> None:
    if on_error is None:
        raise err
    on_error(err)


def iter_records(path: str, *, on_error: ErrorHandler | None = None) -> Iterator[bytes]:
    """Yield every record payload of a TFRecord file after verifying both CRCs.

    Args:
        path: local path or URI (``file://``, ``s3://``).
        on_error: called with each CorruptRecordError instead of raising it; iteration goes on after
            recoverable errors (data CRC) and stops after framing errors.
    """
    for _, _, buf, length in _iter_framed(path, on_error):
        yield buf[:length]


# ---------------------------------------------------------------------------------------------------------------
# Protobuf wire format


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint longer than 10 bytes")
    raise _ProtoError("truncated varint")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire_type, a, b)``: ``(start, end)`` for length-delimited and fixed-size fields,
    ``(value, next_pos)`` for varints."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ProtoError("field number 0")
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _ProtoError(f"field {field} runs {pos + n - end} bytes past its message")
            yield field, 2, pos, pos + n
            pos += n
        elif wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, 0, value, pos
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise _ProtoError(f"truncated fixed-size field {field}")
            yield field, wire, pos, pos + n
            pos += n
        else:
            raise _ProtoError(f"unsupported wire type {wire} for field {field}")


def _submessages(buf: bytes, start: int, end: int, field: int) -> Iterator[tuple[int, int]]:
    for f, wire, a, b in _fields(buf, start, end):
        if f == field:
            if wire != 2:
                raise _ProtoError(f"field {field} has wire type {wire}, expected a message")
            yield a, b


def _map(buf: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    """Parse ``map<string, Message> = 1`` (Features, FeatureLists) to ``{key: (value_start, value_end)}``."""
    entries: dict[str, tuple[int, int]] = {}
    for a, b in _submessages(buf, start, end, 1):
        key = b""
        value = (b, b)  # an absent value is an empty message
        for f, wire, c, d in _fields(buf, a, b):
            if wire != 2:
                continue
            if f == 1:
                key = buf[c:d]
            elif f == 2:
                value = (c, d)
        try:
            entries[key.decode()] = value  # later entries win, as in protobuf maps
        except UnicodeDecodeError:
            raise _ProtoError(f"map key {key!r} is not UTF-8") from None
    return entries


def _feature(buf: bytes, start: int, end: int) -> tuple[int | None, list[tuple[int, int]]]:
    """Parse a Feature: its oneof kind and the ranges of that list message (repeats merge, a new kind wins)."""
    kind: int | None = None
    ranges: list[tuple[int, int]] = []
    for f, wire, a, b in _fields(buf, start, end):
        if f in (_BYTES, _FLOATS, _INT64S) and wire == 2:
            if f != kind:
                kind, ranges = f, []
            ranges.append((a, b))
    return kind, ranges


def _bytes_values(buf: bytes, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a, b) for start, end in ranges for a, b in _submessages(buf, start, end, 1)]


def _int64_values(buf: bytes, ranges: list[tuple[int, int]]) -> list[int]:
    values: list[int] = []
    for start, end in ranges:
        for f, wire, a, b in _fields(buf, start, end):
            if f != 1:
                continue
            if wire == 0:
                values.append(a)
            elif wire == 2:  # packed
                pos = a
                while pos < b:
                    v, pos = _varint(buf, pos, b)
                    values.append(v)
            else:
                raise _ProtoError(f"int64 value with wire type {wire}")
    return values


def _float_values(buf: bytes, ranges: list[tuple[int, int]]) -> np.ndarray:
    chunks: list[np.ndarray] = []
    for start, end in ranges:
        for f, wire, a, b in _fields(buf, start, end):
            if f != 1:
                continue
            if wire not in (2, 5) or (b - a) % 4:
                raise _ProtoError(f"float value with wire type {wire} and {b - a} bytes")
            chunks.append(np.frombuffer(buf, "<f4", count=(b - a) // 4, offset=a))
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _typed(context: dict[str, tuple[int, int]], buf: bytes, name: str, kind: int,
           required: bool) -> list[tuple[int, int]] | None:
    if name not in context:
        if required:
            raise _ProtoError(f"missing feature {name!r}")
        return None
    got, ranges = _feature(buf, *context[name])
    if got is None and not required:
        return []
    if got != kind:
        raise _ProtoError(f"feature {name!r} is a {_KIND_NAMES[got]}, expected {_KIND_NAMES[kind]}")
    return ranges


def _parse_id(context: dict[str, tuple[int, int]], buf: bytes) -> str:
    values = _bytes_values(buf, _typed(context, buf, "id", _BYTES, True) or [])
    if len(values) != 1:
        raise _ProtoError(f"feature 'id' holds {len(values)} values, expected 1")
    a, b = values[0]
    try:
        return buf[a:b].decode()
    except UnicodeDecodeError:
        raise _ProtoError(f"id {buf[a:b]!r} is not UTF-8") from None


def _parse_labels(context: dict[str, tuple[int, int]], buf: bytes, num_classes: int) -> np.ndarray:
    ranges = _typed(context, buf, "labels", _INT64S, False)
    values = sorted(set(_int64_values(buf, ranges))) if ranges else []
    if values and values[-1] >= num_classes:
        # uint64 varints >= 2**63 are negative int64 values; both ends are out of range.
        bad = values[-1] - (1 << 64) if values[-1] >= 1 << 63 else values[-1]
        raise _ProtoError(f"label {bad} outside 0..{num_classes - 1}")
    return np.array(values, dtype=np.int32)


@lru_cache(maxsize=8)
def _frame_layout(dim: int) -> tuple[bytes, int]:
    """Canonical bytes before each frame's data in a FeatureList, and the per-frame stride."""
    bytes_list = 1 + len(_varint_bytes(dim)) + dim  # BytesList{value: dim bytes}
    feature = 1 + len(_varint_bytes(bytes_list)) + bytes_list  # Feature{bytes_list}
    prefix = b"\x0a" + _varint_bytes(feature) + b"\x0a" + _varint_bytes(bytes_list) + b"\x0a" + _varint_bytes(dim)
    return prefix, len(prefix) + dim


def _frames(buf: bytes, start: int, end: int, dim: int, name: str) -> np.ndarray:
    """Decode a FeatureList of single-value bytes_list frames to uint8 [n, dim] (a view when possible)."""
    prefix, stride = _frame_layout(dim)
    total = end - start
    if total % stride == 0:
        grid = np.frombuffer(buf, np.uint8, count=total, offset=start).reshape(-1, stride)
        heads = grid[:, : len(prefix)]
        if heads.size == 0 or (heads == np.frombuffer(prefix, np.uint8)).all():
            return grid[:, len(prefix):]
    return _frames_general(buf, start, end, dim, name)


def _frames_general(buf: bytes, start: int, end: int, dim: int, name: str) -> np.ndarray:
    parts: list[bytes] = []
    for i, (a, b) in enumerate(_submessages(buf, start, end, 1)):
        kind, ranges = _feature(buf, a, b)
        if kind != _BYTES:
            raise _ProtoError(f"{name} frame {i} is a {_KIND_NAMES[kind]}, expected bytes_list")
        values = _bytes_values(buf, ranges)
        if len(values) != 1:
            raise _ProtoError(f"{name} frame {i} holds {len(values)} values, expected 1")
        c, d = values[0]
        if d - c != dim:
            raise _ProtoError(f"{name} frame {i} has {d - c} bytes, expected {dim}")
        parts.append(buf[c:d])
    return np.frombuffer(b"".join(parts), np.uint8).reshape(-1, dim)


def _parse_sequence_example(buf: bytes, end: int, num_classes: int) -> QuantizedVideo:
    context: dict[str, tuple[int, int]] = {}
    lists: dict[str, tuple[int, int]] = {}
    for f, wire, a, b in _fields(buf, 0, end):
        if f in (1, 2) and wire != 2:
            raise _ProtoError(f"SequenceExample field {f} has wire type {wire}")
        if f == 1:
            context.update(_map(buf, a, b))
        elif f == 2:
            lists.update(_map(buf, a, b))
    for name in ("rgb", "audio"):
        if name not in lists:
            raise _ProtoError(f"missing feature list {name!r}")
    return QuantizedVideo(
        id=_parse_id(context, buf),
        labels=_parse_labels(context, buf, num_classes),
        rgb=_frames(buf, *lists["rgb"], RGB_DIM, "rgb"),
        audio=_frames(buf, *lists["audio"], AUDIO_DIM, "audio"),
    )


def _parse_example(buf: bytes, end: int, num_classes: int) -> VideoLevelRecord:
    features: dict[str, tuple[int, int]] = {}
    for a, b in _submessages(buf, 0, end, 1):
        features.update(_map(buf, a, b))
    means = []
    for name, dim in (("mean_rgb", RGB_DIM), ("mean_audio", AUDIO_DIM)):
        values = _float_values(buf, _typed(features, buf, name, _FLOATS, True) or [])
        if values.size != dim:
            raise _ProtoError(f"feature {name!r} holds {values.size} floats, expected {dim}")
        means.append(values)
    return VideoLevelRecord(
        id=_parse_id(features, buf),
        labels=_parse_labels(features, buf, num_classes),
        features=np.concatenate(means).astype(np.float32, copy=False),
    )


def _iter_parsed(path: str, parse: Callable[[bytes, int, int], Any], num_classes: int,
                 on_error: ErrorHandler | None) -> Iterator[Any]:
    for index, offset, buf, length in _iter_framed(path, on_error):
        try:
            record = parse(buf, length, num_classes)
        except _ProtoError as e:
            _report(CorruptRecordError(path, index, f"malformed record: {e}", offset=offset, recoverable=True),
                    on_error)
            continue
        yield record


def iter_frame_level_quantized(path: str, *, num_classes: int = NUM_CLASSES,
                               on_error: ErrorHandler | None = None) -> Iterator[QuantizedVideo]:
    """Yield frame-level videos with all their frames still quantized (uint8), labels sorted unique.

    Raises CorruptRecordError on any damage; with ``on_error`` the error is passed to it instead and the
    bad record skipped (reading stops after a framing error, which makes the rest of the file unreadable).
    """
    return _iter_parsed(path, _parse_sequence_example, num_classes, on_error)


def read_frame_level(path: str, *, max_frames: int = MAX_FRAMES, num_classes: int = NUM_CLASSES,
                     on_error: ErrorHandler | None = None) -> Iterator[FrameLevelRecord]:
    """Yield frame-level videos decoded like the starter: features float32 [max_frames, 1152]."""
    for video in iter_frame_level_quantized(path, num_classes=num_classes, on_error=on_error):
        features, num_frames = frames_to_features(video.rgb, video.audio, max_frames=max_frames)
        yield FrameLevelRecord(video.id, video.labels, features, num_frames)


def read_video_level(path: str, *, num_classes: int = NUM_CLASSES,
                     on_error: ErrorHandler | None = None) -> Iterator[VideoLevelRecord]:
    """Yield video-level records (``tf.train.Example`` with mean_rgb/mean_audio) as float32 [1152]."""
    return _iter_parsed(path, _parse_example, num_classes, on_error)


# ---------------------------------------------------------------------------------------------------------------
# Numeric helpers


def dequantize(q: np.ndarray) -> np.ndarray:
    """The starter's dequantization in float32: ``q * 4/255 + (4/512 - 2)``."""
    x = np.asarray(q).astype(np.float32)
    x *= _SCALE
    x += _BIAS
    return x


def quantize(x: np.ndarray) -> np.ndarray:
    """The extractor's quantizer: ``round((clip(x, -2, 2) + 2) * 255/4)`` as uint8 (float32 arithmetic)."""
    y = np.clip(np.asarray(x, dtype=np.float32), -2.0, 2.0)
    y += np.float32(2.0)
    y *= np.float32(255.0 / 4.0)
    return np.rint(y, out=y).astype(np.uint8)


def frames_to_features(rgb: np.ndarray, audio: np.ndarray, *, max_frames: int = MAX_FRAMES,
                       out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Dequantize, truncate to the first ``max_frames`` frames and zero-pad (after dequantizing).

    Args:
        rgb: uint8 [n, 1024]; audio: uint8 [m, 128] (padded or truncated independently of rgb).
        out: optional float32 [max_frames, 1152] to fill, e.g. a row of a batch.

    Returns:
        ``(features float32 [max_frames, 1152], num_frames = min(n, max_frames))``.
    """
    n, m = min(len(rgb), max_frames), min(len(audio), max_frames)
    if out is None:
        out = np.empty((max_frames, FEATURE_DIM), np.float32)
    if n == m:
        # One interleaved uint8 block then one in-place pass: about 2x faster than per-part arithmetic.
        packed = np.empty((n, FEATURE_DIM), np.uint8)
        packed[:, :RGB_DIM] = rgb[:n]
        packed[:, RGB_DIM:] = audio[:n]
        block = out[:n]
        block[...] = packed
        block *= _SCALE
        block += _BIAS
        out[n:] = 0.0
    else:
        out[:n, :RGB_DIM] = dequantize(rgb[:n])
        out[n:, :RGB_DIM] = 0.0
        out[:m, RGB_DIM:] = dequantize(audio[:m])
        out[m:, RGB_DIM:] = 0.0
    return out, n


def multi_hot(labels: Iterable[int] | np.ndarray, num_classes: int = NUM_CLASSES,
              *, dtype: type | np.dtype[Any] = np.bool_) -> np.ndarray:
    """Dense [num_classes] indicator of ``labels`` (duplicates collapse), bool by default."""
    out = np.zeros(num_classes, dtype=dtype)
    idx = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}: {idx[(idx < 0) | (idx >= num_classes)]}")
    out[idx] = 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes([field << 3 | 2]) + _varint_bytes(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _ld(_BYTES, _ld(1, value))


def _int64_feature(values: Iterable[int]) -> bytes:
    ints = [int(v) for v in values]
    if any(v < 0 for v in ints):
        raise ValueError(f"negative label in {ints}")
    packed = b"".join(_varint_bytes(v) for v in ints)
    return _ld(_INT64S, _ld(1, packed) if packed else b"")


def _float_feature(values: np.ndarray) -> bytes:
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _ld(_FLOATS, _ld(1, data) if data else b"")


def _map_bytes(entries: dict[str, bytes]) -> bytes:
    # Sorted keys, as protobuf's deterministic serialization writes maps.
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, entries[k])) for k in sorted(entries))


def _feature_list_bytes(frames: np.ndarray, dim: int, name: str) -> bytes:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != dim:
        raise ValueError(f"{name} must be uint8 [n, {dim}] (quantize() float features first), "
                         f"got {frames.dtype} {frames.shape}")
    prefix, stride = _frame_layout(dim)
    grid = np.empty((len(frames), stride), np.uint8)
    grid[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    grid[:, len(prefix):] = frames
    return grid.tobytes()


def encode_frame_level(video: QuantizedVideo) -> bytes:
    """Serialize a frame-level video as a ``tf.train.SequenceExample`` (labels packed, written as given)."""
    context = _map_bytes({"id": _bytes_feature(video.id.encode()), "labels": _int64_feature(video.labels)})
    lists = _map_bytes({"rgb": _feature_list_bytes(video.rgb, RGB_DIM, "rgb"),
                        "audio": _feature_list_bytes(video.audio, AUDIO_DIM, "audio")})
    return _ld(1, context) + _ld(2, lists)


def encode_video_level(record: VideoLevelRecord) -> bytes:
    """Serialize a video-level record as a ``tf.train.Example``."""
    features = np.asarray(record.features, dtype=np.float32)
    if features.shape != (FEATURE_DIM,):
        raise ValueError(f"video-level features must be [{FEATURE_DIM}], got {features.shape}")
    entries = {
        "id": _bytes_feature(record.id.encode()),
        "labels": _int64_feature(record.labels),
        "mean_rgb": _float_feature(features[:RGB_DIM]),
        "mean_audio": _float_feature(features[RGB_DIM:]),
    }
    return _ld(1, _map_bytes(entries))


def encode_record(payload: bytes) -> bytes:
    """Frame one payload as a TFRecord: length, masked length CRC, data, masked data CRC."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), payload, _CRC.pack(masked_crc32c(payload))))


def write_records(path: str, payloads: Iterable[bytes]) -> int:
    """Write raw payloads as a TFRecord file (atomically; local or s3://). Returns the record count."""
    count = 0
    with fs.atomic_output(path) as f:
        for payload in payloads:
            length = struct.pack("<Q", len(payload))
            f.write(length + _CRC.pack(masked_crc32c(length)))
            f.write(payload)
            f.write(_CRC.pack(masked_crc32c(payload)))
            count += 1
    return count


def write_frame_level(path: str, videos: Iterable[QuantizedVideo]) -> int:
    """Write frame-level videos (uint8 rgb [n, 1024], audio [m, 128]) as SequenceExamples; returns the count."""
    return write_records(path, (encode_frame_level(v) for v in videos))


def write_video_level(path: str, records: Iterable[VideoLevelRecord]) -> int:
    """Write video-level records (features float32 [1152]) as Examples; returns the count."""
    return write_records(path, (encode_video_level(r) for r in records))
