"""Paths and URIs (local, ``file://``, ``s3://``) behind one small interface built on ``pyarrow.fs``.

Every function takes a plain path or a URI and hands back plain paths for local files and ``s3://bucket/key``
URIs for S3, so callers never see pyarrow's scheme-less internal paths. S3 credentials, region and endpoint
come from the usual AWS environment variables (``AWS_ENDPOINT_URL`` included), which pyarrow reads itself.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import pyarrow.fs as pafs

__all__ = [
    "resolve",
    "is_local",
    "join",
    "basename",
    "exists",
    "file_size",
    "makedirs",
    "remove",
    "open_input",
    "read_bytes",
    "list_files",
    "list_sized",
    "atomic_output",
]

_GLOB_CHARS = frozenset("*?[")
_COPY_CHUNK = 16 << 20


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and "/" not in head else ""


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return _scheme(uri) in ("", "file")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map a path or URI to ``(filesystem, path inside that filesystem)``.

    S3 filesystems retry transient errors (throttling, 5xx, dropped connections) up to
    ``S3_MAX_ATTEMPTS`` times with the AWS SDK's backoff, not the SDK default of 3.
    """
    scheme = _scheme(uri)
    if scheme == "":
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if scheme == "s3":
        path = uri.split("://", 1)[1].rstrip("/")
        return _s3(path.split("/", 1)[0], os.environ.get("AWS_ENDPOINT_URL", "")), path
    return pafs.FileSystem.from_uri(uri)


S3_MAX_ATTEMPTS = 10


@functools.lru_cache(maxsize=64)
def _s3(bucket: str, endpoint: str) -> pafs.S3FileSystem:
    # One per bucket (its region is looked up once) and endpoint (a changed AWS_ENDPOINT_URL is
    # honoured). Credentials come from the SDK's default chain: environment, profile, instance role.
    region = pafs.FileSystem.from_uri(f"s3://{bucket}")[0].region
    return pafs.S3FileSystem(region=region, endpoint_override=endpoint or None,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS))


def _local_path(uri: str) -> str:
    return resolve(uri)[1] if _scheme(uri) == "file" else uri


def _with_scheme(uri: str, inner: str) -> str:
    """Re-attach ``uri``'s scheme to a filesystem-internal path (``bucket/key`` -> ``s3://bucket/key``)."""
    scheme = _scheme(uri)
    return inner if scheme in ("", "file") else f"{scheme}://{inner}"


def join(base: str, name: str) -> str:
    """``base/name`` for paths and URIs alike."""
    if is_local(base):
        return os.path.join(_local_path(base), name)
    return base.rstrip("/") + "/" + name


def basename(uri: str) -> str:
    """Last path component of a path or URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def exists(uri: str) -> bool:
    """True when ``uri`` names an existing file or directory."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def file_size(uri: str) -> int:
    """Size of a file in bytes; FileNotFoundError when it does not exist."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    return int(info.size)


def makedirs(uri: str) -> None:
    """Create a directory and its parents (a no-op on S3, which has no directories)."""
    if is_local(uri):
        os.makedirs(_local_path(uri), exist_ok=True)


def remove(uri: str) -> None:
    """Delete a file if it exists."""
    fs, path = resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def open_input(uri: str, *, seekable: bool = False) -> BinaryIO:
    """A buffered binary reader for ``uri`` (a plain file object for local paths: the fastest reader).

    Remote files are sequential streams unless ``seekable`` (Parquet readers jump to the footer and
    to row groups: each read is then a ranged request).
    """
    if is_local(uri):
        return open(_local_path(uri), "rb", buffering=1 << 20)  # noqa: SIM115 - the caller closes it
    fs, path = resolve(uri)
    if seekable:
        return fs.open_input_file(path)  # type: ignore[return-value]
    return fs.open_input_stream(path, buffer_size=8 << 20)  # type: ignore[return-value]


def read_bytes(uri: str) -> bytes:
    """The whole content of a file."""
    with open_input(uri) as f:
        return f.read()


def _is_hidden(name: str) -> bool:
    # Temp files of atomic_output and markers such as _SUCCESS start with "." or "_".
    return name.startswith((".", "_"))


def list_files(spec: str | Sequence[str], *, pattern: str | None = None) -> list[str]:
    """Expand inputs to a sorted, de-duplicated list of files.

    Args:
        spec: a file, a directory (its non-hidden files, not recursive), a glob (``dir/*.tfrecord``,
            ``s3://b/train/**/*.tfrecord``), or a list of any of these.
        pattern: for directories only, keep file names matching this fnmatch pattern.

    Raises:
        FileNotFoundError: a named file or directory does not exist, or a glob matches nothing.
    """
    return [path for path, _ in list_sized(spec, pattern=pattern)]


def list_sized(spec: str | Sequence[str], *, pattern: str | None = None) -> list[tuple[str, int]]:
    """``list_files`` with each file's size in bytes, which the listing returns anyway (no request more).

    One listing call per directory (an S3 LIST page per 1,000 objects), one lookup per named file.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    found: dict[str, int] = {}
    for item in specs:
        for path, size in _expand(item, pattern):
            found.setdefault(path, size)
    return sorted(found.items())


def _expand(uri: str, pattern: str | None) -> list[tuple[str, int]]:
    fs, path = resolve(uri)
    if any(c in _GLOB_CHARS for c in path):
        return _glob(uri, fs, path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(_with_scheme(uri, path), int(info.size))]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such file or directory: {uri}")
    return [
        (_with_scheme(uri, i.path), int(i.size))
        for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if i.type == pafs.FileType.File and not _is_hidden(i.base_name)
        and (pattern is None or fnmatch.fnmatch(i.base_name, pattern))
    ]


def _glob(uri: str, fs: pafs.FileSystem, path: str) -> list[tuple[str, int]]:
    parts = path.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in _GLOB_CHARS for c in p))
    base = "/".join(parts[:first]) or "/"
    recursive = first < len(parts) - 1 or "**" in path
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    matches = [
        (_with_scheme(uri, i.path), int(i.size))
        for i in infos
        if i.type == pafs.FileType.File and not _is_hidden(i.base_name)
        and fnmatch.fnmatchcase(i.path, path)
    ]
    if not matches:
        raise FileNotFoundError(f"no files match {uri}")
    return matches


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator[BinaryIO]:
    """Write ``uri`` all-or-nothing: the file appears only when the ``with`` block exits cleanly.

    Local files are written to a hidden temp name in the same directory and renamed over the target.
    Remote files are spooled locally and uploaded in one go only after the block succeeds, so a failure
    never leaves a partial object (an S3 object becomes visible only once its upload completes).
    """
    if is_local(uri):
        path = _local_path(uri)
        directory, name = os.path.split(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    fs, path = resolve(uri)
    with tempfile.TemporaryFile() as spool:
        yield spool  # type: ignore[misc]
        spool.flush()
        spool.seek(0)
        with fs.open_output_stream(path) as out:
            shutil.copyfileobj(spool, out, _COPY_CHUNK)
