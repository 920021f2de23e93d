"""Category comparison for every unit of a shard at once: the mean over images of each unit's spatial-mean activation
per image group (each dataset; each category that several of the datasets share; each label of each dataset), with a
95% percentile-bootstrap interval over the group's images.

One group's bootstrap draws the same resamples of its images for every unit (seeded by the group's name only), and
each unit's resampled means are reduced over its own contiguous row, so a unit's numbers are the same whichever shard
it is computed in, and equal to `stats.bootstrap_interval` of that unit alone with the same generator.

Columns: `act.<group>.mean`, `.low`, `.high`, with <group> a dataset (`objects`), a shared category
(`category[object]`) or a dataset's label (`objects[3]`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from unitscope.stats import derived_rng
from unitscope.studies.atlas.inputs import LayerImages

CHUNK_BYTES = 1 << 27  # resampled activations held at once (float64 [units, resamples, images])


def _label_order(labels: np.ndarray) -> list:
    """A dataset's distinct labels: numerically when they all read as numbers, else as text."""
    distinct = list(dict.fromkeys(labels.tolist()))
    numbers = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce")
    if numbers.notna().all():
        return [distinct[i] for i in np.argsort(numbers.to_numpy(), kind="stable")]
    return sorted(distinct, key=str)


def image_groups(images: LayerImages, categories: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(group name, image rows) of every group compared: datasets, categories shared by two or more of them, labels."""
    groups = [(dataset, images.rows(dataset)) for dataset in images.datasets]
    for category in dict.fromkeys(categories):
        members = [d for d, c in zip(images.datasets, categories, strict=True) if c == category]
        if len(members) > 1:
            groups.append((f"category[{category}]", np.concatenate([images.rows(d) for d in members])))
    for dataset in images.datasets:
        rows = images.rows(dataset)
        for label in _label_order(images.labels[rows]):
            groups.append((f"{dataset}[{label}]", rows[images.labels[rows] == label]))
    return groups


def bootstrap_purpose(group: str) -> str:
    """The purpose that seeds a group's resamples (`stats.derived_rng`): the same for every unit and shard."""
    return f"atlas/categories/{group}"


def resampled_means(block: np.ndarray, draws: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """[U, B] means of each unit's row of `block` [U, n] (float64) over the B resamples `draws` [B, n] of its n images;
    each (unit, resample) reduced over its own row, as `np.mean(values[draws], axis=1)` does for one unit."""
    per_unit = max(1, draws.size * 8)
    step = max(1, chunk_bytes // per_unit)
    return (
        np.concatenate([block[first : first + step][:, draws].mean(axis=-1) for first in range(0, len(block), step)])
        if len(block)
        else np.empty((0, len(draws)))
    )


def group_means(values: np.ndarray, rows: np.ndarray, group: str, *, n_bootstrap: int, seed: int) -> np.ndarray:
    """[3, U]: mean, 2.5 and 97.5 percentiles of the bootstrap of `values` [N, U] over the group's `rows`."""
    block = np.ascontiguousarray(values[rows].T, dtype=np.float64)  # [U, n]: each unit's images in one row
    if block.shape[1] == 0:
        return np.full((3, block.shape[0]), np.nan)
    rng = derived_rng(seed, bootstrap_purpose(group))
    draws = rng.integers(0, block.shape[1], size=(n_bootstrap, block.shape[1]))
    low, high = np.percentile(resampled_means(block, draws), [2.5, 97.5], axis=1)
    return np.stack([block.mean(axis=1), low, high])


def category_table(
    images: LayerImages, categories: Sequence[str], channels: np.ndarray, *, n_bootstrap: int, seed: int
) -> pd.DataFrame:
    """One row per unit (`channels`, the columns of `images.means`): every group's mean with its 95% interval."""
    columns = {"channel": np.asarray(channels, dtype=np.int64)}
    for group, rows in image_groups(images, categories):
        mean, low, high = group_means(images.means, rows, group, n_bootstrap=n_bootstrap, seed=seed)
        columns.update({f"act.{group}.mean": mean, f"act.{group}.low": low, f"act.{group}.high": high})
    return pd.DataFrame(columns)
