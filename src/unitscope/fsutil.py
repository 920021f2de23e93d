"""File helpers shared by every stage: hashing and all-or-nothing writes.

Every artifact is written under a temporary name next to its destination and renamed into place
only when complete, so an interrupted job never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from unitscope.errors import UnitscopeError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UnitscopeError, OSError):
    """The disk (or quota) filled up while writing an artifact; the message names the artifact. Nothing is left."""


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free:,} bytes free there; nothing was left behind"
    except OSError:
        return "nothing was left behind"


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def remove_stale_temps(final: Path) -> None:
    """Delete temporaries a killed writer of `final` left behind (one writer per output, as Snakemake ensures)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories (a Zarr store is a directory). On error the temporary
    path is removed and nothing exists at `path` that was not there before.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    temp = _temp_sibling(final)
    try:
        yield temp
        if not temp.exists():
            raise FileNotFoundError(f"{final}: nothing was written to the temporary path {temp}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(temp, final)
    except OSError as err:
        if err.errno in DISK_FULL or "No space left on device" in str(err):  # pyarrow's errors carry no errno
            raise DiskFullError(f"no space left on the device while writing {final} ({_free(final.parent)})") from None
        raise
    finally:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        elif temp.exists():
            temp.unlink()


def write_parquet(frame, path: str | os.PathLike) -> None:
    """A pandas table as Parquet (no index), written whole then renamed."""
    with atomic_path(path) as temp:
        frame.to_parquet(temp, index=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text)


def write_json(record: dict, path: str | os.PathLike) -> None:
    """A JSON record (indented), written whole then renamed."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def publish_tree(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Give the finished folder `source` a second name, `destination`, by hard-linking every file (a copy where
    links cannot be made, e.g. across devices): no extra space, and `destination` appears whole or not at all."""
    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder to publish as {destination}")
    with atomic_path(destination) as temp:
        shutil.copytree(source, temp, copy_function=_link_or_copy, symlinks=True)
    return destination


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_npz(arrays: Mapping, path: str | os.PathLike) -> None:
    """An .npz archive (np.load reads it) whose bytes depend only on the arrays: deflated members stamped with a
    fixed time (np.savez stamps the current one, so two runs of a shard would differ), written whole then renamed."""
    import zipfile

    import numpy as np

    with atomic_path(path) as temp, zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
