"""What the lesions stages read: a labelled set's stored channel means with each image's class (from its
manifest, matched by image id), and nefesi's class shares of a layer's units (from its exemplars)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import zarr

from unitscope.data.manifest import read_manifest
from unitscope.errors import UnitscopeError


class LesionsError(UnitscopeError, ValueError):
    """Inputs of the lesions study do not fit together; the message is one line."""


@dataclass(frozen=True)
class LabelledStore:
    means: np.ndarray  # [N, C] float32
    image_id: np.ndarray  # [N]
    labels: np.ndarray  # [N] int: the class index, which is the logit index

    @property
    def n_channels(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1


def integer_labels(values: pd.Series, where: str) -> np.ndarray:
    """Labels as class indexes: integers >= 0 (a CSV may give them as text); anything else is a one-line error."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() | (numbers < 0) | (numbers != numbers.round())]
    if len(bad):
        raise LesionsError(
            f"{where}: labels must be class indexes (integers >= 0, the model's logit order); found {bad.iloc[0]!r}"
        )
    return numbers.to_numpy().astype(np.int64)


def labelled_store(store: str | os.PathLike, manifest: str | os.PathLike, layer: str) -> LabelledStore:
    """The store's channel means and image ids, and each image's label from the manifest."""
    group = zarr.open_group(store=str(store), mode="r")
    if group.attrs.get("layer", layer) != layer:
        raise LesionsError(f"store {store} holds layer {group.attrs.get('layer')!r}, expected {layer!r}")
    means = np.asarray(group["means"][:], dtype=np.float32)
    ids = np.asarray(group["image_id"][:].tolist(), dtype=object)
    rows = read_manifest(manifest).set_index("image_id")
    missing = [image for image in ids if image not in rows.index]
    if missing:
        raise LesionsError(f"store {store}: image {missing[0]!r} is not in {manifest}; re-run extraction")
    labels = integer_labels(rows.loc[list(ids), "label"], f"manifest {manifest}")
    if not np.isfinite(means).all():
        raise LesionsError(f"store {store}: means contain NaN or infinite values")
    return LabelledStore(means, ids, labels)


def nefesi_shares(
    exemplars: str | os.PathLike, images: str | os.PathLike, layer: str, n_channels: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(shares [C, K], class index [C], class names [K]) of a layer's units from nefesi's top-N exemplars: the
    activation-weighted share of each class among a unit's exemplars, and nefesi's class index computed from them.
    The exemplars' image labels are the classes (class indexes, as the lesioned set's)."""
    from unitscope.studies.nefesi.indexes import class_selectivity
    from unitscope.studies.nefesi.topn import read_top_n

    top = read_top_n(pd.read_parquet(exemplars), layer)
    if top.channels != n_channels:
        raise LesionsError(
            f"nefesi exemplars {exemplars} have {top.channels} units at {layer!r}, the store {n_channels}"
        )
    table = pd.read_parquet(images)
    codes = integer_labels(table["label"], f"nefesi images {images}")
    if codes.max() >= n_classes:
        raise LesionsError(f"nefesi images {images}: label {codes.max()} is not among the {n_classes} classes lesioned")
    classes = torch.as_tensor(codes)[top.image.clamp(min=0)]
    classes = torch.where(top.image >= 0, classes, torch.full_like(classes, -1))
    result = class_selectivity(top.weights(), classes, n_classes)
    names = dict(zip(codes, table["class"].astype(str), strict=True))
    return result["freq"], result["index"], [names.get(k, str(k)) for k in range(n_classes)]
