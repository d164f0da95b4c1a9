"""The sweep's terminal and its log file.

While a sweep runs, the terminal shows only what the command says itself (``say``: the live line,
notices) and one line per error; everything else this process writes goes to the run's log file:
Ray's, Tune's, Optuna's and W&B's messages, warnings, progress tables and tracebacks, and what the
Ray processes it starts print. The switch is made on the process's file descriptors 1 and 2, not on
Python's loggers, because much of that output never passes through them: Ray's C++ core writes to
descriptor 2 directly, and the processes ``ray.init`` starts inherit the driver's descriptors.

An ERROR record (e.g. Tune's "Trial task failed for trial ...") still reaches the terminal, as one
line that ends with the exception's own last line, its cause; the traceback stays in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

# loggers that get the one-line error handler: the root (W&B, this package and every library that
# propagates), and Ray's and Optuna's, which do not propagate
ERROR_LOGGERS = ("", "ray", "optuna")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s -- %(message)s"
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class _Redirect:
    out: TextIO  # the terminal, as descriptors 1 and 2 were before the switch
    err: TextIO
    log: TextIO
    path: str


_active: _Redirect | None = None


def terminal(err: bool = False) -> TextIO:
    """Where the user reads: the terminal while a log file takes the process's output, else stdout
    (or stderr)."""
    if _active is not None:
        return _active.err if err else _active.out
    return sys.stderr if err else sys.stdout


def say(text: str, err: bool = False) -> None:
    """One line for the user, also written to the log, so that the log tells the whole story."""
    print(text, file=terminal(err), flush=True)
    if _active is not None:
        print(text, file=_active.log, flush=True)


def log_file() -> str | None:
    """The log file taking the process's output now, if any."""
    return _active.path if _active is not None else None


def one_line(record: logging.LogRecord) -> str:
    """An error record in one line: its message's first line, then its exception's last line (the
    exception's type and message; a Ray task error ends with the one raised in the task)."""
    text = _plain_lines(record.getMessage())[:1]
    if record.exc_info and record.exc_info[1] is not None:
        kind, error = record.exc_info[0], record.exc_info[1]
        text += _plain_lines("".join(traceback.format_exception_only(kind, error)))[-1:]
    return ": ".join(text)[:500]


def _plain_lines(text: str) -> list[str]:
    return [line.strip() for line in _COLOURS.sub("", text).splitlines() if line.strip()]


class TerminalErrors(logging.Handler):
    """ERROR records as one line on the terminal, pointing at the log for the rest."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"error: {one_line(record)} (details in {self.path})", file=terminal(err=True), flush=True)
        except Exception:
            self.handleError(record)


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a StringIO-like capture (tests)
        return None


@contextlib.contextmanager
def to_file(path: str) -> Iterator[str]:
    """Send everything the process writes to ``path`` (appended) until the block ends, and ERROR
    records to the terminal as one line; yields ``path``. Enter it after Ray and Optuna are
    imported: they set their loggers' handlers up on import, replacing any added before."""
    global _active
    if _active is not None:  # nested: the outer block already has the output
        yield _active.path
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    out, err = (_terminal_stream(stream, fd) for stream, fd in zip((sys.stdout, sys.stderr), saved, strict=True))
    with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        handlers = _attach(log, path)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _active = _Redirect(out, err, log, path)
        try:
            yield path
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            _active = None
            _detach(handlers)
            for stream in {out, err} - {sys.stdout, sys.stderr}:
                stream.close()  # the wrapper only: it does not own the descriptor
            for fd in saved:
                os.close(fd)


def _terminal_stream(stream: TextIO, saved_fd: int) -> TextIO:
    """The terminal behind ``stream``: its descriptor as it was before the switch; a stream that has
    none (a test's capture) is kept as it is."""
    if _fileno(stream) in (1, 2):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        return os.fdopen(saved_fd, "w", buffering=1, encoding=encoding, errors="replace", closefd=False)
    return stream


def _attach(log: TextIO, path: str) -> list[tuple[logging.Logger, logging.Handler]]:
    """The one-line error handler on ``ERROR_LOGGERS``, and the log file on the root logger: records
    that propagate there would otherwise go to Python's last-resort handler, or nowhere once the
    error handler is the root's only one."""
    to_log = logging.StreamHandler(log)
    to_log.setFormatter(logging.Formatter(FILE_FORMAT))
    errors = TerminalErrors(path)
    pairs: list[tuple[logging.Logger, logging.Handler]] = [(logging.getLogger(), to_log)]
    pairs += [(logging.getLogger(name), errors) for name in ERROR_LOGGERS]
    for logger, handler in pairs:
        logger.addHandler(handler)
    return pairs


def _detach(pairs: list[tuple[logging.Logger, logging.Handler]]) -> None:
    for logger, handler in pairs:
        logger.removeHandler(handler)
