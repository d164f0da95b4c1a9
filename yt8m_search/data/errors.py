"""The one exception type the data layer raises for bad input files."""

from __future__ import annotations

__all__ = ["CorruptRecordError"]


class CorruptRecordError(ValueError):
    """A TFRecord file (or one record in it) is damaged or not what the reader expects.

    Attributes:
        path: the file (path or URI) that holds the bad record.
        record_index: 0-based index of the bad record, or None when the problem is not tied to a record.
        reason: what is wrong, without the location prefix.
        offset: byte offset of the record's header in the file, when known.
        recoverable: True when the records after this one can still be read (the framing is intact, e.g.
            a data-CRC mismatch or a malformed proto); False after a framing error (bad length CRC,
            truncation), where the rest of the file cannot be resynchronised.
    """

    def __init__(
        self,
        path: str,
        record_index: int | None,
        reason: str,
        *,
        offset: int | None = None,
        recoverable: bool = False,
    ) -> None:
        self.path = path
        self.record_index = record_index
        self.reason = reason
        self.offset = offset
        self.recoverable = recoverable
        where = path if record_index is None else f"{path}, record {record_index}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        # The default exception pickling replays only args; keep every attribute so the error survives
        # the trip back from a ProcessPoolExecutor worker.
        return (_rebuild, (self.path, self.record_index, self.reason, self.offset, self.recoverable))


def _rebuild(
    path: str, record_index: int | None, reason: str, offset: int | None, recoverable: bool
) -> CorruptRecordError:
    return CorruptRecordError(path, record_index, reason, offset=offset, recoverable=recoverable)
