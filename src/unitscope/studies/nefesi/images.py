"""The images a nefesi target analyses and the model's view of them: the image table (one class per image), the
preprocessed model inputs, the crops cut from them (exemplar crops, probe windows) and their display colours.

A crop is a unit's receptive field (see `unitscope.models.receptive_field`) cut from the preprocessed
(model-input) image; where the field leaves the image the crop is padded with the dataset mean colour (0 after
normalisation).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.models.preprocessing import build_transform, input_channels, input_size
from unitscope.models.receptive_field import ReceptiveField
from unitscope.studies.nefesi.errors import NefesiError

CLASS_BY = ("label", "category", "dataset")


def image_table(
    manifests: dict[str, str | os.PathLike],
    *,
    max_images: int | None = None,
    class_by: str = "label",
    label_names: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """The images a target analyses: the included rows of each manifest (the first `max_images` of each, a
    seeded sample since manifests are seeded draws), with a class per image."""
    frames = []
    for dataset, path in manifests.items():
        manifest = read_manifest(path)
        if max_images is not None:
            manifest = manifest.head(max_images)
        if manifest.empty:
            raise NefesiError(f"manifest {path} (dataset {dataset}) has no included images")
        frame = manifest[["image_id", "path", "category", "label"]].copy()
        frame.insert(0, "dataset", dataset)
        labels = _label_names(frame["label"].astype(str), (label_names or {}).get(dataset), dataset, path)
        frame["class"] = _image_classes(frame, labels, dataset, class_by, single=len(manifests) == 1)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "image", np.arange(len(table)))
    return table


def _label_names(labels: pd.Series, names: list[str] | None, dataset: str, path) -> pd.Series:
    """Labels as class names when the config lists them (labels are then indices into the names)."""
    if not names:
        return labels
    try:
        return labels.map(lambda value, names=names: names[int(value)])
    except (ValueError, IndexError):
        raise NefesiError(
            f"config key datasets.{dataset}.label_names: labels of {path} are not indices into its {len(names)} names"
        ) from None


def _image_classes(frame: pd.DataFrame, labels: pd.Series, dataset: str, class_by: str, *, single: bool):
    if class_by == "label":
        return labels if single else dataset + ":" + labels
    if class_by == "category":
        return frame["category"].astype(str)
    if class_by == "dataset":
        return dataset
    raise NefesiError(f"class_by must be {', '.join(CLASS_BY[:-1])} or {CLASS_BY[-1]}, got {class_by!r}")


def dataset_image(images: pd.DataFrame, dataset: str, index: int, source) -> pd.DataFrame:
    """The `index`-th image of `dataset` in a target's image table (`source`: its file, for the message), as a
    one-row frame."""
    rows = images[images["dataset"] == dataset]
    if index >= len(rows):
        raise NefesiError(f"{source}: dataset {dataset!r} has {len(rows)} images, no image number {index}")
    return rows.iloc[[index]]


def model_inputs(rows: pd.DataFrame, preprocessing: dict) -> torch.Tensor:
    """The images of `rows` (rows of a target's image table) as the model saw them in the top-N pass: resized,
    centre-cropped and normalised, [len(rows), K, H, W] (K: the model's input channels, 1 or 3)."""
    dataset = ManifestDataset(rows, build_transform(preprocessing))
    if not len(dataset):
        return torch.zeros(0, input_channels(preprocessing), *input_size(preprocessing))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def nf_rgb(nf: torch.Tensor, mean, std) -> np.ndarray:
    """Neuron Features (or images) from normalised space [C, K, h, w] (K = len(mean): 3, RGB, or 1, grayscale,
    shown as gray) to displayable sRGB [C, h, w, 3] in [0, 1]."""
    channels = len(list(mean))
    pixels = nf * torch.tensor(list(std)).view(1, channels, 1, 1) + torch.tensor(list(mean)).view(1, channels, 1, 1)
    return pixels.clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def gather_crops(images, slots, tops, lefts, rows, cols) -> torch.Tensor:
    """Crops [R, K, len(rows), len(cols)] (K: the images' channels) at (tops + rows, lefts + cols) of
    images[slots]; 0 outside."""
    height, width = images.shape[-2:]
    rr = torch.as_tensor(tops)[:, None] + torch.as_tensor(rows)[None, :]
    cc = torch.as_tensor(lefts)[:, None] + torch.as_tensor(cols)[None, :]
    inside = ((rr >= 0) & (rr < height))[:, :, None] & ((cc >= 0) & (cc < width))[:, None, :]
    crops = images[
        torch.as_tensor(slots)[:, None, None],
        :,
        rr.clamp(0, height - 1)[:, :, None],
        cc.clamp(0, width - 1)[:, None, :],
    ]  # [R, h, w, K]
    return (crops * inside.unsqueeze(-1)).permute(0, 3, 1, 2)


def layer_field(info: dict) -> ReceptiveField:
    """The receptive field a layer's layer.json records."""
    return ReceptiveField.from_dict(info["receptive_field"])


def field_crops(images, slots, field, ys, xs, extent) -> torch.Tensor:
    """Unit (y, x)'s field, cut to the layer's visible `extent` (layer.json nf_extent), from images[slots]
    (normalised [B, K, H, W]), 0 (the mean colour) where the field leaves the image: [R, K, h, w], normalised, the
    crops a Neuron Feature averages (the same cut as probes.probe_layer)."""
    boxes = np.array([field.box(int(y), int(x)) for y, x in zip(ys, xs, strict=True)], dtype=np.int64).reshape(-1, 4)
    (row0, row1), (col0, col1) = extent
    images, slots = images.float(), torch.as_tensor(np.asarray(slots, dtype=np.int64))
    height, width = images.shape[-2:]
    crops = torch.zeros(len(slots), images.shape[1], row1 - row0, col1 - col0)
    # every crop of one map position holds its image at the same place: one slice copy per position (the same
    # values as gather_crops, which indexes every pixel: 2.8x slower for 512 crops of a 224-px field, but 16x faster
    # than slices for 2,000 probe windows of 8 px with 840 distinct corners, so probe windows keep it)
    corners = boxes[:, :2] + np.array([row0, col0])
    for top, left in np.unique(corners, axis=0).tolist():
        members = torch.as_tensor(np.flatnonzero((corners[:, 0] == top) & (corners[:, 1] == left)))
        r0, r1 = max(0, -top), min(row1 - row0, height - top)
        c0, c1 = max(0, -left), min(col1 - col0, width - left)
        if r0 < r1 and c0 < c1:
            crops[members, :, r0:r1, c0:c1] = images[slots[members], :, top + r0 : top + r1, left + c0 : left + c1]
    return crops


def exemplar_crops(images, field, ys, xs, extent, mean, std) -> np.ndarray:
    """The crops a Neuron Feature averages (`field_crops`) of unit (y, x) in each model-input image (normalised
    [k, K, H, W]). sRGB [k, h, w, 3] in [0, 1], as the NFs in nf.npz."""
    return nf_rgb(field_crops(images, np.arange(len(images)), field, ys, xs, extent), mean, std)
