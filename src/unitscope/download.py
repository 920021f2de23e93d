"""Checksummed, cached, resumable downloads and safe archive extraction.

Every external input (checkpoints, datasets) enters the pipeline through `fetch`, so that:

* a file is only ever placed at its destination after its sha256 matched the pinned value, and a
  wrong file is deleted rather than left where a later stage could mistake it for the real one;
* a file that is already present and correct costs one hash and no network (cache hit);
* an interrupted transfer is kept as ``<dest>.part`` and resumed with an HTTP ``Range`` request,
  with retries and exponential backoff for connection errors, 5xx answers and truncated bodies.

`extract_archive` unpacks zip/tar archives into a temporary directory beside the target and renames
it into place, refusing members that would land outside it.

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
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from unitscope.fsutil import sha256_file

__all__ = ["DownloadError", "fetch", "extract_archive"]

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "unitscope-downloader/1"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$")
# 4xx answers that mean "try again later" rather than "this URL is wrong".
_RETRYABLE_4XX = {408, 429}


class DownloadError(RuntimeError):
    """A download or extraction failed; the message is one line naming the URL and/or file."""


class _Retryable(Exception):
    """Internal: a transient failure of one attempt (the message says what happened)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


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

    if dest.is_file():
        actual = sha256_file(dest)
        if actual == expected:
            log.debug("cache hit: %s", dest)
            return dest
        log.warning(
            "%s exists but its sha256 is %s, not %s; deleting it and downloading %s",
            dest,
            actual,
            expected,
            url,
        )
        dest.unlink()
    elif dest.exists():
        raise DownloadError(f"download {url}: destination {dest} exists and is not a regular file")

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # A fresh opener per call so proxy settings are read from the environment now, not cached.
    opener = urllib.request.build_opener()

    attempts = 1 + retries
    for attempt in range(1, attempts + 1):
        try:
            _attempt(opener, url, part, dest.name, timeout)
            break
        except _Retryable as exc:
            if attempt == attempts:
                kept = f"; {part.stat().st_size} bytes kept in {part} for resuming" if part.exists() else ""
                raise DownloadError(
                    f"download {url}: failed after {attempts} attempt(s), last error: {_one_line(exc)}{kept}"
                ) from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "download %s: attempt %d/%d failed (%s); retrying in %.2fs",
                url,
                attempt,
                attempts,
                _one_line(exc),
                delay,
            )
            time.sleep(delay)

    actual = sha256_file(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download {url}: sha256 mismatch for {dest} (expected {expected}, got {actual}); the file was deleted"
        )
    os.replace(part, dest)
    return dest


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
            reason = _one_line(exc.reason)
            if exc.code >= 500 or exc.code in _RETRYABLE_4XX:
                raise _Retryable(f"HTTP {exc.code} {reason}") from None
            raise DownloadError(f"download {url}: HTTP {exc.code} {reason} (expected 200)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Retryable(f"connection failed: {_one_line(reason) or type(exc).__name__}") from None

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
                    detail = _one_line(exc) or type(exc).__name__
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


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a zip / tar / tar.gz / tgz archive into `dest_dir`, all or nothing.

    Members go to a temporary directory beside `dest_dir`, which is renamed into place only after
    every member was extracted. Members with absolute paths or `..` are refused before anything is
    written (tar members also pass tarfile's "data" filter). If `dest_dir` exists it is returned as is.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        return dest_dir
    if not archive.is_file():
        raise DownloadError(f"extract {archive}: archive not found (expected a zip or tar file)")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)

    if zipfile.is_zipfile(archive):
        kind = "zip"
    elif tarfile.is_tarfile(archive):
        kind = "tar"
    else:
        raise DownloadError(f"extract {archive}: not a zip or tar archive")

    temp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.tmp-", dir=dest_dir.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _refuse_unsafe(archive, (info.filename for info in zf.infolist()))
                zf.extractall(temp)
        else:
            with tarfile.open(archive, "r:*") as tf:
                _refuse_unsafe(archive, tf.getnames())
                try:
                    tf.extractall(temp, filter="data")
                except tarfile.FilterError as exc:
                    raise DownloadError(f"extract {archive}: refused member: {_one_line(exc)}") from None
        try:
            os.rename(temp, dest_dir)
        except OSError:
            if dest_dir.exists():  # another process finished first; theirs is as good as ours
                return dest_dir
            raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"extract {archive}: corrupt archive: {_one_line(exc)}") from None
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return dest_dir


def _refuse_unsafe(archive: Path, names) -> None:
    for name in names:
        if _unsafe_member(name):
            raise DownloadError(
                f"extract {archive}: refusing member {name!r} (absolute path or '..'; "
                "expected paths relative to the archive root)"
            )
