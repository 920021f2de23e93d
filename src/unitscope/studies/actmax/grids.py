"""Image grids as PNG files: one per unit-run (rows: seeds, columns: snapshots), and the display copy of images
(each stretched to its own range) the grids and the report's figures show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from unitscope.fsutil import atomic_path
from unitscope.studies.actmax.runs import GROUP_COLUMNS

__all__ = ["display_normalize", "display_tile", "save_grid", "save_unit_grids"]


def display_normalize(images: np.ndarray) -> np.ndarray:
    """uint8 display copy: each image stretched to its own min..max (all channels together, so hues stay)."""
    images = images.astype(np.float32)
    axes = tuple(range(images.ndim - 3, images.ndim))
    low = images.min(axis=axes, keepdims=True)
    high = images.max(axis=axes, keepdims=True)
    stretched = (images - low) / np.maximum(high - low, 1e-6)
    return (stretched * 255).round().astype(np.uint8)


def display_tile(image: np.ndarray) -> np.ndarray:
    """One uint8 image [C, H, W] -> what PIL and matplotlib show: [H, W] for one channel (grayscale), else
    [H, W, C]."""
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def save_grid(images: np.ndarray, path, *, scale: int = 3, row_labels=None, col_labels=None) -> None:
    """[rows, cols, C, H, W] (C = 3: RGB, C = 1: grayscale) -> one PNG (nearest upscaling, 2-px gaps, optional
    text labels); H and W may differ."""
    rows, cols, _, height, width = images.shape
    cell_h, cell_w, gap = height * scale, width * scale, 2
    left = 34 if row_labels else 0
    top = 12 if col_labels else 0
    canvas = Image.new("RGB", (left + cols * (cell_w + gap), top + rows * (cell_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shown = display_normalize(images)
    for r in range(rows):
        for c in range(cols):
            tile = Image.fromarray(display_tile(shown[r, c])).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + c * (cell_w + gap), top + r * (cell_h + gap)))
        if row_labels:
            draw.text((2, top + r * (cell_h + gap) + cell_h // 2 - 5), str(row_labels[r]), fill=(0, 0, 0))
    for c, label in enumerate(col_labels or []):
        draw.text((left + c * (cell_w + gap) + 2, 0), str(label), fill=(0, 0, 0))
    with atomic_path(path) as temp:
        canvas.save(temp, format="PNG")


def save_unit_grids(table: pd.DataFrame, snapshots: np.ndarray, snapshot_steps, out_dir) -> int:
    """One grid per unit-run group (rows: seeds, columns: snapshots) under out_dir/ch<C>/; returns the count."""
    out_dir = Path(out_dir)
    count = 0
    for _, group in table.groupby(list(GROUP_COLUMNS[1:]), sort=False):
        first = group.iloc[0]
        position = f"_y{first['y']}x{first['x']}" if first["y"] >= 0 else ""
        target = f"_class{first['target_class']}" if first["target_class"] >= 0 else ""
        name = f"{first['objective']}{position}{target}_{first['init']}_l2-{first['l2']:g}_tv-{first['tv']:g}.png"
        rows = group.index.to_numpy()
        tiles = snapshots[:, rows].transpose(1, 0, 2, 3, 4)  # [seeds, snapshots, C, H, W]
        save_grid(
            tiles,
            out_dir / f"ch{int(first['channel']):03d}" / name,
            row_labels=[f"s{s}" for s in group["seed"]],
            col_labels=[str(s) for s in snapshot_steps],
        )
        count += 1
    return count
