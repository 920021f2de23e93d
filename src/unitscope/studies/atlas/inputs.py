"""What the atlas stages read: a target layer's activation stores (one per dataset) as one [N, C] array of
per-image channel means, with each image's dataset and label from its manifest (matched by image id). No torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr

from unitscope.errors import UnitscopeError


class AtlasError(UnitscopeError, ValueError):
    """The atlas's inputs do not fit together; the message is one line naming the file."""


@dataclass(frozen=True)
class LayerImages:
    """Every image of a target's datasets, in dataset order then store order."""

    datasets: tuple[str, ...]
    means: np.ndarray  # [N, U] float32: the spatial-mean activation of the units read
    image_id: np.ndarray  # [N] str
    dataset: np.ndarray  # [N] int: index into `datasets`
    labels: np.ndarray  # [N] object: the manifest's label, as given

    def rows(self, dataset: str) -> np.ndarray:
        return np.flatnonzero(self.dataset == self.datasets.index(dataset))


def _store_means(store: str | os.PathLike, layer: str, units: slice) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store=str(store), mode="r")
    if group.attrs.get("layer", layer) != layer:
        raise AtlasError(f"store {store} holds layer {group.attrs.get('layer')!r}, expected {layer!r}")
    means = group["means"]
    if units.stop is not None and units.stop > means.shape[1]:
        raise AtlasError(
            f"store {store} has {means.shape[1]} channels; the atlas asks for units up to {units.stop - 1}"
        )
    values = np.asarray(means[:, units], dtype=np.float32)
    if not np.isfinite(values).all():
        raise AtlasError(f"store {store}: means contain NaN or infinite values; re-run extraction")
    return values, np.asarray(group["image_id"][:].tolist(), dtype=object)


def _labels(manifest: str | os.PathLike, ids: np.ndarray, store) -> np.ndarray:
    rows = pd.read_parquet(manifest, columns=["image_id", "label", "included"])
    rows = rows[rows["included"]].set_index("image_id")
    missing = [image for image in ids if image not in rows.index]
    if missing:
        raise AtlasError(f"store {store}: image {missing[0]!r} is not in {manifest}; re-run extraction")
    return rows.loc[list(ids), "label"].to_numpy(dtype=object)


def read_layer_images(
    datasets: Sequence[str],
    stores: Sequence[str | os.PathLike],
    manifests: Sequence[str | os.PathLike],
    layer: str,
    units: slice = slice(None),
) -> LayerImages:
    """The stores' channel means (only `units`) of every dataset, concatenated, with each image's dataset and label."""
    parts, ids, which, labels = [], [], [], []
    for index, (store, manifest) in enumerate(zip(stores, manifests, strict=True)):
        values, image_id = _store_means(store, layer, units)
        parts.append(values)
        ids.append(image_id)
        which.append(np.full(len(image_id), index, dtype=np.int64))
        labels.append(_labels(manifest, image_id, store))
    return LayerImages(
        datasets=tuple(datasets),
        means=np.concatenate(parts),
        image_id=np.concatenate(ids),
        dataset=np.concatenate(which),
        labels=np.concatenate(labels),
    )


def class_indexes(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels as class indexes (integers >= 0, the model's logit order; a CSV may give them as text); anything else is
    a one-line error naming `where`."""
    numbers = pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers != numbers.round())
    if bad.any():
        found = labels[bad.to_numpy()][0]
        raise AtlasError(
            f"{where}: labels must be class indexes (integers >= 0, the model's logit order); found {found!r}"
        )
    return numbers.to_numpy().astype(np.int64)
