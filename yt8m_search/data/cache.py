"""A node-local, size-bounded, checksummed cache of remote Parquet shards (opt-in: ``data.shard_cache``).

Without it every trial reads every shard from S3 in every epoch; with it a node fetches each shard once and
every later trial and epoch on that node reads the local copy. ``ShardCache.open`` still asks S3 for the
object's size and ETag (one HEAD request, no GET) on each use, so an object rewritten under the same key is
fetched again rather than served stale. Local paths are opened where they are, never copied.

Layout of the cache directory, which must be on the node's own disk (the locks and the LRU order are per
node; a directory shared between nodes over NFS is not supported):

- ``<uri hash>-<version hash>-<crc32c>-<name>``: a cached shard. The file name is the whole record (no
  sidecar that could go missing): the URI and the object's size and ETag pick the entry, the CRC32C checks
  its content on every use. A corrupt or truncated copy is dropped and fetched again.
- ``.<uri hash>.tmp-<random>``: a download in progress, renamed into place only once complete, so no reader
  ever sees a partial file.
- ``locks/``: one ``flock`` file per URI (one download of a shard per node at a time; a second reader
  waits, then reads the copy) and one for eviction. The kernel drops a lock when its holder dies, so the
  temp file of a killed download (a trial stopped by the scheduler) is recognised as stale and removed.

Bound: completed entries plus downloads in flight stay under ``max_bytes``; least recently used entries
(by modification time, touched on each use) are evicted first. A shard larger than ``max_bytes`` is read
straight from its storage. A full disk turns the cache off for that read, with a message, not the trial.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeAlias

import crc32c
import pyarrow as pa

from yt8m_search.data import fs

__all__ = ["Reader", "ShardCache"]

_CHUNK = 16 << 20
_LOCKS = "locks"
_EVICT_LOCK = "evict.lock"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Only files named like these are the cache's: other files in its directory are never counted or deleted.
_ENTRY = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}-[0-9a-f]{8}-.+")
_TEMP = re.compile(r"\.[0-9a-f]{16}\.tmp-[0-9a-f]{12}")

# Cached copies are Arrow files, not Python ones: Parquet reads of Python file objects in a process that
# has used S3 abort it at exit now and then ("terminate called without an active exception", pyarrow 26).
Reader: TypeAlias = BinaryIO | pa.NativeFile


@dataclass(frozen=True)
class ShardCache:
    """Where (``directory``, a local path; ``~`` is expanded on the node) and how much (``max_bytes``)."""

    directory: str
    max_bytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str) or not self.directory or "://" in self.directory:
            raise ValueError(f"ShardCache.directory: expected a local directory path, got {self.directory!r}")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes <= 0:
            raise ValueError(f"ShardCache.max_bytes: expected a positive integer, got {self.max_bytes!r}")

    @property
    def root(self) -> str:
        """The cache directory as an absolute path on this node."""
        return os.path.abspath(os.path.expanduser(self.directory))

    def open(self, uri: str) -> Reader:
        """A seekable binary reader of ``uri``; the caller closes it.

        Local paths are opened in place. Remote objects are read from this node's copy, fetched first if
        missing, stale or corrupt; objects larger than ``max_bytes`` are read from their storage.
        """
        if fs.is_local(uri):
            return fs.open_input(uri, seekable=True)
        filesystem, path = fs.resolve(uri)
        remote = filesystem.open_input_file(path)  # a HEAD request: size and ETag, no GET
        try:
            entry = _Entry(self.root, uri, int(remote.size()), _version(remote, filesystem, path))
            reader = remote if entry.size > self.max_bytes else self._cached(entry, remote)
        except BaseException:
            remote.close()
            raise
        if reader is not remote:
            remote.close()
        return reader

    def _cached(self, entry: _Entry, remote: Any) -> Reader:
        _makedirs(entry.root)
        reader, _ = _open_verified(entry)
        if reader is not None:
            return reader
        with _locked(entry.lock_path):
            # another reader on this node may have fetched it while this one waited
            reader, problem = _open_verified(entry)
            if reader is not None:
                return reader
            if problem:
                print(f"shard cache: {problem}; fetching {entry.uri} again", file=sys.stderr)
            entry.drop_all_versions()
            return self._download(entry, remote)

    def _download(self, entry: _Entry, remote: Any) -> Reader:
        """Copy ``remote`` into the cache (under the URI's lock) and return a reader of the copy."""
        _evict(entry.root, self.max_bytes - entry.size, keep=None)
        tmp = os.path.join(entry.root, f".{entry.uri_key}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            name = entry.name(_copy(remote, tmp, entry))
            # opened before the rename: an eviction right after it cannot take the file from this reader
            reader = pa.OSFile(tmp)
            try:
                os.replace(tmp, os.path.join(entry.root, name))
            except BaseException:
                reader.close()
                raise
        except OSError as err:
            if err.errno not in _DISK_FULL:
                raise
            print(f"shard cache: {entry.root} is full ({err.strerror}); reading {entry.uri} from storage",
                  file=sys.stderr)
            remote.seek(0)
            return remote
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        _evict(entry.root, self.max_bytes, keep=name)
        return reader


class _Entry:
    """One object version's place in the cache: its name parts, its lock, its copies."""

    def __init__(self, root: str, uri: str, size: int, version: str) -> None:
        self.root, self.uri, self.size = root, uri, size
        self.uri_key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        version_key = hashlib.sha256(f"{size}:{version}".encode()).hexdigest()[:12]
        self.prefix = f"{self.uri_key}-{version_key}-"
        self.lock_path = os.path.join(root, _LOCKS, f"{self.uri_key}.lock")

    def name(self, crc: int) -> str:
        return f"{self.prefix}{crc:08x}-{_UNSAFE.sub('_', fs.basename(self.uri))[:80] or 'shard'}"

    def copies(self) -> list[str]:
        """Names of this version's cached copies (one, unless something went wrong)."""
        return sorted(n for n in _names(self.root) if n.startswith(self.prefix))

    def drop_all_versions(self) -> None:
        """Remove every copy of this URI: a corrupt one, or older versions of a rewritten object."""
        for name in _names(self.root):
            if name.startswith(self.uri_key + "-"):
                _remove(os.path.join(self.root, name))


def _version(remote: Any, filesystem: Any, path: str) -> str:
    """The object's ETag (it changes with the content), else its modification time."""
    metadata = remote.metadata()
    etag = metadata.get("ETag") if metadata is not None else None
    if etag:
        return etag.decode() if isinstance(etag, bytes) else str(etag)
    return str(filesystem.get_file_info(path).mtime_ns)


def _open_verified(entry: _Entry) -> tuple[pa.NativeFile | None, str | None]:
    """A reader of the entry's verified copy, else ``(None, what is wrong with it)`` (None: no copy)."""
    for name in entry.copies():
        path = os.path.join(entry.root, name)
        try:
            reader = pa.OSFile(path)
        except FileNotFoundError:  # evicted since the listing
            continue
        problem = _check(reader, name, entry.size)
        if problem is None:
            reader.seek(0)
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)  # the LRU order: a use makes it the newest
            return reader, None
        reader.close()
        return None, f"{path}: {problem}"
    return None, None


def _check(reader: pa.NativeFile, name: str, size: int) -> str | None:
    """What is wrong with a cached copy (its size, then its CRC32C against its name), or None."""
    actual = reader.size()
    if actual != size:
        return f"truncated or padded: {actual} bytes, the object has {size}"
    expected = int(name.split("-")[2], 16)
    crc = 0
    while chunk := reader.read(_CHUNK):
        crc = crc32c.crc32c(chunk, crc)
    return None if crc == expected else f"checksum mismatch (crc32c {crc:08x}, recorded {expected:08x})"


def _copy(remote: Any, tmp: str, entry: _Entry) -> int:
    """Write the whole object to ``tmp``; return its CRC32C."""
    crc, written = 0, 0
    remote.seek(0)
    with open(tmp, "wb") as out:
        while chunk := remote.read(_CHUNK):
            crc = crc32c.crc32c(chunk, crc)
            written += len(chunk)
            out.write(chunk)
    if written != entry.size:  # rewritten while it was read
        raise OSError(f"{entry.uri}: read {written} bytes, the object had {entry.size} when opened")
    return crc


def _evict(root: str, budget: int, keep: str | None) -> None:
    """Remove least recently used entries until entries and downloads in flight take at most ``budget``
    bytes; remove the temp files of dead downloads. ``keep``: an entry never evicted (the one just added)."""
    with _locked(os.path.join(root, _LOCKS, _EVICT_LOCK)):
        entries: list[tuple[float, str, int]] = []
        total = 0
        for name in _names(root, hidden=True):
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            if name.startswith("."):
                if _stale(root, name):
                    _remove(path)
                else:
                    total += stat.st_size
                continue
            entries.append((stat.st_mtime, name, stat.st_size))
            total += stat.st_size
        for _, name, size in sorted(entries):
            if total <= budget:
                break
            if name != keep:
                _remove(os.path.join(root, name))
                total -= size


def _stale(root: str, temp_name: str) -> bool:
    """A temp file whose URI lock nobody holds: its download died (a live one holds the lock)."""
    uri_key = temp_name[1:17]  # ".<uri key>.tmp-<random>", as _names matched it
    with _locked(os.path.join(root, _LOCKS, f"{uri_key}.lock"), blocking=False) as acquired:
        return acquired


def _names(root: str, hidden: bool = False) -> list[str]:
    """The cache's files in its directory: entries and, with ``hidden``, temp files."""
    try:
        with os.scandir(root) as it:
            return [e.name for e in it if e.is_file(follow_symlinks=False)
                    and (_ENTRY.fullmatch(e.name) or (hidden and _TEMP.fullmatch(e.name)))]
    except FileNotFoundError:
        return []


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _makedirs(root: str) -> None:
    try:
        os.makedirs(os.path.join(root, _LOCKS), exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"shard cache: cannot create the directory {root}: {err.strerror}") from err


@contextlib.contextmanager
def _locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); yields False if ``blocking`` is off
    and another holds it. Lock files are never deleted: deleting one while a process waits on it would
    let two processes each hold "the" lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
