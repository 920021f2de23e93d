"""Data stage: turn a configured image set into a manifest, and read images back from it.

A manifest (Parquet) has one row per drawn image: image_id, path, category, label, sha256,
included, exclude_reason. The draw is seeded: candidates are shuffled once and taken in order
until `size` readable images are found, so a smaller size is a prefix of a larger one and an
unreadable image is recorded (with why) instead of silently shrinking the set.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from unitscope.data.download import DEFAULT_MAX_UNPACKED_GB, fetch_and_unpack
from unitscope.errors import UnitscopeError
from unitscope.fsutil import sha256_file, write_parquet

MANIFEST_COLUMNS = ["image_id", "path", "category", "label", "sha256", "included", "exclude_reason"]


class DataError(UnitscopeError, ValueError):
    """A dataset is misconfigured or its files are missing; the message is one line."""


@dataclass(frozen=True)
class FolderLayout:
    """Where a set's images and labels are, once any download has been unpacked."""

    root: Path
    labels: Path
    path_column: str
    image_dir: str = ""
    label_column: str | None = None


@dataclass(frozen=True)
class ImageLimits:
    """Image sizes refused at manifest time (decoding or resizing them would exhaust memory)."""

    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 10.0
    key: str = "datasets.<name>"

    @classmethod
    def from_dataset(cls, name: str, dataset: dict) -> ImageLimits:
        return cls(
            dataset.get("max_pixels", cls.max_pixels),
            dataset.get("max_aspect_ratio", cls.max_aspect_ratio),
            f"datasets.{name}",
        )

    def refuse(self, width: int, height: int) -> str | None:
        """Why a width × height image is refused, or None."""
        if width == 0 or height == 0:
            return "image has zero size"
        if width * height > self.max_pixels:
            pixels = f"{width * height:,} pixels"
            return f"image is {width}×{height} = {pixels}, over {self.key}.max_pixels ({self.max_pixels:,})"
        ratio = max(width, height) / min(width, height)
        if ratio > self.max_aspect_ratio:
            limit = f"{self.key}.max_aspect_ratio ({self.max_aspect_ratio:g})"
            return f"image is {width}×{height} (aspect ratio {ratio:.0f}:1), over {limit}"
        return None


def resolve(path: str | os.PathLike, base: str | os.PathLike) -> Path:
    """`path` if absolute, else `base / path`."""
    path = Path(path)
    return path if path.is_absolute() else Path(base) / path


def folder_layout(name: str, source: dict, data_dir: str | os.PathLike) -> FolderLayout:
    """Layout of a `folder` source; a missing folder or CSV is a one-line error naming the key."""
    root = resolve(source["root"], data_dir)
    if not root.is_dir():
        raise DataError(f"datasets.{name}.source.root: folder {root} does not exist")
    labels = resolve(source["labels"], root)
    if not labels.is_file():
        raise DataError(f"datasets.{name}.source.labels: labels CSV {labels} does not exist")
    return FolderLayout(
        root=root,
        labels=labels,
        path_column=source["path_column"],
        image_dir=source.get("image_dir", ""),
        label_column=source.get("label_column"),
    )


def read_labels(name: str, layout: FolderLayout) -> pd.DataFrame:
    """The labels CSV with the columns the config names; a missing column is a one-line error."""
    try:
        table = pd.read_csv(layout.labels, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"datasets.{name}.source.labels: cannot read {layout.labels} as CSV ({err})") from None
    for key, column in (("path_column", layout.path_column), ("label_column", layout.label_column)):
        if column is not None and column not in table.columns:
            raise DataError(
                f"datasets.{name}.source.{key}: column {column!r} not in {layout.labels} "
                f"(columns: {', '.join(table.columns)})"
            )
    return table


def drop_duplicate_rows(name: str, table: pd.DataFrame, layout: FolderLayout) -> tuple[pd.DataFrame, int]:
    """Rows that name the same image (after normalising its path) kept once, the first; rows that name it
    with different labels are a one-line error (which label is right cannot be guessed). Returns the table
    and how many rows were dropped."""
    key = table[layout.path_column].map(lambda value: posixpath.normpath(value) if value else value)
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return table, 0
    if layout.label_column:
        labels = table[repeated].groupby(key[repeated])[layout.label_column].unique()
        conflicting = labels[labels.map(len) > 1]
        if len(conflicting):
            image = conflicting.index[0]
            lines = ", ".join(str(i + 2) for i in np.flatnonzero(key == image))  # line 1 is the header
            raise DataError(
                f"datasets.{name}.source.labels: {layout.labels} lines {lines} name the same image {image!r} "
                f"with different labels ({', '.join(map(repr, conflicting.iloc[0]))}); expected one row per image"
            )
    kept = table[~key.duplicated(keep="first")].reset_index(drop=True)
    return kept, len(table) - len(kept)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def _realpath(path: str, real_folders: dict[str, str]) -> str:
    """`os.path.realpath(path)`, each parent folder resolved once per `real_folders` (a listing of thousands of
    images in a few folders would otherwise resolve every folder again for every file)."""
    folder, name = os.path.split(path)
    if folder not in real_folders:
        real_folders[folder] = os.path.realpath(folder)
    joined = os.path.join(real_folders[folder], name)
    return os.path.realpath(joined) if os.path.islink(joined) else joined


def confined_path(root: Path, relative: str, real_folders: dict[str, str] | None = None) -> tuple[Path, str | None]:
    """`root / relative`, and why it may not be read (None when it may).

    A dataset folder is untrusted: an absolute path, a path that climbs out with `..`, or a symlink whose
    target lies outside `root` is refused, so no file outside the dataset is read, hashed or shown.
    `real_folders` caches resolved folders across the calls of one listing (the folder is read again next time).
    """
    if not relative:
        return root, "empty path"
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        return Path(relative), "absolute path (expected one relative to the dataset folder)"
    path = Path(os.path.normpath(root / relative))
    if not _inside(str(path), str(root)):
        return path, "path leaves the dataset folder"
    real_folders = {} if real_folders is None else real_folders
    if not _inside(_realpath(str(path), real_folders), _realpath(str(root), real_folders)):
        return path, "symlink to a file outside the dataset folder"
    return path, None


def image_path(layout: FolderLayout, value: str, real_folders: dict[str, str] | None = None) -> tuple[Path, str | None]:
    """Where a labels-CSV path points (inside the image folder), and why it may not be read (None when it may)."""
    if not value:
        return layout.root, "empty path in the labels CSV"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute():
        return Path(value), "absolute path in the labels CSV (expected one relative to the image folder)"
    return confined_path(layout.root, os.path.join(layout.image_dir, value), real_folders)


def check_image(path: Path, limits: ImageLimits | None = None) -> str | None:
    """None if the file decodes to a usable image, else the reason it cannot be used.

    The size is checked from the header before any pixel is decoded: a tiny file can declare a huge image
    (a decompression bomb) or a 8000×1 strip whose resize needs gigabytes.
    """
    limits = limits or ImageLimits()
    if os.path.islink(path) and not os.path.exists(path):
        return "broken symlink (its target is missing or loops)"
    if not path.is_file():
        return "missing file" if not path.exists() else "not a regular file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                reason = limits.refuse(*image.size)
                if reason is None:
                    image.load()
    except Image.DecompressionBombError as err:
        return f"image too large to decode ({str(err).splitlines()[0][:120]})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"unreadable image ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return reason


def build_manifest(
    name: str, category: str, layout: FolderLayout, size: int, seed: int, limits: ImageLimits | None = None
) -> pd.DataFrame:
    """Draw up to `size` readable images (seeded) and record every image looked at."""
    table, duplicates = drop_duplicate_rows(name, read_labels(name, layout), layout)
    if duplicates:
        print(f"{name}: {duplicates} duplicate rows of {layout.labels} dropped (same image as an earlier row)")
    table = table.sort_values(layout.path_column, kind="stable").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(table))
    rows, n_included, real_folders = [], 0, {}
    for index in order:
        if n_included >= size:
            break
        record = table.iloc[index]
        relative = (Path(layout.image_dir) / record[layout.path_column]).as_posix()
        path, reason = image_path(layout, record[layout.path_column], real_folders)
        reason = reason or check_image(path, limits)
        rows.append(
            {
                "image_id": f"{name}/{relative}",
                "path": str(path),
                "category": category,
                "label": record[layout.label_column] if layout.label_column else category,
                "sha256": sha256_file(path) if reason is None else "",
                "included": reason is None,
                "exclude_reason": reason or "",
            }
        )
        n_included += reason is None
    if n_included == 0:
        raise DataError(f"datasets.{name}: no readable image among {len(table)} rows of {layout.labels}")
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def listed_files(name: str, source: dict, data_dir: str | os.PathLike) -> list[str]:
    """The labels CSV and every image it names that is a regular file inside the dataset folder: exactly what
    the manifest reads, so what its rule depends on (a changed, added or removed image re-runs it).

    Never a walk of the folder, so stray, oddly named or looping files cannot stop a run and a huge folder
    costs nothing. Download sources give none (their URL and checksum are params); a missing folder or an
    unreadable CSV gives none too (the manifest job reports it in one line).
    """
    if source["kind"] != "folder":
        return []
    try:
        layout = folder_layout(name, source, data_dir)
        table = read_labels(name, layout)
    except DataError:
        return []
    files, real_folders = {str(layout.labels)}, {}
    for value in table[layout.path_column]:
        path, reason = image_path(layout, value, real_folders)
        if reason is None and path.is_file():
            files.add(str(path))
    return sorted(files)


def stat_fingerprint(paths: list[str]) -> str:
    """A hash of each file's name, size and mtime: tracks files that cannot be rule inputs."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0-\n".encode())
    return digest.hexdigest()


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    write_parquet(manifest, path)


def read_manifest(path: str | os.PathLike, *, included_only: bool = True) -> pd.DataFrame:
    manifest = pd.read_parquet(path)
    if included_only:
        manifest = manifest[manifest["included"]].reset_index(drop=True)
    return manifest


class ManifestDataset:
    """Map-style dataset over a manifest's included images: item i -> (transform(RGB image), i)."""

    def __init__(self, manifest: pd.DataFrame, transform):
        self.paths = list(manifest["path"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), index


def source_layout(
    name: str, source: dict, *, data_dir: str | os.PathLike, resources_dir: str | os.PathLike
) -> FolderLayout:
    """Resolve a dataset source to a folder layout, downloading and unpacking it first if needed.

    A download is unpacked under `resources_dir` (absolute, or relative to the working directory like every
    configured folder); its root is kept as such, not resolved against `data_dir` as a folder source's is.
    """
    if source["kind"] == "folder":
        return folder_layout(name, source, data_dir)
    unpacked = fetch_and_unpack(
        source["url"],
        source["sha256"],
        Path(resources_dir) / "downloads" / name,
        retries=source.get("retries", 3),
        max_unpacked_gb=source.get("max_unpacked_gb", DEFAULT_MAX_UNPACKED_GB),
        limit_key=f"datasets.{name}.source.max_unpacked_gb",
    )
    root = unpacked / source.get("subdir", "")
    if not root.is_dir():
        raise DataError(
            f"datasets.{name}.source.subdir: folder {source.get('subdir')!r} is not in the archive from "
            f"{source['url']} (unpacked into {unpacked})"
        )
    folder = {key: source[key] for key in ("labels", "path_column", "image_dir", "label_column") if key in source}
    return folder_layout(name, {**folder, "root": str(root)}, os.curdir)


def run_manifest(
    name: str,
    dataset: dict,
    *,
    seed: int,
    data_dir: str | os.PathLike,
    resources_dir: str | os.PathLike,
    out_path: str | os.PathLike,
) -> pd.DataFrame:
    """The data stage: resolve the source, draw the images, write the manifest."""
    layout = source_layout(name, dataset["source"], data_dir=data_dir, resources_dir=resources_dir)
    limits = ImageLimits.from_dataset(name, dataset)
    manifest = build_manifest(name, dataset["category"], layout, dataset["size"], seed, limits)
    write_manifest(manifest, out_path)
    excluded = manifest[~manifest["included"]]
    print(f"{name}: {int(manifest['included'].sum())} images included, {len(excluded)} excluded", flush=True)
    for row in excluded.itertuples():
        print(f"  excluded {row.path}: {row.exclude_reason}", flush=True)
    return manifest
