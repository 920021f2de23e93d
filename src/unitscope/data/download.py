"""Checksummed, cached, resumable downloads and safe archive extraction.

Every external input (checkpoints, datasets) enters the pipeline through `fetch`, so that:

* a file is only ever placed at its destination after its sha256 matched the pinned value, and a
  wrong file is deleted rather than left where a later stage could mistake it for the real one;
* a file that is already present and correct costs one hash and no network (cache hit);
* an interrupted transfer is kept as ``<dest>.part`` and resumed with an HTTP ``Range`` request,
  with retries and exponential backoff for connection errors, 5xx answers and truncated bodies.

`extract_archive` unpacks zip/tar archives into a temporary directory beside the target and renames
it into place, refusing members that would land outside it, archives whose members declare more
bytes than a cap or than the disk has free, and reusing an existing folder only if its files and
sizes match the archive's members (a shared cache may have been tampered with).

`fetch_and_unpack` is the one fetch-then-unpack step every downloaded dataset goes through: the
unpacked folder is keyed by the archive's sha256, so a new version at the same URL is never read
from an older version's files.

Only the standard library (plus tqdm for an optional progress bar) is used: no torch, no snakemake.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from unitscope.errors import UnitscopeError, one_line
from unitscope.fsutil import DISK_FULL, sha256_file

__all__ = ["DEFAULT_MAX_UNPACKED_GB", "DownloadError", "extract_archive", "fetch", "fetch_and_unpack"]

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "unitscope-downloader/1"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$")
# 4xx answers that mean "try again later" rather than "this URL is wrong".
_RETRYABLE_4XX = {408, 429}
# Default cap on the bytes an archive's members may declare (config: max_unpacked_gb; 1 GB = 1e9 bytes).
DEFAULT_MAX_UNPACKED_GB = 20
# More members than this is an archive bomb made of empty files (inodes, not bytes), not a dataset.
MAX_MEMBERS = 1_000_000
_UNPACKED_RE = re.compile(r"^unpacked(-[0-9a-f]{16})?$")
# What zipfile / tarfile raise for a damaged or unsupported archive.
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError)


class DownloadError(UnitscopeError, RuntimeError):
    """A download or extraction failed; the message is one line naming the URL and/or file."""


class _Retryable(Exception):
    """Internal: a transient failure of one attempt (the message says what happened)."""


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def _human(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} bytes"


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    *,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30,
) -> Path:
    """Download `url` to `dest` unless a file with the expected sha256 is already there.

    The body goes to ``dest.part`` (resumed with ``Range`` if it exists), is verified against
    `sha256`, and only then renamed onto `dest`. Transient failures (connection errors, HTTP 5xx,
    408/429, truncated bodies) are retried `retries` times with exponential backoff starting at
    `backoff` seconds. Raises `DownloadError` on any failure; `dest` never holds a wrong file.
    """
    dest = Path(dest)
    expected = sha256.strip().lower()
    if not _SHA256_RE.match(expected):
        raise ValueError(f"fetch {url}: expected sha256 must be 64 hex characters, got {sha256!r}")
    if retries < 0:
        raise ValueError(f"fetch {url}: retries must be >= 0, got {retries}")
    if _cached(url, dest, expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download_with_retries(url, part, dest.name, retries=retries, backoff=backoff, timeout=timeout)
    actual = sha256_file(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download {url}: sha256 mismatch for {dest} (expected {expected}, got {actual}); the file was deleted"
        )
    os.replace(part, dest)
    return dest


def _cached(url: str, dest: Path, expected: str) -> bool:
    """True if `dest` already holds the expected file; a wrong file there is deleted (and logged)."""
    if dest.is_file():
        actual = sha256_file(dest)
        if actual == expected:
            log.debug("cache hit: %s", dest)
            return True
        log.warning(
            "%s exists but its sha256 is %s, not %s; deleting it and downloading %s", dest, actual, expected, url
        )
        dest.unlink()
    elif dest.exists():
        raise DownloadError(f"download {url}: destination {dest} exists and is not a regular file")
    return False


def _download_with_retries(url: str, part: Path, label: str, *, retries: int, backoff: float, timeout: float) -> None:
    """Fill `part` with the body of `url`, retrying transient failures with exponential backoff."""
    opener = urllib.request.build_opener()  # fresh per call: proxy settings are read from the environment now
    attempts = 1 + retries
    for attempt in range(1, attempts + 1):
        try:
            _attempt(opener, url, part, label, timeout)
            return
        except OSError as exc:
            if not _disk_full(exc):
                raise
            size = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"download {url}: disk full while writing {part} ({os.strerror(exc.errno)}); "
                f"{size} bytes kept there for resuming once space is freed"
            ) from None
        except _Retryable as exc:
            if attempt == attempts:
                kept = f"; {part.stat().st_size} bytes kept in {part} for resuming" if part.exists() else ""
                raise DownloadError(
                    f"download {url}: failed after {attempts} attempt(s), last error: {one_line(exc)}{kept}"
                ) from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "download %s: attempt %d/%d failed (%s); retrying in %.2fs",
                url,
                attempt,
                attempts,
                one_line(exc),
                delay,
            )
            time.sleep(delay)


def _attempt(opener: urllib.request.OpenerDirector, url: str, part: Path, label: str, timeout: float) -> None:
    """One request: append the (rest of the) body to `part`.

    Returns when the body is complete as far as the server's headers can tell (the caller then
    verifies the hash). Raises `_Retryable` for transient failures, `DownloadError` otherwise.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)

    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                # Nothing left to send from `offset`: the part is probably complete; the hash decides.
                match = _UNSATISFIED_RANGE_RE.match(exc.headers.get("Content-Range", "") or "")
                if match and offset > int(match.group(1)):
                    part.unlink()
                    raise _Retryable(
                        f"{part} has {offset} bytes but the server's file has {match.group(1)}; restarting from zero"
                    ) from None
                return
            reason = one_line(exc.reason)
            if exc.code >= 500 or exc.code in _RETRYABLE_4XX:
                raise _Retryable(f"HTTP {exc.code} {reason}") from None
            raise DownloadError(f"download {url}: HTTP {exc.code} {reason} (expected 200)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Retryable(f"connection failed: {one_line(reason) or type(exc).__name__}") from None

    with response:
        status = response.status
        if offset and status == 200:
            log.info("download %s: server ignored the Range request; restarting from zero", url)
            offset = 0
        elif status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", "") or "")
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(
                    f"206 with Content-Range {response.headers.get('Content-Range')!r} "
                    f"does not start at byte {offset}; restarting from zero"
                )
        elif status != 200:
            raise DownloadError(f"download {url}: unexpected HTTP {status} (expected 200 or 206)")

        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        mode = "ab" if offset else "wb"
        with open(part, mode) as handle, _progress(label, offset, length) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    detail = one_line(exc) or type(exc).__name__
                    raise _Retryable(f"connection lost after {offset + received} bytes: {detail}") from None
                if not block:
                    break
                handle.write(block)
                received += len(block)
                bar.update(len(block))

    if length is not None and received < length:
        raise _Retryable(
            f"body truncated: got {received} of {length} bytes (from byte {offset}); "
            f"{offset + received} bytes in {part}"
        )


def _progress(label: str, initial: int, length: int | None):
    from tqdm import tqdm

    return tqdm(
        total=None if length is None else initial + length,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        file=sys.stderr,
        disable=None,  # no bar when stderr is not a terminal (Snakemake logs, CI)
        leave=False,
    )


def _unsafe_member(name: str) -> bool:
    """True if an archive member name is absolute or climbs out with `..`."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return True
    return ".." in PurePosixPath(normalized).parts


def fetch_and_unpack(
    url: str,
    sha256: str,
    folder: str | os.PathLike,
    *,
    retries: int = 3,
    max_unpacked_gb: float = DEFAULT_MAX_UNPACKED_GB,
    limit_key: str = "max_unpacked_gb",
) -> Path:
    """Download `url` into `folder` (sha256-checked, cached) and unpack it into ``folder/unpacked-<sha256[:16]>``.

    The unpacked folder is keyed by the archive's hash: a new version served at the same URL (new
    `sha256` in the config) is unpacked afresh instead of reusing the old version's files. Once it
    is in place, unpacked folders of other versions are removed (they are only a cache).
    `limit_key` is the config key of `max_unpacked_gb`, named in the error when the cap is hit.
    """
    folder = Path(folder)
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "archive"
    archive = fetch(url, folder / name, sha256, retries=retries)
    unpacked = extract_archive(
        archive,
        folder / f"unpacked-{sha256.strip().lower()[:16]}",
        max_unpacked_bytes=max_unpacked_gb * 1e9,
        limit_key=limit_key,
    )
    for entry in folder.iterdir():
        if entry.name != unpacked.name and _UNPACKED_RE.match(entry.name):
            log.info("removing %s: unpacked from another version of %s", entry, url)
            _remove(entry)
    return unpacked


def extract_archive(
    archive: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    max_unpacked_bytes: float | None = DEFAULT_MAX_UNPACKED_GB * 1e9,
    limit_key: str = "max_unpacked_gb",
) -> Path:
    """Extract a zip / tar / tar.gz / tgz archive into `dest_dir`, all or nothing.

    Before anything is written, members with absolute paths or `..` are refused (tar members also
    pass tarfile's "data" filter), as are archives with more than `MAX_MEMBERS` members or whose
    members declare more bytes than `max_unpacked_bytes` (config key `limit_key`) or than the
    destination filesystem has free. zipfile never writes more than a member's declared size, and
    tarfile copies exactly the declared size, so the declared total bounds what is written.
    Members go to a temporary directory beside `dest_dir`, renamed into place when complete.
    An existing `dest_dir` is reused only if its files and sizes match the archive's members;
    otherwise it is replaced by a fresh extraction.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if not archive.is_file():
        raise DownloadError(f"extract {archive}: archive not found (expected a zip or tar file)")
    if zipfile.is_zipfile(archive):
        kind = "zip"
    elif tarfile.is_tarfile(archive):
        kind = "tar"
    else:
        raise DownloadError(f"extract {archive}: not a zip or tar archive")
    try:
        files, total = _members(archive, kind)
    except _CORRUPT as exc:
        raise DownloadError(f"extract {archive}: corrupt archive: {one_line(exc)}") from None
    if _matches(dest_dir, files):
        return dest_dir
    if dest_dir.exists() or dest_dir.is_symlink():
        log.warning("%s does not match the members of %s (files or sizes differ); unpacking again", dest_dir, archive)
    _check_size(archive, total, dest_dir.parent, max_unpacked_bytes, limit_key)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)

    temp = None
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.tmp-", dir=dest_dir.parent))
        _extract_into(archive, kind, temp)
        _put_in_place(temp, dest_dir, files)
    except _CORRUPT as exc:
        raise DownloadError(f"extract {archive}: corrupt archive: {one_line(exc)}") from None
    except OSError as exc:
        if _disk_full(exc):
            raise DownloadError(
                f"extract {archive}: disk full while unpacking into {dest_dir} ({os.strerror(exc.errno)}); "
                "the partial folder was removed"
            ) from None
        raise
    finally:
        if temp is not None and temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return dest_dir


def _norm(name: str) -> str:
    """A member name as the extracted file's path relative to the destination (as zipfile/tarfile place it)."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _members(archive: Path, kind: str) -> tuple[dict[str, int | None], int]:
    """The files an archive unpacks to (path -> size, None for a symlink) and the declared total of bytes.

    Refuses unsafe names and too many members. Hard links count as their target's size in the
    listing (they are files in the folder) but not in the total (they take no extra space).
    """
    files: dict[str, int | None] = {}
    total = 0
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
        _check_count(archive, len(infos))
        for info in infos:
            _refuse_unsafe(archive, [info.filename])
            if not info.is_dir():
                files[_norm(info.filename)] = info.file_size
                total += info.file_size
        return files, total
    with tarfile.open(archive, "r:*") as tf:
        for count, member in enumerate(tf, start=1):
            _check_count(archive, count)
            _refuse_unsafe(archive, [member.name])
            name = _norm(member.name)
            if member.isreg():
                files[name] = member.size
                total += member.size
            elif member.islnk():
                files[name] = files.get(_norm(member.linkname))
            elif member.issym():
                files[name] = None
    return files, total


def _check_count(archive: Path, count: int) -> None:
    if count > MAX_MEMBERS:
        raise DownloadError(
            f"extract {archive}: more than {MAX_MEMBERS} members; refusing to unpack (an archive bomb, not a dataset)"
        )


def _check_size(archive: Path, total: int, parent: Path, limit: float | None, limit_key: str) -> None:
    """Refuse an archive whose members declare more than `limit` bytes or than `parent`'s filesystem has free."""
    if limit is not None and total > limit:
        raise DownloadError(
            f"extract {archive}: its members declare {_human(total)} uncompressed, more than the limit of "
            f"{_human(limit)} ({limit_key}); raise {limit_key} if the archive is trusted"
        )
    existing = parent
    while not existing.exists():  # nothing is created before the checks pass
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if total > free:
        raise DownloadError(
            f"extract {archive}: its members declare {_human(total)} uncompressed but only {_human(free)} "
            f"is free on the filesystem of {parent}; free some space or move resources_dir"
        )


def _extract_into(archive: Path, kind: str, temp: Path) -> None:
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(temp)
        return
    with tarfile.open(archive, "r:*") as tf:
        try:
            tf.extractall(temp, filter="data")
        except tarfile.FilterError as exc:
            raise DownloadError(f"extract {archive}: refused member: {one_line(exc)}") from None


def _folder_files(root: Path) -> dict[str, int | None]:
    """Every file under `root` (path -> size, None for a symlink), symlinks not followed."""
    found: dict[str, int | None] = {}
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    found[Path(entry.path).relative_to(root).as_posix()] = None
                elif entry.is_dir():
                    stack.append(Path(entry.path))
                else:
                    found[Path(entry.path).relative_to(root).as_posix()] = entry.stat().st_size
    return found


def _matches(folder: Path, files: dict[str, int | None]) -> bool:
    """True if `folder` is a real directory holding exactly `files` with their sizes (contents are not hashed)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        return _folder_files(folder) == files
    except OSError:
        return False


def _put_in_place(temp: Path, dest_dir: Path, files: dict[str, int | None]) -> None:
    """Rename the finished `temp` onto `dest_dir`, replacing a mismatching folder there."""
    try:
        os.rename(temp, dest_dir)
        return
    except OSError:
        if not (dest_dir.exists() or dest_dir.is_symlink()):
            raise
    if _matches(dest_dir, files):  # another process finished first; theirs is as good as ours
        return
    trash = dest_dir.with_name(f".{dest_dir.name}.stale-{uuid.uuid4().hex[:8]}")
    os.rename(dest_dir, trash)
    os.rename(temp, dest_dir)
    _remove(trash)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _refuse_unsafe(archive: Path, names) -> None:
    for name in names:
        if _unsafe_member(name):
            raise DownloadError(
                f"extract {archive}: refusing member {name!r} (absolute path or '..'; "
                "expected paths relative to the archive root)"
            )
