"""A messy, hostile dataset folder built from real UTKFace images, shared by the unit and workflow tests.

What it holds, besides 8 good images listed in labels.csv:
- CSV rows that reach outside the folder: `../../secret.jpg`, an absolute path, and a symlink under images/ whose
  target is outside (all three point at a real image that must never be read);
- a symlink that stays inside (allowed), a duplicated row (same image, same label);
- a 20000×20000 PNG of a few KB (a decompression bomb) and an 8000×1 PNG (resizing it needs gigabytes);
- files the CSV does not list: a dangling symlink, a symlink loop, a name with `{x}` (Snakemake wildcard
  syntax) and a name that is not UTF-8.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
from PIL import Image

GOOD = 8
# Reason each hostile row must be excluded with (manifest `exclude_reason` starts with it).
EXPECTED_REASONS = {
    "../../secret.jpg": "path leaves the dataset folder",
    "outside-link.jpg": "symlink to a file outside the dataset folder",
    "bomb.png": "image too large to decode",
    "strip.png": "image is 8000×1 (aspect ratio 8000:1), over datasets.faces.max_aspect_ratio (10)",
}


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG declaring width × height (grayscale) with one tiny compressed row: a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def make_hostile_folder(parent: Path, data_dir: Path) -> Path:
    """Build the folder under `parent`/faces (see the module docstring); return its root."""
    root, images = parent / "faces", parent / "faces" / "images"
    images.mkdir(parents=True)
    labels = pd.read_csv(data_dir / "faces_utkface" / "labels.csv").head(GOOD + 1)
    for name in labels["filename"][:GOOD]:
        shutil.copy2(data_dir / "faces_utkface" / "images" / name, images / name)
    secret = parent / "secret.jpg"  # outside the dataset folder
    shutil.copy2(data_dir / "faces_utkface" / "images" / labels["filename"].iloc[GOOD], secret)
    (images / "outside-link.jpg").symlink_to(secret)
    (images / "inside-link.jpg").symlink_to(images / labels["filename"].iloc[0])
    (images / "bomb.png").write_bytes(png_header_only(20000, 20000))
    Image.new("RGB", (8000, 1)).save(images / "strip.png")
    _add_stray_files(images)
    rows = [(name, gender) for name, gender in zip(labels["filename"][:GOOD], labels["gender"][:GOOD], strict=True)]
    rows += [
        (rows[0][0], rows[0][1]),  # duplicate row
        ("../../secret.jpg", 0),
        (str(secret), 0),  # absolute
        ("outside-link.jpg", 0),
        ("inside-link.jpg", 1),
        ("bomb.png", 0),
        ("strip.png", 1),
    ]
    pd.DataFrame(rows, columns=["filename", "gender"]).to_csv(root / "labels.csv", index=False)
    return root


def _add_stray_files(images: Path) -> None:
    """Files no CSV row names: none of them may stop a run."""
    (images / "dangling.jpg").symlink_to(images / "does-not-exist.jpg")
    (images / "loop-a.jpg").symlink_to(images / "loop-b.jpg")
    (images / "loop-b.jpg").symlink_to(images / "loop-a.jpg")
    (images / "{x}.jpg").write_bytes(b"not listed")
    os.close(os.open(os.path.join(os.fsencode(images), b"caf\xe9.jpg"), os.O_CREAT | os.O_WRONLY))


FACES_SOURCE = {
    "kind": "folder",
    "labels": "labels.csv",
    "path_column": "filename",
    "image_dir": "images",
    "label_column": "gender",
}
