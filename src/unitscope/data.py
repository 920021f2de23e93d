"""Data stage: turn a configured image set into a manifest, and read images back from it.

A manifest (Parquet) has one row per drawn image: image_id, path, category, label, sha256,
included, exclude_reason. The draw is seeded: candidates are shuffled once and taken in order
until `size` readable images are found, so a smaller size is a prefix of a larger one and an
unreadable image is recorded (with why) instead of silently shrinking the set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from unitscope.download import extract_archive, fetch
from unitscope.fsutil import atomic_path, sha256_file

MANIFEST_COLUMNS = ["image_id", "path", "category", "label", "sha256", "included", "exclude_reason"]


class DataError(ValueError):
    """A dataset is misconfigured or its files are missing; the message is one line."""


@dataclass(frozen=True)
class FolderLayout:
    """Where a set's images and labels are, once any download has been unpacked."""

    root: Path
    labels: Path
    path_column: str
    image_dir: str = ""
    label_column: str | None = None


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


def source_files(source: dict, data_dir: str | os.PathLike) -> list[str]:
    """Every file a folder source reads (labels CSV and all files under its image folder), for rule inputs.

    Listing them lets a changed, added or removed image re-run that dataset's manifest and what depends on it.
    A folder that does not exist gives no files (the config check reports it). Download sources give none:
    their URL and checksum are rule params.
    """
    if source["kind"] != "folder":
        return []
    root = resolve(source["root"], data_dir)
    images = root / source.get("image_dir", "")
    if not images.is_dir():
        return []
    files = [str(resolve(source["labels"], root))]
    for folder, subfolders, names in os.walk(images):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files.extend(os.path.join(folder, name) for name in sorted(names) if not name.startswith("."))
    return sorted(set(files))


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


def check_image(path: Path) -> str | None:
    """None if the file decodes to a non-empty image, else the reason it cannot be used."""
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as image:
            image.load()
            if image.width == 0 or image.height == 0:
                return "image has zero size"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"unreadable image ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def build_manifest(name: str, category: str, layout: FolderLayout, size: int, seed: int) -> pd.DataFrame:
    """Draw up to `size` readable images (seeded) and record every image looked at."""
    table = read_labels(name, layout)
    table = table.sort_values(layout.path_column, kind="stable").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(table))
    rows, n_included = [], 0
    for index in order:
        if n_included >= size:
            break
        record = table.iloc[index]
        relative = Path(layout.image_dir) / record[layout.path_column]
        path = layout.root / relative
        reason = check_image(path)
        rows.append(
            {
                "image_id": f"{name}/{relative.as_posix()}",
                "path": str(path.resolve()) if path.exists() else str(path),
                "category": category,
                "label": record[layout.label_column] if layout.label_column else category,
                "sha256": sha256_file(path) if path.is_file() else "",
                "included": reason is None,
                "exclude_reason": reason or "",
            }
        )
        n_included += reason is None
    if n_included == 0:
        raise DataError(f"datasets.{name}: no readable image among {len(table)} rows of {layout.labels}")
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        manifest.to_parquet(temp, index=False)


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
    """Resolve a dataset source to a folder layout, downloading and unpacking it first if needed."""
    if source["kind"] == "folder":
        return folder_layout(name, source, data_dir)
    archive_name = Path(source["url"].split("?")[0]).name or f"{name}.archive"
    downloads = Path(resources_dir) / "downloads" / name
    archive = fetch(source["url"], downloads / archive_name, source["sha256"], retries=source.get("retries", 3))
    unpacked = extract_archive(archive, downloads / "unpacked")
    folder = {key: source[key] for key in ("labels", "path_column", "image_dir", "label_column") if key in source}
    return folder_layout(name, {**folder, "root": str(unpacked / source.get("subdir", ""))}, data_dir)


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
    manifest = build_manifest(name, dataset["category"], layout, dataset["size"], seed)
    write_manifest(manifest, out_path)
    excluded = manifest[~manifest["included"]]
    print(f"{name}: {int(manifest['included'].sum())} images included, {len(excluded)} excluded", flush=True)
    for row in excluded.itertuples():
        print(f"  excluded {row.path}: {row.exclude_reason}", flush=True)
    return manifest
