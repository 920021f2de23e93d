"""What the faces stages read and write: the activation stores' per-image channel means of the face and
non-face sets (checked to hold the expected layer), a seeded generator per purpose, and atomic tables.

The study asks which channels of one layer respond most to faces and whether they are necessary,
sufficient and specific for telling faces from non-faces; every stage but the heatmaps starts from the
stored per-image channel means `[N, C]` read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import zarr

from unitscope.errors import UnitscopeError


class FacesError(UnitscopeError, ValueError):
    """Inputs of the faces study do not fit together; the message is one line."""


@dataclass(frozen=True)
class CategoryMeans:
    """Per-image channel means of the face set and the non-face sets, stacked (faces first)."""

    means: np.ndarray  # [N, C] float32
    dataset: np.ndarray  # [N] dataset name of each image
    image_id: np.ndarray  # [N]
    face_dataset: str
    nonface_datasets: tuple[str, ...]

    @property
    def is_face(self) -> np.ndarray:
        return self.dataset == self.face_dataset

    @property
    def n_channels(self) -> int:
        return int(self.means.shape[1])

    def of(self, dataset: str) -> np.ndarray:
        return self.means[self.dataset == dataset]


def open_layer_store(store: str | os.PathLike, layer: str) -> zarr.Group:
    """An activation store, opened read-only, after checking that it holds `layer` (when it says)."""
    group = zarr.open_group(store=str(store), mode="r")
    stored_layer = group.attrs.get("layer")
    if stored_layer is not None and stored_layer != layer:
        raise FacesError(f"store {store} holds layer {stored_layer!r}, expected {layer!r}")
    return group


def load_category_means(stores: dict[str, str | os.PathLike], face_dataset: str, layer: str) -> CategoryMeans:
    """Read `means` and `image_id` of each store ({dataset: path}, the face set among them)."""
    if face_dataset not in stores:
        raise FacesError(f"no activation store for the face dataset {face_dataset!r} (have {', '.join(stores)})")
    order = [face_dataset, *[name for name in stores if name != face_dataset]]
    means, names, ids = [], [], []
    for name in order:
        group = open_layer_store(stores[name], layer)
        block = np.asarray(group["means"][:], dtype=np.float32)
        if means and block.shape[1] != means[0].shape[1]:
            raise FacesError(
                f"store {stores[name]} has {block.shape[1]} channels, but {stores[order[0]]} has {means[0].shape[1]}"
            )
        if not np.isfinite(block).all():
            raise FacesError(f"store {stores[name]}: means contain NaN or infinite values")
        means.append(block)
        names.append(np.full(len(block), name, dtype=object))
        ids.append(np.asarray(group["image_id"][:].tolist(), dtype=object))
    return CategoryMeans(
        means=np.concatenate(means),
        dataset=np.concatenate(names),
        image_id=np.concatenate(ids),
        face_dataset=face_dataset,
        nonface_datasets=tuple(order[1:]),
    )
