"""The protobuf wire format (spec §1.4), by hand: just what ``tf.train.Example`` / ``SequenceExample``
need, reading and writing.

Reading works over index ranges of one record buffer (``buf``, ``start``, ``end``), so nothing is
copied until numpy needs it; every problem raises :class:`ProtoError`, which the TFRecord reader turns
into a ``CorruptRecordError`` naming the file and the record. Writing produces protobuf's
deterministic serialization (packed int64 lists, map entries sorted by key).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

# Feature oneof field numbers (feature.proto).
BYTES, FLOATS, INT64S = 1, 2, 3
KIND_NAMES = {BYTES: "bytes_list", FLOATS: "float_list", INT64S: "int64_list", None: "no value"}


class ProtoError(Exception):
    """A record's payload is not the expected protobuf; re-raised as CorruptRecordError with its location."""


# ---------------------------------------------------------------------------------------------------------------
# Reading


def varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` (at most 10 bytes, before ``end``) and the position after it."""
    result = shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")
    raise ProtoError("truncated varint")


def fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire_type, a, b)``: ``(start, end)`` for length-delimited and fixed-size fields,
    ``(value, next_pos)`` for varints."""
    while pos < end:
        key, pos = varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == 2:
            n, pos = varint(buf, pos, end)
            if pos + n > end:
                raise ProtoError(f"field {field} runs {pos + n - end} bytes past its message")
            yield field, 2, pos, pos + n
            pos += n
        elif wire == 0:
            value, pos = varint(buf, pos, end)
            yield field, 0, value, pos
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise ProtoError(f"truncated fixed-size field {field}")
            yield field, wire, pos, pos + n
            pos += n
        else:
            raise ProtoError(f"unsupported wire type {wire} for field {field}")


def submessages(buf: bytes, start: int, end: int, field: int) -> Iterator[tuple[int, int]]:
    for f, wire, a, b in fields(buf, start, end):
        if f == field:
            if wire != 2:
                raise ProtoError(f"field {field} has wire type {wire}, expected a message")
            yield a, b


def parse_map(buf: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    """Parse ``map<string, Message> = 1`` (Features, FeatureLists) to ``{key: (value_start, value_end)}``."""
    entries: dict[str, tuple[int, int]] = {}
    for a, b in submessages(buf, start, end, 1):
        key = b""
        value = (b, b)  # an absent value is an empty message
        for f, wire, c, d in fields(buf, a, b):
            if wire != 2:
                continue
            if f == 1:
                key = buf[c:d]
            elif f == 2:
                value = (c, d)
        try:
            entries[key.decode()] = value  # later entries win, as in protobuf maps
        except UnicodeDecodeError:
            raise ProtoError(f"map key {key!r} is not UTF-8") from None
    return entries


def parse_feature(buf: bytes, start: int, end: int) -> tuple[int | None, list[tuple[int, int]]]:
    """Parse a Feature: its oneof kind and the ranges of that list message (repeats merge, a new kind wins)."""
    kind: int | None = None
    ranges: list[tuple[int, int]] = []
    for f, wire, a, b in fields(buf, start, end):
        if f in (BYTES, FLOATS, INT64S) and wire == 2:
            if f != kind:
                kind, ranges = f, []
            ranges.append((a, b))
    return kind, ranges


def bytes_values(buf: bytes, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a, b) for start, end in ranges for a, b in submessages(buf, start, end, 1)]


def int64_values(buf: bytes, ranges: list[tuple[int, int]]) -> list[int]:
    values: list[int] = []
    for start, end in ranges:
        for f, wire, a, b in fields(buf, start, end):
            if f != 1:
                continue
            if wire == 0:
                values.append(a)
            elif wire == 2:  # packed
                pos = a
                while pos < b:
                    v, pos = varint(buf, pos, b)
                    values.append(v)
            else:
                raise ProtoError(f"int64 value with wire type {wire}")
    return values


def float_values(buf: bytes, ranges: list[tuple[int, int]]) -> np.ndarray:
    chunks: list[np.ndarray] = []
    for start, end in ranges:
        for f, wire, a, b in fields(buf, start, end):
            if f != 1:
                continue
            if wire not in (2, 5) or (b - a) % 4:
                raise ProtoError(f"float value with wire type {wire} and {b - a} bytes")
            chunks.append(np.frombuffer(buf, "<f4", count=(b - a) // 4, offset=a))
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def typed_feature(context: dict[str, tuple[int, int]], buf: bytes, name: str, kind: int,
           required: bool) -> list[tuple[int, int]] | None:
    if name not in context:
        if required:
            raise ProtoError(f"missing feature {name!r}")
        return None
    got, ranges = parse_feature(buf, *context[name])
    if got is None and not required:
        return []
    if got != kind:
        raise ProtoError(f"feature {name!r} is a {KIND_NAMES[got]}, expected {KIND_NAMES[kind]}")
    return ranges


# ---------------------------------------------------------------------------------------------------------------
# Writing


def varint_bytes(n: int) -> bytes:
    """``n >= 0`` as a minimal base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def delimited(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes([field << 3 | 2]) + varint_bytes(len(payload)) + payload


def bytes_feature(value: bytes) -> bytes:
    """A ``Feature`` holding one ``bytes_list`` value."""
    return delimited(BYTES, delimited(1, value))


def int64_feature(values: Iterable[int]) -> bytes:
    """A ``Feature`` with a packed ``int64_list`` of non-negative values (labels)."""
    ints = [int(v) for v in values]
    if any(v < 0 for v in ints):
        raise ValueError(f"negative label in {ints}")
    packed = b"".join(varint_bytes(v) for v in ints)
    return delimited(INT64S, delimited(1, packed) if packed else b"")


def float_feature(values: np.ndarray) -> bytes:
    """A ``Feature`` with a packed little-endian ``float_list``."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return delimited(FLOATS, delimited(1, data) if data else b"")


def map_bytes(entries: dict[str, bytes]) -> bytes:
    """A ``map<string, Message> = 1`` (Features, FeatureLists) of serialized values."""
    # Sorted keys, as protobuf's deterministic serialization writes maps.
    return b"".join(delimited(1, delimited(1, k.encode()) + delimited(2, entries[k])) for k in sorted(entries))
