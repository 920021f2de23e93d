"""Top-N exemplars of every channel of a layer: sorted from each image's stored peak, or found in one streaming pass.

Following nefesi (Rafegas, Vanrell et al., CVC), every channel ("neuron") of a layer is described first by its
**top-N exemplars**: the N (image, location) pairs with the highest activation over the image set, each image
counted once, at its maximum location. The workflow sorts them from the peaks its extraction pass stores for every
image (`read_layer_peaks`, `top_n_of_peaks`: no pass of nefesi's own); `collect_top_n` finds the same in one streaming
pass over images in memory, keeping a running [C, N] list per layer (values, image, location) merged batch by batch,
no activation map kept beyond its batch. The exemplars'
weights wₙ = aₙ / Σₘ aₘ (activations clipped at 0) make the Neuron Feature and the class index (see
`probes` and `indexes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import zarr
from torch import nn
from tqdm import tqdm

from unitscope.hooks import ActivationRecorder, spatial_peak
from unitscope.runtime import channels_last
from unitscope.studies.nefesi.errors import NefesiError

# ----------------------------------------------------------------------------------------------
# top-N exemplars


@dataclass
class TopN:
    """The N highest (image, location) pairs of every channel of a layer, best first.

    values [C, N] float32; image [C, N] int64 (index into the image table); y, x [C, N] int64 (map
    location); map_size (H, W) of the layer's output.
    """

    values: torch.Tensor
    image: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    map_size: tuple[int, int]

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def n(self) -> int:
        return int(self.values.shape[1])

    def weights(self) -> torch.Tensor:
        """wₙ = aₙ / Σ a over the N exemplars (activations clipped at 0); rows of a dead channel are 0."""
        positive = self.values.clamp(min=0)
        total = positive.sum(dim=1, keepdim=True)
        return torch.where(total > 0, positive / total.clamp(min=1e-30), torch.zeros_like(positive))


class StreamingTopN:
    """Running top-N per channel over batches of maps, each image once at its maximum location.

    Ties keep the earlier image (a stable sort over [running list, new batch]), so the result equals a
    stable full sort of every image's maximum, whatever the batch size.
    """

    def __init__(self, n: int):
        if n < 1:
            raise NefesiError(f"top_n must be at least 1, got {n}")
        self.n = n
        self.values = self.image = self.y = self.x = None
        self.map_size: tuple[int, int] | None = None

    def update(self, maps: torch.Tensor, image_index: torch.Tensor) -> None:
        """maps [B, C, H, W] of images `image_index` [B] (global indices, increasing across calls)."""
        if maps.dim() != 4:
            raise NefesiError(f"top-N needs [B, C, H, W] maps, got shape {list(maps.shape)}")
        batch, channels, height, width = maps.shape
        self.map_size = (height, width)
        peak, where = spatial_peak(maps)  # [B, C], first maximal location
        new_values = peak.T  # [C, B]
        new_image = image_index.to(torch.int64).view(1, -1).expand(channels, -1)
        new_y, new_x = (where // width).T, (where % width).T
        if self.values is None:
            values, image, y, x = new_values, new_image, new_y, new_x
        else:
            values = torch.cat([self.values, new_values], dim=1)
            image = torch.cat([self.image, new_image], dim=1)
            y = torch.cat([self.y, new_y], dim=1)
            x = torch.cat([self.x, new_x], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.n]
        self.values = values.gather(1, order).contiguous()
        self.image = image.gather(1, order).contiguous()
        self.y = y.gather(1, order).contiguous()
        self.x = x.gather(1, order).contiguous()

    def result(self) -> TopN:
        if self.values is None:
            raise NefesiError("top-N saw no images")
        return TopN(self.values, self.image, self.y, self.x, self.map_size)


def top_n_of_peaks(peak: torch.Tensor, where: torch.Tensor, map_size: tuple[int, int], n: int) -> TopN:
    """Every channel's top-N from each image's peak [I, C] and its flat location y·W + x [I, C] (`hooks.spatial_peak`;
    rows: images in order): the N images with the highest maximum, best first, ties to the earlier image (a stable
    sort), each at its first maximal location. What the streaming pass keeps, from activations stored by the
    extraction pass (`LayerPeaks`) or computed from maps (`full_sort_top_n`)."""
    order = torch.sort(peak.T, dim=1, descending=True, stable=True).indices[:, :n]  # [C, n]
    values = peak.T.gather(1, order).contiguous()
    locations = where.T.to(torch.int64).gather(1, order)
    width = int(map_size[1])
    return TopN(values, order.contiguous(), locations // width, locations % width, tuple(int(s) for s in map_size))


def full_sort_top_n(maps: torch.Tensor, n: int) -> TopN:
    """Reference: top-N from all maps [N_images, C, H, W] at once (what the streaming version must equal)."""
    peak, where = spatial_peak(maps)  # [I, C]
    return top_n_of_peaks(peak, where, tuple(maps.shape[-2:]), n)


@dataclass(frozen=True)
class LayerPeaks:
    """Each image's maximum per unit over the layer's map and where it is, as the extraction pass stored them."""

    peak: np.ndarray  # [N, C] float32
    at: np.ndarray  # [N, C] flat index y * W + x
    map_size: tuple[int, int]

    def top_n(self, n: int) -> TopN:
        """Every unit's top-N exemplars (`top_n_of_peaks`)."""
        return top_n_of_peaks(torch.from_numpy(self.peak), torch.from_numpy(self.at), self.map_size, n)


def read_layer_peaks(
    images: pd.DataFrame, datasets: Sequence[str], stores: Sequence[str | os.PathLike], layer: str
) -> LayerPeaks:
    """The stores' peaks (one store per dataset) in the order of `images` (an image table: columns dataset,
    image_id); an image of the table missing from its store, or a store without peaks, is one line naming it."""
    if list(images["dataset"]) != [d for d in datasets for _ in range(int((images["dataset"] == d).sum()))]:
        raise NefesiError(f"the image table of layer {layer!r} is not grouped by dataset in the order {list(datasets)}")
    parts, sizes = [], set()
    for dataset, store in zip(datasets, stores, strict=True):
        group = zarr.open_group(store=str(store), mode="r")
        if group.attrs.get("layer", layer) != layer or "peak" not in group:
            raise NefesiError(
                f"store {store} holds no peaks of layer {layer!r} (a layer without [C, H, W] maps has no exemplar "
                "locations), or predates them: re-run its extraction"
            )
        stored = pd.Index(np.asarray(group["image_id"][:].tolist(), dtype=object).astype(str))
        wanted = images.loc[images["dataset"] == dataset, "image_id"].astype(str)
        rows = stored.get_indexer(wanted)
        if (rows < 0).any():
            raise NefesiError(f"store {store}: image {wanted.iloc[int(np.argmax(rows < 0))]!r} is missing; re-run it")
        parts.append((np.asarray(group["peak"][:])[rows], np.asarray(group["peak_at"][:], dtype=np.int64)[rows]))
        sizes.add(tuple(group.attrs["map_size"]))
    if len(sizes) != 1:
        raise NefesiError(f"layer {layer!r} has maps of sizes {sorted(sizes)} in its stores; one size expected")
    peaks, at = np.concatenate([p for p, _ in parts]), np.concatenate([a for _, a in parts])
    if not np.isfinite(peaks).all():
        raise NefesiError(f"layer {layer!r}: its stores' peaks hold NaN or infinite values; re-run extraction")
    return LayerPeaks(peaks, at, sizes.pop())


def collect_top_n(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: list[str],
    n: int,
    *,
    device: torch.device | str = "cpu",
    total: int | None = None,
    progress: bool = True,
) -> dict[str, TopN]:
    """One pass over (images, image indices) batches: the top-N of every channel of every layer."""
    device = torch.device(device)
    streams = {layer: StreamingTopN(n) for layer in layers}
    bar = tqdm(total=total, desc="top-N", unit="img", disable=not progress, mininterval=2)
    with (
        torch.inference_mode(),
        ActivationRecorder(model, layers, keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        for images, index in batches:
            recorder(channels_last(images.to(device)))
            for layer in layers:
                streams[layer].update(recorder.maps[layer], index)
            bar.update(len(index))
    bar.close()
    return {layer: stream.result() for layer, stream in streams.items()}


def exemplar_frame(tops: dict[str, TopN]) -> pd.DataFrame:
    rows = []
    for layer, top in tops.items():
        channels, n = top.values.shape
        rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "channel": np.repeat(np.arange(channels), n),
                    "rank": np.tile(np.arange(n), channels),
                    "activation": top.values.reshape(-1).numpy(),
                    "image": top.image.reshape(-1).numpy(),
                    "y": top.y.reshape(-1).numpy(),
                    "x": top.x.reshape(-1).numpy(),
                    "map_h": top.map_size[0],
                    "map_w": top.map_size[1],
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def read_top_n(exemplars: pd.DataFrame, layer: str) -> TopN:
    rows = exemplars[exemplars["layer"] == layer].sort_values(["channel", "rank"])
    if rows.empty:
        raise NefesiError(f"no exemplars for layer {layer!r} (have: {', '.join(exemplars['layer'].unique())})")
    channels, n = int(rows["channel"].max()) + 1, int(rows["rank"].max()) + 1

    def grid(column, dtype):
        return torch.as_tensor(rows[column].to_numpy(dtype, copy=True).reshape(channels, n))

    return TopN(
        grid("activation", np.float32),
        grid("image", np.int64),
        grid("y", np.int64),
        grid("x", np.int64),
        (int(rows["map_h"].iloc[0]), int(rows["map_w"].iloc[0])),
    )
