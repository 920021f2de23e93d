"""Which units of the Colored-MNIST CNN the actmax study visualises, with the numbers behind each choice.

Per layer, the channels whose spatial-mean activation varies most over the evaluation images (plus any
requested by index), spatial neurons per channel (where the channel's value varies most, kept apart), and a
target class for the class-conditional objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from unitscope.hooks import hooked, spatial_mean
from unitscope.studies.actmax.activations import frozen, layer_activations
from unitscope.studies.actmax.colored_mnist import NUM_CLASSES

__all__ = ["select_study_units", "select_units"]


def _spread_positions(score_map: torch.Tensor, count: int, min_distance: int) -> list[tuple[int, int]]:
    """Greedy: the highest positions of `score_map` at least `min_distance` apart (Chebyshev); relaxed if needed."""
    height, width = score_map.shape
    order = torch.argsort(score_map.flatten(), descending=True).tolist()
    for distance in range(min_distance, -1, -1):
        chosen: list[tuple[int, int]] = []
        for flat in order:
            y, x = divmod(flat, width)
            if all(max(abs(y - cy), abs(x - cx)) >= max(distance, 1) for cy, cx in chosen):
                chosen.append((y, x))
            if len(chosen) == count:
                return chosen
    return chosen


@torch.no_grad()
def _activation_moments(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 500):
    """Per layer, streamed over batches: variance over images of each channel's spatial mean [C] and of each
    position's value [C, H, W] (float64 sums, so no [N, C, H, W] array is kept)."""
    sums: dict[str, list] = {}

    def keep(layer):
        def hook(_module, _inputs, output):
            if output.dim() != 4:
                raise ValueError(f"actmax.units.layers: layer {layer!r} outputs {list(output.shape)}, not a conv map")
            maps = output.detach().double()
            means = maps.mean(dim=(2, 3))
            update = [means.sum(0), means.pow(2).sum(0), maps.sum(0), maps.pow(2).sum(0)]
            if layer not in sums:
                sums[layer] = update
            else:
                sums[layer] = [a + b for a, b in zip(sums[layer], update, strict=True)]

        return hook

    with frozen(model), hooked(model, {layer: keep(layer) for layer in layers}):
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    n = len(images)
    moments = {}
    for layer, (s1, s2, m1, m2) in sums.items():
        channel_variance = (s2 - s1 * s1 / n) / max(n - 1, 1)
        position_variance = (m2 - m1 * m1 / n) / max(n - 1, 1)
        moments[layer] = (channel_variance.float(), position_variance.float())
    return moments


def select_units(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    channels_per_layer: int = 5,
    extra_channels: Mapping[str, Sequence[int]] | None = None,
    neurons_per_channel: int = 3,
    target_images: torch.Tensor | None = None,
    target_labels: torch.Tensor | None = None,
) -> dict:
    """The units to visualise, per layer, with the numbers behind each choice.

    Channels: the `channels_per_layer` highest variances of the spatial-mean activation over `images`, then
    `extra_channels[layer]`. Neurons: by the same rule, the positions where the channel's value varies most over
    `images`, at least map_size / 7 apart (4 px on 28x28, 2 on 14x14, 1 on 7x7). Target class (objective D):
    the label whose `target_images` give the channel's highest mean activation.
    """
    extra_channels = dict(extra_channels or {})
    moments = _activation_moments(model, images, layers)
    if target_images is not None:
        target_means = layer_activations(model, target_images, layers, reduce=spatial_mean)
    selection = {}
    for layer in layers:
        variance, variance_maps = moments[layer]
        n_channels, height, width = variance_maps.shape
        ranked = torch.argsort(variance, descending=True).tolist()
        requested = extra_channels.get(layer, [])
        min_distance = max(1, math.ceil(height / 7))
        units = []
        for channel in _chosen_channels(layer, ranked, channels_per_layer, requested):
            positions = _spread_positions(variance_maps[channel], neurons_per_channel, min_distance)
            target = None
            if target_images is not None:
                per_class = torch.stack(
                    [target_means[layer][target_labels == k, channel].mean() for k in range(NUM_CLASSES)]
                )
                target = int(per_class.argmax())
            units.append(
                {
                    "channel": int(channel),
                    "variance": float(variance[channel]),
                    "variance_rank": ranked.index(channel) + 1,
                    "requested": channel in requested,
                    "neurons": [[int(y), int(x)] for y, x in positions],
                    "target_class": target,
                }
            )
        selection[layer] = {
            "n_channels": int(n_channels),
            "map_size": [int(height), int(width)],
            "neuron_min_distance": min_distance,
            "n_images": int(len(images)),
            "units": units,
        }
    return selection


def _chosen_channels(layer: str, ranked: list[int], count: int, requested: Sequence[int]) -> list[int]:
    """The first `count` of the channels ranked by variance, then the requested ones not among them."""
    n_channels = len(ranked)
    channels = ranked[: min(count, n_channels)]
    for channel in requested:
        if not 0 <= int(channel) < n_channels:
            raise ValueError(f"actmax.units.extra_channels.{layer}: channel {channel} outside 0..{n_channels - 1}")
        if int(channel) not in channels:
            channels.append(int(channel))
    return channels


def select_study_units(
    model: nn.Module, data, layers: Sequence[str], *, channels_per_layer, extra_channels, neurons_per_channel
) -> dict:
    """The study's choice on Colored-MNIST (`data`): layers checked against the CNN, channels ranked on the
    unbiased evaluation set, objective D's target class from the biased set; every layer must get a channel."""
    unknown = [layer for layer in layers if layer not in dict(model.named_modules()) or not layer]
    if unknown:
        raise ValueError(
            f"actmax.units.layers: {unknown} are not modules of the Colored-MNIST CNN (conv1, conv2, conv3)"
        )
    images, _, _ = data.tensors("unbiased")
    target_images, target_labels, _ = data.tensors("biased")
    selection = select_units(
        model,
        images,
        layers,
        channels_per_layer=channels_per_layer,
        extra_channels=extra_channels,
        neurons_per_channel=neurons_per_channel,
        target_images=target_images,
        target_labels=target_labels,
    )
    for layer, chosen in selection.items():
        if not chosen["units"]:
            raise ValueError(f"actmax.units: no channel chosen for layer {layer} (channels_per_layer 0, no extra)")
    return selection
