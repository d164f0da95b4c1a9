"""TFRecord framing (spec §1.3): ``uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)``,
little-endian; reading verifies both CRCs, writing is atomic (local or s3://).

Damage raises :class:`CorruptRecordError` naming the file, the record index and the offset; a data-CRC
error leaves the framing usable (recoverable, reading can go on), a framing error does not.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import crc32c

from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError

ErrorHandler = Callable[[CorruptRecordError], None]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C: ``((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def iter_framed(path: str, on_error: ErrorHandler | None) -> Iterator[tuple[int, int, bytes, int]]:
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
                report_error(err, on_error)
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


def report_error(err: CorruptRecordError, on_error: ErrorHandler | None) -> None:
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
    for _, _, buf, length in iter_framed(path, on_error):
        yield buf[:length]


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
