"""Top-N exemplars of every channel of a layer, found in one streaming pass.

Following nefesi (Rafegas, Vanrell et al., CVC), every channel ("neuron") of a layer is described first by its
**top-N exemplars**: the N (image, location) pairs with the highest activation over the image set, each image
counted once, at its maximum location. One streaming pass over the images keeps a running [C, N] list per layer
(values, image, location) merged batch by batch; no activation map is kept beyond its batch. The exemplars'
weights wₙ = aₙ / Σₘ aₘ (activations clipped at 0) make the Neuron Feature and the class index (see
`probes` and `indexes`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from unitscope.hooks import ActivationRecorder, spatial_peak
from unitscope.studies.nefesi.errors import NefesiError

# ----------------------------------------------------------------------------------------------
# a faster copy of the model for the many forward passes


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` for the top-N pass and the probes: each BatchNorm2d that directly follows a Conv2d is
    folded into it (and becomes Identity), and tensors are kept channels-last. Same module names (hooks still
    apply), same outputs up to float rounding, about twice as fast on CPU. Both passes use it, so the probes'
    untransformed windows still reproduce the top-N activations."""
    import torch.fx as fx

    folded = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(folded).graph
    except Exception:  # not traceable: keep every BatchNorm as it is
        graph = None
    modules = dict(folded.named_modules())
    for node in graph.nodes if graph is not None else []:
        norm = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if not isinstance(norm, nn.BatchNorm2d) or not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv = modules.get(source.target)
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1 or norm.running_var is None:
            continue
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight
        shift = (norm.bias if norm.affine else 0) - norm.running_mean * scale
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        parent, _, child = node.target.rpartition(".")
        setattr(modules[parent] if parent else folded, child, nn.Identity())
    return folded.to(memory_format=torch.channels_last)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last)


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


def full_sort_top_n(maps: torch.Tensor, n: int) -> TopN:
    """Reference: top-N from all maps [N_images, C, H, W] at once (what the streaming version must equal)."""
    images, channels, height, width = maps.shape
    peak, where = maps.float().flatten(2).max(dim=2)  # [I, C]
    order = torch.sort(peak.T, dim=1, descending=True, stable=True).indices[:, :n]  # [C, n]
    values = peak.T.gather(1, order)
    locations = where.T.gather(1, order)
    return TopN(values, order, locations // width, locations % width, (height, width))


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
