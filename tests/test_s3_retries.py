"""S3 transient errors are retried: a proxy in front of the local S3 server answers the first
requests with 503 SlowDown, as S3 does under load."""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pyarrow.fs as pafs
import pytest

from yt8m_search.data import fs

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _FlakyProxy(ThreadingHTTPServer):
    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream)
        self.failures_left = 0
        self.failed = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _FlakyProxy
    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue", which the SDK sends with uploads

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", ""):
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _relay(self) -> None:
        body = self._body()
        with self.server.lock:
            fail = self.server.failures_left > 0
            if fail:
                self.server.failures_left -= 1
                self.server.failed += 1
        if fail:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)
            return
        up = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=30)
        skip = ("expect", "transfer-encoding", "content-length", "connection")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        up.request(self.command, self.path, body=body, headers=headers)
        reply = up.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # a HEAD reply's length is the object's size, not that of its (empty) body
        length = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_s3(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(os.environ["AWS_ENDPOINT_URL"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.shutdown()


def test_transient_s3_errors_are_retried(flaky_s3: _FlakyProxy, s3_bucket: str) -> None:
    with fs.atomic_output(f"{s3_bucket}/retry/a.bin") as f:
        f.write(b"payload")

    flaky_s3.failures_left = 3  # as many as the AWS SDK's default 3 attempts can take
    assert fs.read_bytes(f"{s3_bucket}/retry/a.bin") == b"payload"
    assert flaky_s3.failed == 3 and flaky_s3.failures_left == 0

    flaky_s3.failures_left = 3
    with fs.atomic_output(f"{s3_bucket}/retry/b.bin") as f:
        f.write(b"written through errors")
    assert flaky_s3.failed == 6
    assert fs.list_files(f"{s3_bucket}/retry") == [f"{s3_bucket}/retry/a.bin", f"{s3_bucket}/retry/b.bin"]

    # the proxy's errors are real: pyarrow's default filesystem gives up on them
    flaky_s3.failures_left = 3
    default = pafs.S3FileSystem(endpoint_override=flaky_s3.url, region="us-east-1")
    with pytest.raises(OSError):
        default.open_input_stream(f"{s3_bucket.removeprefix('s3://')}/retry/a.bin").read()

