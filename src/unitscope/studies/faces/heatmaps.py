"""Where the top face channels fire: their maps over example faces and non-faces.

Examples are a seeded draw from each dataset (not picked by hand or by activation). The layer runs
once on those few images (the forward pass stops at the layer); each channel's map is upsampled
bilinearly to the crop size and drawn over the preprocessed image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.hooks import ActivationRecorder
from unitscope.studies.faces.inputs import FacesError


def example_indices(n_images: int, n_examples: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_images, size=min(n_examples, n_images), replace=False))


def example_images(
    manifests: dict[str, str], transform, n_examples: int, rng: np.random.Generator
) -> tuple[torch.Tensor, list[dict]]:
    """A seeded draw of `n_examples` images of each dataset (in order): the preprocessed batch and, per image,
    its dataset and image id."""
    tensors, rows = [], []
    for name, path in manifests.items():
        manifest = read_manifest(path)
        dataset = ManifestDataset(manifest, transform)
        for index in example_indices(len(dataset), n_examples, rng):
            tensors.append(dataset[int(index)][0])
            rows.append({"dataset": name, "image_id": manifest["image_id"].iloc[int(index)]})
    return torch.stack(tensors), rows


def channel_maps(model: nn.Module, layer: str, batch: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """The layer's maps of `channels` on the batch, [n, k, h, w] (the forward pass stops at the layer)."""
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        with torch.inference_mode():
            rec(batch)
    maps = rec.maps[layer]
    if maps.dim() != 4:
        raise FacesError(f"layer {layer!r} outputs {list(maps.shape)}; heatmaps need [N, C, H, W] maps")
    return maps[:, channels]


def upsampled(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Maps [n, k, h, w] bilinearly upsampled to the images' size."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False).numpy()


def pictures(batch: torch.Tensor, preprocessing: dict) -> np.ndarray:
    """The preprocessed images as shown: normalisation undone, [n, H, W, 3] in [0, 1] (a 1-channel model's
    grayscale input repeated into gray RGB)."""
    mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)
    shown = (batch * std + mean).clamp(0, 1)
    return (
        shown.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
        if shown.shape[1] == 1
        else shown.permute(0, 2, 3, 1).numpy()
    )


def heatmap_table(maps: torch.Tensor, images: list[dict], channels: list[int]) -> pd.DataFrame:
    """One row per image and channel: the map's mean, maximum and peak position (in map cells)."""
    records = []
    height, width = maps.shape[-2:]
    for image_index, info in enumerate(images):
        for position, channel in enumerate(channels):
            channel_map = maps[image_index, position]
            peak = int(torch.argmax(channel_map))
            records.append(
                {
                    **info,
                    "image_index": image_index,
                    "channel": channel,
                    "mean": float(channel_map.mean()),
                    "max": float(channel_map.max()),
                    "peak_row": peak // width,
                    "peak_col": peak % width,
                    "map_height": int(height),
                    "map_width": int(width),
                }
            )
    return pd.DataFrame(records)
