"""The node-local shard cache against a local S3 server (moto), with a proxy in front of it that logs
every request the readers make: a cached shard costs a HEAD (is it still the same object?), never a GET."""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow.parquet as pq
import pytest

from yt8m_search.data import cache as cache_module
from yt8m_search.data import fs
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.prepare import DataPaths

from .test_s3_retries import _FlakyProxy, _Handler

ROOT = Path(__file__).resolve().parents[1]


class _CountingHandler(_Handler):
    def _relay(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, unquote(urlsplit(self.path).path)))  # type: ignore[attr-defined]
        super()._relay()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


class _CountingProxy(_FlakyProxy):
    """Relays everything (no injected failures) and logs ``(method, path)`` of each request."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.RequestHandlerClass = _CountingHandler
        self.requests: list[tuple[str, str]] = []

    def count(self, method: str, uri: str) -> int:
        path = "/" + uri.removeprefix("s3://")
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p == path)


@pytest.fixture
def counted_s3(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingProxy]:
    proxy = _CountingProxy(os.environ["AWS_ENDPOINT_URL"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # readers (and subprocesses) talk through the proxy
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def _put(uri: str, data: bytes) -> None:
    with fs.atomic_output(uri) as f:
        f.write(data)


def _read(cache: ShardCache, uri: str) -> bytes:
    with cache.open(uri) as f:
        return f.read()


def _cached_files(cache: ShardCache) -> list[Path]:
    return sorted(p for p in Path(cache.root).iterdir() if p.is_file())


def _subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1"}


def _upload_shards(folder: str, bucket: str, prefix: str) -> list[str]:
    uris = []
    for path in fs.list_files(folder, pattern="*.parquet"):
        uris.append(f"{bucket}/{prefix}/{fs.basename(path)}")
        _put(uris[-1], Path(path).read_bytes())
    return uris


_SECOND_TRIAL = """
import sys
import pyarrow.parquet as pq
from yt8m_search.data.cache import ShardCache

cache = ShardCache(sys.argv[1], int(sys.argv[2]))
rows = 0
for uri in sys.argv[3:]:
    with cache.open(uri) as f:
        rows += pq.ParquetFile(f).read().num_rows
print(rows)
"""


def test_a_second_trial_makes_no_get_for_a_shard_the_first_read(
    counted_s3: _CountingProxy, s3_bucket: str, small_data: DataPaths, tmp_path: Path
) -> None:
    uris = _upload_shards(small_data.train, s3_bucket, "train")
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    local = {fs.basename(p): pq.read_table(p) for p in fs.list_files(small_data.train, pattern="*.parquet")}

    for uri in uris:  # the first trial: Parquet reads (footer, row groups) through the cache
        with cache.open(uri) as f:
            assert pq.ParquetFile(f).read().equals(local[fs.basename(uri)])
    first = {uri: counted_s3.count("GET", uri) for uri in uris}
    assert all(n >= 1 for n in first.values()), first  # the proxy does see the shard reads

    # the second trial, in another process, as a trial on the same node is
    out = subprocess.run([sys.executable, "-c", _SECOND_TRIAL, cache.directory, str(cache.max_bytes), *uris],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=_subprocess_env())
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(t.num_rows for t in local.values())
    assert {uri: counted_s3.count("GET", uri) for uri in uris} == first
    assert all(counted_s3.count("HEAD", uri) >= 2 for uri in uris)  # each use still checks the object

    # without the cache, every read is a round of GETs again
    with fs.open_input(uris[0], seekable=True) as f:
        pq.ParquetFile(f).read()
    assert counted_s3.count("GET", uris[0]) > first[uris[0]]


def test_local_paths_are_read_in_place(small_data: DataPaths, tmp_path: Path) -> None:
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    shard = fs.list_files(small_data.train, pattern="*.parquet")[0]
    for uri in (shard, f"file://{shard}"):
        assert _read(cache, uri) == Path(shard).read_bytes()
    assert not Path(cache.root).exists()  # nothing copied, not even the folder made


def test_a_corrupt_or_truncated_copy_is_fetched_again(
    counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    uri, data = f"{s3_bucket}/blobs/a.bin", os.urandom(50_000)
    _put(uri, data)
    cache = ShardCache(str(tmp_path / "cache"), 10**6)
    assert _read(cache, uri) == data
    [copy] = _cached_files(cache)

    flipped = bytearray(copy.read_bytes())
    flipped[1234] ^= 0xFF
    copy.write_bytes(bytes(flipped))
    assert _read(cache, uri) == data
    assert "checksum mismatch" in capfd.readouterr().err
    assert counted_s3.count("GET", uri) == 2

    [copy] = _cached_files(cache)
    copy.write_bytes(data[:1000])
    assert _read(cache, uri) == data
    assert "truncated" in capfd.readouterr().err
    assert counted_s3.count("GET", uri) == 3

    assert _read(cache, uri) == data  # repaired: a hit again
    assert counted_s3.count("GET", uri) == 3
    assert capfd.readouterr().err == ""


def test_least_recently_used_shards_are_evicted_to_stay_under_the_bound(
    counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path
) -> None:
    blobs = {name: os.urandom(1000) for name in "abc"}
    for name, data in blobs.items():
        _put(f"{s3_bucket}/blobs/{name}", data)
    big = f"{s3_bucket}/blobs/big"
    _put(big, os.urandom(3000))
    cache = ShardCache(str(tmp_path / "cache"), 2500)

    def use(name: str) -> None:
        assert _read(cache, f"{s3_bucket}/blobs/{name}") == blobs[name]
        assert sum(p.stat().st_size for p in _cached_files(cache)) <= cache.max_bytes

    for name in ("a", "b", "a", "c"):  # a is used after b: b is the least recently used when c comes
        use(name)
    names = [p.name for p in _cached_files(cache)]
    assert len(names) == 2 and all(n.endswith(("-a", "-c")) for n in names), names
    gets = {name: counted_s3.count("GET", f"{s3_bucket}/blobs/{name}") for name in "abc"}
    assert gets == {"a": 1, "b": 1, "c": 1}
    use("a")
    assert counted_s3.count("GET", f"{s3_bucket}/blobs/a") == 1
    use("b")
    assert counted_s3.count("GET", f"{s3_bucket}/blobs/b") == 2

    # larger than the whole cache: read straight from storage, every time, and nothing evicted for it
    before = _cached_files(cache)
    for _ in range(2):
        assert len(_read(cache, big)) == 3000
    assert counted_s3.count("GET", big) == 2 and _cached_files(cache) == before


def test_a_rewritten_object_is_fetched_again(counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path) -> None:
    uri = f"{s3_bucket}/blobs/shard.parquet"
    cache = ShardCache(str(tmp_path / "cache"), 10**6)
    old, new = b"x" * 4096, b"y" * 4096  # the same size: the ETag tells them apart
    _put(uri, old)
    assert _read(cache, uri) == old
    _put(uri, new)
    assert _read(cache, uri) == new
    assert _read(cache, uri) == new
    assert counted_s3.count("GET", uri) == 2
    assert len(_cached_files(cache)) == 1  # the old version's copy is gone


def test_a_full_disk_falls_back_to_reading_from_storage(
    counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    uri, data = f"{s3_bucket}/blobs/a.bin", os.urandom(10_000)
    _put(uri, data)

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_copy", full)
    cache = ShardCache(str(tmp_path / "cache"), 10**6)
    assert _read(cache, uri) == data
    assert "is full" in capfd.readouterr().err
    assert _cached_files(cache) == []


def test_dead_downloads_are_cleaned_up_and_other_files_left_alone(
    counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path
) -> None:
    cache = ShardCache(str(tmp_path / "cache"), 1500)
    dead = Path(cache.root) / f".{hashlib.sha256(b's3://x/y').hexdigest()[:16]}.tmp-{'0' * 12}"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"partial")  # its writer died: nobody holds its lock
    foreign = [Path(cache.root) / name for name in ("notes.txt", ".hidden")]  # a user's files, not the cache's
    for path in foreign:
        path.write_bytes(os.urandom(5000))
    for name in "ab":
        _put(f"{s3_bucket}/blobs/{name}", name.encode() * 1000)
        assert _read(cache, f"{s3_bucket}/blobs/{name}") == name.encode() * 1000  # a download evicts first
    assert not dead.exists()
    assert all(path.exists() for path in foreign)  # neither counted against the bound nor evicted
    assert [p.name[-2:] for p in _cached_files(cache) if p not in foreign] == ["-b"]


_CONCURRENT_READER = """
import hashlib, os, sys, time
from yt8m_search.data.cache import ShardCache

cache = ShardCache(sys.argv[1], 10**9)
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
for uri in sys.argv[3:]:
    with cache.open(uri) as f:
        print(uri, hashlib.sha256(f.read()).hexdigest())
"""


def test_concurrent_readers_share_one_download_and_never_see_a_partial_file(
    counted_s3: _CountingProxy, s3_bucket: str, tmp_path: Path
) -> None:
    blobs = {f"{s3_bucket}/blobs/{i}": os.urandom(3 << 20) for i in range(4)}
    for uri, data in blobs.items():
        _put(uri, data)
    cache, go = ShardCache(str(tmp_path / "cache"), 10**9), tmp_path / "go"
    orders = [list(blobs), list(blobs)]
    readers = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_READER, cache.directory, str(go), *order],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=_subprocess_env()) for order in orders]
    for reader in readers:  # both imported and waiting at the start line, then both go at once
        assert reader.stdout is not None and reader.stdout.readline() == "ready\n", reader.stderr
    go.touch()
    expected = {uri: hashlib.sha256(data).hexdigest() for uri, data in blobs.items()}
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        assert dict(line.split() for line in out.splitlines()) == expected
    assert collections.Counter(counted_s3.count("GET", uri) for uri in blobs) == {1: 4}  # one download each
    assert len(_cached_files(cache)) == 4  # no temp file left behind
    assert all(_read(cache, uri) == data for uri, data in blobs.items())


_RAY_TRIALS = """
import sys
import ray
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.loading import read_videos

ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
cache = ShardCache(sys.argv[1], 10**9)
for _ in range(2):  # two trials, each with its own dataset, as the driver builds them
    dataset = read_videos(sys.argv[2], shuffle=True, cache=cache)
    print(sum(t.num_rows for t in dataset.iter_batches(batch_size=None, batch_format="pyarrow")))
ray.shutdown()
"""


@pytest.mark.slow
def test_read_videos_fetches_each_shard_once_for_two_trials(
    counted_s3: _CountingProxy, s3_bucket: str, small_data: DataPaths, tmp_path: Path
) -> None:
    uris = _upload_shards(small_data.train, s3_bucket, "train")
    rows = sum(pq.read_metadata(p).num_rows for p in fs.list_files(small_data.train, pattern="*.parquet"))
    out = subprocess.run([sys.executable, "-c", _RAY_TRIALS, str(tmp_path / "cache"), f"{s3_bucket}/train"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=_subprocess_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert [int(line) for line in out.stdout.split()] == [rows, rows]
    assert {uri: counted_s3.count("GET", uri) for uri in uris} == {uri: 1 for uri in uris}  # one download each
