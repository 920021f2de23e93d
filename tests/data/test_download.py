"""Tests for unitscope.data.download against a real local HTTP server (127.0.0.1 only, no internet).

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

import builtins
import errno
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import DATA_DIR

from unitscope.data import download
from unitscope.data.download import DownloadError, extract_archive, fetch, fetch_and_unpack

SHARED_FILE = DATA_DIR / "checkpoints" / "resnet20-12fca82f.th"
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
    # An existing dest_dir that matches the archive's members is reused, not extracted again.
    inode = (dest_dir / "a.txt").stat().st_ino
    assert extract_archive(archive, dest_dir) == dest_dir
    assert (dest_dir / "a.txt").stat().st_ino == inode
    # One whose files differ in size is not trusted: it is replaced by a fresh extraction.
    (dest_dir / "a.txt").write_text("changed")
    assert extract_archive(archive, dest_dir) == dest_dir
    assert (dest_dir / "a.txt").read_text() == "alpha"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.zip", "out"]


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


# ----------------------------------------------------------------------------- size caps


def _zeros_zip(path: Path, megabytes: int) -> Path:
    """A small deflated zip whose one member unpacks to `megabytes` MB of zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as member:
        for _ in range(megabytes):
            member.write(bytes(1_000_000))
    return path


def _zeros_tgz(path: Path, megabytes: int) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = megabytes * 1_000_000
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    return path


@pytest.mark.parametrize("make", [_zeros_zip, _zeros_tgz], ids=["zip", "tgz"])
def test_archive_declaring_more_than_the_cap_is_refused(tmp_path, make):
    archive = make(tmp_path / "bomb.archive", 3)
    assert archive.stat().st_size < 100_000
    dest_dir = tmp_path / "out" / "unpacked"

    with pytest.raises(DownloadError) as info:
        extract_archive(archive, dest_dir, max_unpacked_bytes=1e6, limit_key="datasets.x.source.max_unpacked_gb")

    message = _assert_one_line(info.value)
    assert str(archive) in message and "datasets.x.source.max_unpacked_gb" in message
    assert "3.00 MB" in message and "1.00 MB" in message  # the declared total and the limit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.archive"]  # nothing written, not even out/


@pytest.mark.parametrize("make", [_zeros_zip, _zeros_tgz], ids=["zip", "tgz"])
def test_archive_with_too_many_members_is_refused(tmp_path, monkeypatch, make):
    monkeypatch.setattr(download, "MAX_MEMBERS", 3)
    src = tmp_path / "src"
    src.mkdir()
    archive = tmp_path / "many.archive"
    if make is _zeros_zip:
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(5):
                zf.writestr(f"f{i}.txt", "")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for i in range(5):
                (src / f"f{i}.txt").write_text("")
                tf.add(src / f"f{i}.txt", arcname=f"f{i}.txt")

    with pytest.raises(DownloadError) as info:
        extract_archive(archive, tmp_path / "out")

    message = _assert_one_line(info.value)
    assert str(archive) in message and "more than 3 members" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("crc", ["of_declared_bytes", "of_real_bytes"])
def test_zip_member_bigger_than_declared_never_writes_past_its_size(tmp_path, crc):
    """A zip whose central directory declares 1000 bytes for a member whose stream holds 1 MiB.

    zipfile stops reading a member at its declared size, so what is written is bounded by the declared
    total that the cap and free-space checks looked at; a CRC that gives the lie away makes it corrupt.
    """
    data = bytes(range(256)) * 4096
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.bin", data)
        zf.filelist[0].file_size = 1000  # written to the central directory at close
        if crc == "of_declared_bytes":
            zf.filelist[0].CRC = zlib.crc32(data[:1000])
    dest_dir = tmp_path / "out"

    if crc == "of_declared_bytes":
        extract_archive(archive, dest_dir, max_unpacked_bytes=1000)
        assert (dest_dir / "liar.bin").read_bytes() == data[:1000]
    else:
        with pytest.raises(DownloadError) as info:
            extract_archive(archive, dest_dir, max_unpacked_bytes=1000)
        message = _assert_one_line(info.value)
        assert str(archive) in message and "corrupt" in message
        assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.zip"]


# ----------------------------------------------------------------------------- versions and a hostile cache


def _zip_bytes(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_new_version_at_same_url_is_unpacked_afresh_and_old_folders_removed(server, tmp_path):
    url = server.url + "/file"
    folder = tmp_path / "downloads" / "set"
    v1 = _zip_bytes({"labels.csv": "v1", "images/a.txt": "alpha"})
    server.state.payload = v1

    first = fetch_and_unpack(url, _sha(v1), folder, retries=0)

    assert first == folder / f"unpacked-{_sha(v1)[:16]}"
    assert (first / "labels.csv").read_text() == "v1"
    (folder / "unpacked").mkdir()  # the layout before unpacked folders were keyed by hash: also stale

    v2 = _zip_bytes({"labels.csv": "v2 labels", "images/a.txt": "alpha"})
    server.state.payload = v2
    second = fetch_and_unpack(url, _sha(v2), folder, retries=0)

    assert second == folder / f"unpacked-{_sha(v2)[:16]}"
    assert (second / "labels.csv").read_text() == "v2 labels"
    assert sorted(p.name for p in folder.iterdir()) == ["file", second.name]
    assert server.state.count("/file") == 2


def test_tampered_unpacked_folder_is_extracted_again(server, tmp_path):
    url = server.url + "/file"
    folder = tmp_path / "cache"
    archive = _zip_bytes({"labels.csv": "x,y\n", "images/a.txt": "alpha", "images/b.txt": "beta"})
    server.state.payload = archive
    sha = _sha(archive)
    # A shared cache may already hold a folder of that name that does not match the archive.
    planted = folder / f"unpacked-{sha[:16]}"
    (planted / "images").mkdir(parents=True)
    (planted / "labels.csv").write_text("x,y\n")
    (planted / "images" / "a.txt").write_text("evil!")  # wrong size; b.txt missing

    unpacked = fetch_and_unpack(url, sha, folder, retries=0)

    assert unpacked == planted
    assert (unpacked / "images" / "a.txt").read_text() == "alpha"
    assert (unpacked / "images" / "b.txt").read_text() == "beta"
    # An intact folder is reused as is (same inode); an added file makes it mismatch again.
    inode = (unpacked / "images" / "b.txt").stat().st_ino
    assert fetch_and_unpack(url, sha, folder, retries=0) == unpacked
    assert (unpacked / "images" / "b.txt").stat().st_ino == inode
    (unpacked / "images" / "extra.png").write_bytes(b"not from the archive")
    fetch_and_unpack(url, sha, folder, retries=0)
    assert sorted(p.name for p in (unpacked / "images").iterdir()) == ["a.txt", "b.txt"]
    # The archive itself was downloaded once; no temporary or stale folders are left.
    assert server.state.count("/file") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["file", unpacked.name]


# ----------------------------------------------------------------------------- disk full


def _simulate_small_disk(monkeypatch, disk: Path, capacity: int) -> None:
    """Fallback when tmpfs cannot be mounted: writes under `disk` fail with ENOSPC past `capacity` bytes."""
    real_open, real_usage, left = builtins.open, shutil.disk_usage, [capacity]

    def under_disk(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(disk.resolve())

    class FullDiskFile:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            if len(data) > left[0]:
                self._handle.write(data[: left[0]])
                left[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(data)
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDiskFile(handle) if under_disk(file) and ("w" in mode or "a" in mode) else handle

    def fake_usage(path):
        return real_usage(path)._replace(free=left[0]) if under_disk(path) else real_usage(path)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(shutil, "disk_usage", fake_usage)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 512 KiB filesystem: a real tmpfs where mounting is allowed (root, as on the test machine), else simulated."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        command = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]
        mounted = subprocess.run(command, capture_output=True).returncode == 0
    except FileNotFoundError:
        mounted = False
    if not mounted:
        _simulate_small_disk(monkeypatch, disk, 512 * 1024)
    try:
        yield disk
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_archive_larger_than_the_free_space_is_refused(tmp_path, small_disk):
    archive = _zeros_zip(tmp_path / "big.zip", 3)
    dest_dir = small_disk / "out"

    with pytest.raises(DownloadError) as info:
        extract_archive(archive, dest_dir)

    message = _assert_one_line(info.value)
    assert str(archive) in message and "3.00 MB" in message and "free" in message
    assert list(small_disk.iterdir()) == []


def test_disk_full_while_downloading_keeps_the_part_for_resuming(server, payload, payload_sha, small_disk):
    dest = small_disk / "resnet20.th"  # 1.1 MB onto 512 KiB
    url = server.url + "/file"

    with pytest.raises(DownloadError) as info:
        fetch(url, dest, payload_sha, **FAST)

    message = _assert_one_line(info.value)
    assert url in message and str(_part(dest)) in message and "disk full" in message
    assert not dest.exists()
    assert 0 < _part(dest).stat().st_size < len(payload)
    assert server.state.count("/file") == 1  # a full disk is not retried like a network error


def test_disk_full_while_unpacking_removes_the_partial_folder(tmp_path, small_disk, monkeypatch):
    archive = _zeros_zip(tmp_path / "big.zip", 2)
    # The disk fills up after the free-space check (another writer, a quota): let the check pass.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 40, used=0, free=1 << 40))
    dest_dir = small_disk / "out"

    with pytest.raises(DownloadError) as info:
        extract_archive(archive, dest_dir)

    message = _assert_one_line(info.value)
    assert str(archive) in message and str(dest_dir) in message and "disk full" in message
    assert list(small_disk.iterdir()) == []
