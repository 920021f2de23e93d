"""Where the top face channels fire: their maps over example faces and non-faces.

Examples are a seeded draw from each dataset (not picked by hand or by activation). The layer runs
once on those few images (the forward pass stops at the layer); each channel's map is upsampled
bilinearly to the crop size and drawn over the preprocessed image.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.hooks import ActivationRecorder
from unitscope.models.registry import build_model, build_transform, resolve_layer
from unitscope.studies.faces.figures import heatmap_figure
from unitscope.studies.faces.selection import FacesError, derived_rng, selected_channels, write_table


def example_indices(n_images: int, n_examples: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_images, size=min(n_examples, n_images), replace=False))


def run_heatmaps(
    *,
    model_name: str,
    model_spec: dict,
    layer: str,
    manifests: dict[str, str],
    selection: str,
    rule: str,
    n_examples: int,
    n_channels: int,
    seed: int,
    data_dir: str,
    torch_home: str,
    out_table: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> pd.DataFrame:
    """Maps of the first `n_channels` selected channels on `n_examples` images of each dataset (in order)."""
    model = build_model(model_name, model_spec, data_dir=data_dir, torch_home=torch_home)
    resolve_layer(model, layer, model_name)
    chosen = selected_channels(pd.read_parquet(selection), rule)[:n_channels].tolist()
    if not chosen:
        raise FacesError(f"faces.selection.use = {rule!r} selected no channel at {layer!r}: no map to show")
    preprocessing = model_spec["preprocessing"]
    transform = build_transform(preprocessing)
    rng = derived_rng(seed, "faces/heatmaps")
    tensors, rows = [], []
    for name, path in manifests.items():
        manifest = read_manifest(path)
        dataset = ManifestDataset(manifest, transform)
        for index in example_indices(len(dataset), n_examples, rng):
            tensors.append(dataset[int(index)][0])
            rows.append({"dataset": name, "image_id": manifest["image_id"].iloc[int(index)]})
    batch = torch.stack(tensors)
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        with torch.inference_mode():
            rec(batch)
    maps = rec.maps[layer]
    if maps.dim() != 4:
        raise FacesError(f"layer {layer!r} outputs {list(maps.shape)}; heatmaps need [N, C, H, W] maps")
    selected_maps = maps[:, chosen]  # [n, k, h, w]
    upsampled = F.interpolate(selected_maps, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    mean = torch.tensor(preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, 3, 1, 1)
    pictures = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    records = []
    height, width = selected_maps.shape[-2:]
    for image_index, info in enumerate(rows):
        for position, channel in enumerate(chosen):
            channel_map = selected_maps[image_index, position]
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
    table = pd.DataFrame(records)
    write_table(table, out_table)
    heatmap_figure(pictures, upsampled.numpy(), table, chosen, out_figure)
    return table
