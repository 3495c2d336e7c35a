"""pipeline.data.download against a small HTTP server on 127.0.0.1 (no network needed): resume, retries,
sizes and checksums, atomic output, one-line errors for unreachable hosts.

`serve()` is also the fake remote end of tests/data/test_audioset.py and tests/data/test_fsd50k.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.data.download import DownloadError, fetch, fetch_json, part_path


class FakeRemote:
    """Files by URL path; `faults[path]` is a list of what the next requests get instead:
    an HTTP status (int) or "drop" (half the body, then the connection closes)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == "/" + path.lstrip("/"))


def _handler(remote: FakeRemote):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            remote.requests.append((path, self.headers.get("Range")))
            body = remote.files.get(path)
            fault = remote.faults.get(path, []).pop(0) if remote.faults.get(path) else None
            if isinstance(fault, int):
                self.send_error(fault)
                return
            if body is None:
                self.send_error(404)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if fault == "drop":
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@contextlib.contextmanager
def serve(files: dict[str, bytes] | None = None):
    remote = FakeRemote()
    remote.files = {"/" + k.lstrip("/"): v for k, v in (files or {}).items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(remote))
    server.daemon_threads = True
    remote.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield remote
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


def test_download_is_atomic_and_skipped_when_present(tmp_path):
    with serve({"a/file.bin": PAYLOAD}) as remote:
        dest = fetch(
            remote.url("a/file.bin"), tmp_path / "file.bin", size=len(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest()
        )
        assert dest.read_bytes() == PAYLOAD
        assert sorted(p.name for p in tmp_path.iterdir()) == [".file.bin.lock", "file.bin"]
        fetch(remote.url("a/file.bin"), dest)
        assert remote.count("a/file.bin") == 1  # the second call found it complete


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    with serve({"f.bin": PAYLOAD}) as remote:
        remote.faults["/f.bin"] = ["drop"]
        dest = fetch(remote.url("f.bin"), tmp_path / "f.bin", size=len(PAYLOAD), backoff=0.01)
        assert dest.read_bytes() == PAYLOAD
        assert [r for _, r in remote.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]
        # a partial file from an earlier (killed) run is resumed too, and never appears as the output
        (tmp_path / "g.bin").unlink(missing_ok=True)
        part_path(tmp_path / "g.bin").write_bytes(PAYLOAD[:1000])
        remote.files["/g.bin"] = PAYLOAD
        fetch(remote.url("g.bin"), tmp_path / "g.bin", size=len(PAYLOAD))
        assert (tmp_path / "g.bin").read_bytes() == PAYLOAD and not part_path(tmp_path / "g.bin").exists()
        assert remote.requests[-1] == ("/g.bin", "bytes=1000-")


def test_transient_errors_are_retried_and_permanent_ones_are_one_line(tmp_path):
    with serve({"f.bin": PAYLOAD}) as remote:
        remote.faults["/f.bin"] = [503, 429]
        fetch(remote.url("f.bin"), tmp_path / "f.bin", backoff=0.01)
        assert remote.count("f.bin") == 3
        remote.faults["/g.bin"] = [503] * 5
        remote.files["/g.bin"] = PAYLOAD
        with pytest.raises(DownloadError) as err:
            fetch(remote.url("g.bin"), tmp_path / "g.bin", retries=2, backoff=0.01, hint="do X")
        assert "after 3 attempts (HTTP 503" in str(err.value) and str(err.value).endswith("do X")
        with pytest.raises(DownloadError, match=r"HTTP 404 .* missing.bin") as err:
            fetch(remote.url("missing.bin"), tmp_path / "missing.bin", backoff=0.01)
        assert remote.count("missing.bin") == 1 and "\n" not in str(err.value)
        assert not (tmp_path / "g.bin").exists() and not (tmp_path / "missing.bin").exists()


def test_size_and_checksum_mismatches_are_caught(tmp_path):
    with serve({"f.bin": PAYLOAD}) as remote:
        with pytest.raises(DownloadError, match="MD5 .* does not match"):
            fetch(remote.url("f.bin"), tmp_path / "f.bin", md5="0" * 32, backoff=0.01)
        assert not (tmp_path / "f.bin").exists() and not part_path(tmp_path / "f.bin").exists()
        with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD) + 1}"):
            fetch(remote.url("f.bin"), tmp_path / "f.bin", size=len(PAYLOAD) + 1, retries=1, backoff=0.01)
        assert not (tmp_path / "f.bin").exists()


def test_unreachable_host_fails_at_once_with_one_line_saying_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x/eval_segments.csv"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "eval_segments.csv", retries=5, backoff=30, hint="copy it by hand")
    message = str(err.value)
    assert message.startswith("cannot reach 127.0.0.1:") and url in message and message.endswith("copy it by hand")
    assert "\n" not in message
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_json(url, retries=5, backoff=30)


def test_fetch_json(tmp_path):
    with serve({"api/rec": b'{"files": [{"key": "a", "size": 3}]}', "api/bad": b"<html>"}) as remote:
        assert fetch_json(remote.url("api/rec"))["files"][0]["key"] == "a"
        with pytest.raises(DownloadError, match="expected JSON"):
            fetch_json(remote.url("api/bad"))
