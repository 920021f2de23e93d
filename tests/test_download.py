"""Tests for unitscope.download against a real local HTTP server (127.0.0.1 only, no internet).

The server serves the real resnet20 checkpoint bytes from ../shared/data and can misbehave on
purpose depending on the URL path:

  /file             normal, honours Range (206, or 416 past the end)
  /truncate-once    first request: full Content-Length but only half the body, then close
  /truncate-always  every request: claims the full (range) length, sends half of it
  /error-once       first request: 500, afterwards normal
  /missing          404
  /no-range         ignores Range, always 200 with the whole file
"""

from __future__ import annotations

import hashlib
import http.server
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unitscope.download import DownloadError, extract_archive, fetch

SHARED_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "checkpoints" / "resnet20-12fca82f.th"
FAST = {"backoff": 0.01, "timeout": 5}


@dataclass
class ServerState:
    payload: bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.requests if p == path)

    def ranges(self, path: str) -> list[str | None]:
        with self.lock:
            return [r for p, r in self.requests if p == path]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: closing = end of body

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    @property
    def state(self) -> ServerState:
        return self.server.state  # type: ignore[attr-defined]

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        range_header = self.headers.get("Range")
        with self.state.lock:
            self.state.requests.append((path, range_header))
            nth = sum(1 for p, _ in self.state.requests if p == path)
        data = self.state.payload

        if path == "/missing":
            self.send_error(404, "Not Found")
            return
        if path == "/error-once" and nth == 1:
            self.send_error(500, "Internal Server Error")
            return

        start = 0
        if range_header and path != "/no-range":
            spec = range_header.removeprefix("bytes=")
            first, _, last = spec.partition("-")
            start = int(first)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = int(last) if last else len(data) - 1
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

        truncate = path == "/truncate-always" or (path == "/truncate-once" and nth == 1)
        if truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def payload() -> bytes:
    if not SHARED_FILE.is_file():
        pytest.skip(f"test data not found: {SHARED_FILE}")
    return SHARED_FILE.read_bytes()


@pytest.fixture(scope="module")
def payload_sha(payload: bytes) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    # The checkpoint name pins its hash prefix; the full value is computed, not trusted.
    assert digest.startswith("12fca82f")
    return digest


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(payload: bytes):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState(payload=payload)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    httpd.url = f"http://{host}:{port}"  # type: ignore[attr-defined]
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive(), "HTTP server thread did not stop"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- fetch


def test_good_file_is_downloaded_and_then_cached(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "downloads" / "resnet20.th"
    url = server.url + "/file"

    result = fetch(url, dest, payload_sha, **FAST)

    assert result == dest
    assert dest.read_bytes() == payload
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == payload_sha
    assert not _part(dest).exists()
    assert server.state.count("/file") == 1

    # Second call: cache hit, the server must not be asked again.
    assert fetch(url, dest, payload_sha, **FAST) == dest
    assert server.state.count("/file") == 1
    assert dest.read_bytes() == payload


def test_truncated_body_is_resumed_with_range(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"

    fetch(server.url + "/truncate-once", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert not _part(dest).exists()
    ranges = server.state.ranges("/truncate-once")
    assert ranges == [None, f"bytes={len(payload) // 2}-"]


def test_server_that_always_truncates_gives_up(server, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    url = server.url + "/truncate-always"

    with pytest.raises(DownloadError) as info:
        fetch(url, dest, payload_sha, retries=2, **FAST)

    message = _assert_one_line(info.value)
    assert url in message
    assert "3 attempt" in message
    assert not dest.exists()
    assert server.state.count("/truncate-always") == 3
    # Each attempt resumed where the previous one stopped.
    ranges = server.state.ranges("/truncate-always")
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


def test_wrong_checksum_deletes_everything(server, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    wrong = "0" * 64
    url = server.url + "/file"

    with pytest.raises(DownloadError) as info:
        fetch(url, dest, wrong, **FAST)

    message = _assert_one_line(info.value)
    assert "sha256" in message
    assert url in message and wrong in message and payload_sha in message
    assert not dest.exists()
    assert not _part(dest).exists()
    assert list(tmp_path.iterdir()) == []


def test_server_error_then_success(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"

    fetch(server.url + "/error-once", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert server.state.count("/error-once") == 2


def test_404_fails_at_once(server, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    url = server.url + "/missing"

    with pytest.raises(DownloadError) as info:
        fetch(url, dest, payload_sha, retries=3, **FAST)

    message = _assert_one_line(info.value)
    assert url in message and "404" in message
    assert server.state.count("/missing") == 1
    assert not dest.exists() and not _part(dest).exists()


def test_corrupt_existing_dest_is_replaced(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    corrupt = bytes(reversed(payload))  # same size, wrong bytes
    dest.write_bytes(corrupt)

    fetch(server.url + "/file", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert server.state.count("/file") == 1
    assert not _part(dest).exists()


def test_leftover_part_from_earlier_run_is_resumed(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    _part(dest).write_bytes(payload[:1000])

    fetch(server.url + "/file", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert server.state.ranges("/file") == ["bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    _part(dest).write_bytes(b"garbage that must not end up in the file")

    fetch(server.url + "/no-range", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert server.state.count("/no-range") == 1


def test_complete_part_answered_416_is_verified(server, payload, payload_sha, tmp_path):
    dest = tmp_path / "resnet20.th"
    _part(dest).write_bytes(payload)

    fetch(server.url + "/file", dest, payload_sha, **FAST)

    assert dest.read_bytes() == payload
    assert server.state.ranges("/file") == [f"bytes={len(payload)}-"]
    assert not _part(dest).exists()


def test_connection_refused_is_retried_then_fails(payload_sha, tmp_path):
    import socket

    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file"
    dest = tmp_path / "resnet20.th"

    with pytest.raises(DownloadError) as info:
        fetch(url, dest, payload_sha, retries=1, **FAST)

    message = _assert_one_line(info.value)
    assert url in message and "2 attempt" in message
    assert not dest.exists()


# ----------------------------------------------------------------------------- extract_archive


def test_extract_zip(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "alpha")
        zf.writestr("sub/b.txt", "beta")
    dest_dir = tmp_path / "out"

    assert extract_archive(archive, dest_dir) == dest_dir

    assert (dest_dir / "a.txt").read_text() == "alpha"
    assert (dest_dir / "sub" / "b.txt").read_text() == "beta"
    # No temporary directories left beside the result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.zip", "out"]
    # Existing dest_dir is returned untouched.
    (dest_dir / "a.txt").write_text("changed")
    assert extract_archive(archive, dest_dir) == dest_dir
    assert (dest_dir / "a.txt").read_text() == "changed"


def test_extract_zip_refuses_parent_traversal(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("../evil", "pwned")
    dest_dir = work / "out"

    with pytest.raises(DownloadError) as info:
        extract_archive(archive, dest_dir)

    message = _assert_one_line(info.value)
    assert "../evil" in message and str(archive) in message
    assert not dest_dir.exists()
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.zip"]


def test_extract_tar_gz(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    archive = tmp_path / "good.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "a.txt", arcname="a.txt")
        tf.add(src / "sub" / "b.txt", arcname="sub/b.txt")
    dest_dir = tmp_path / "out"

    extract_archive(archive, dest_dir)

    assert (dest_dir / "a.txt").read_text() == "alpha"
    assert (dest_dir / "sub" / "b.txt").read_text() == "beta"


def test_extract_tar_refuses_absolute_member(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    member = tmp_path / "m.txt"
    member.write_text("x")
    archive = work / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(member, arcname="ok.txt")
        info = tf.gettarinfo(member, arcname="/abs/evil.txt")
        info.name = "/abs/evil.txt"  # tarfile strips the slash in arcname; force it
        with open(member, "rb") as handle:
            tf.addfile(info, handle)
    dest_dir = work / "out"

    with pytest.raises(DownloadError) as info_:
        extract_archive(archive, dest_dir)

    _assert_one_line(info_.value)
    assert not dest_dir.exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar"]
