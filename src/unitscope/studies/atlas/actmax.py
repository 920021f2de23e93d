"""Activation maximisation for every unit of an atlas shard: each unit's channel mean optimised from the grey start
(`seeds` runs per unit), all units x seeds in one batch, as the actmax study optimises a registry model's channels
(`actmax.registry.optimize_channels`: plain pixels below 64 px, the FFT / decorrelated-colour parameterisation with
random transforms from 64 px; images in [0, 1], normalised by the model's preprocessing on the way in).

Each batch element is one (unit, seed) run with its own image; Adam, the clamp and the penalties act element by element,
the starting noise depends on the seed alone and the transforms on the step alone, so a unit's images do not depend on
which other units share the batch (`render`; within float tolerance, since a convolution's summation order may change
with the batch size).

`optimize_at` optimises a module inside the layer with the same channels instead (MobileNetV2 `features.18.1`, the
BatchNorm before `features.18`'s ReLU6, as the actmax study does: 396-442 of that layer's 1,280 units are exactly 0 on
the grey start, so the ReLU6 passes them no gradient). Whatever is optimised, a unit's reported activation is its
channel mean at `layer` on its final image, from one plain forward pass (no transforms), as the actmax study reports
`final_activation` (`render.unit_activation`).

Stored (`write_shard_actmax`): actmax.npz with `channels` int64 [U], `images` uint8 [U, seeds, h, w, 3] (each image
stretched to its own range, as the actmax study shows them: `grids.display_normalize`; grey repeated to three channels
for a 1-channel model), `activation` float32 [U, seeds] and `colour_score` float32 [U] (the actmax study's colour score:
the mean CIELAB chroma of the unit's optimised images, averaged over seeds; NaN for a 1-channel model); actmax.parquet
with one row per unit: `channel`, `actmax_activation` (mean over seeds), `actmax_activation_sd` (sample standard
deviation over seeds, NaN for one seed), `actmax_colour_score`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.fsutil import write_npz, write_parquet
from unitscope.studies.actmax.activations import frozen
from unitscope.studies.actmax.grids import display_normalize
from unitscope.studies.actmax.image_metrics import mean_chroma
from unitscope.studies.actmax.registry import channel_rows, check_layers, input_shape, optimize_channels
from unitscope.studies.actmax.render import unit_activation
from unitscope.studies.actmax.specs import ActmaxError, UnitSpecs

__all__ = ["ShardActmax", "actmax_arrays", "actmax_table", "displayed_images", "shard_actmax", "write_shard_actmax"]


@dataclass(frozen=True)
class ShardActmax:
    """A shard's activation-maximisation images and what they do to their units (see the module docstring)."""

    channels: np.ndarray  # int64 [U]
    images: np.ndarray  # uint8 [U, S, h, w, 3]: the displayed images
    activation: np.ndarray  # float32 [U, S]: the unit's channel mean at the layer on its final image
    colour_score: np.ndarray  # float32 [U]: mean CIELAB chroma over the unit's seeds (NaN: grey model)
    optimised: torch.Tensor  # float32 [U, S, C, H, W] in [0, 1]: the final images as optimised (not stored)
    parameterization: str  # pixel or fft (with transforms)
    seconds: float  # the optimisation's wall time


def shard_actmax(
    model: nn.Module,
    preprocessing: Mapping,
    layer: str,
    channels: Sequence[int],
    *,
    seeds: int,
    steps: int,
    lr: float = 0.05,
    parameterization: str = "auto",
    l2: float = 0.0,
    tv: float = 0.0,
    optimize_at: str | None = None,
    model_name: str = "model",
    device: str | torch.device = "cpu",
    max_batch: int | None = None,
    progress: bool = False,
) -> ShardActmax:
    """Optimise every unit of `channels` (of `layer`) x `seeds` in one batched run on `model` (already on `device`);
    `max_batch` splits the batch into chunks run one after another (run-only: same images)."""
    channels = np.asarray(channels, dtype=np.int64)
    if channels.ndim != 1 or len(channels) == 0 or int(seeds) < 1:
        raise ActmaxError(f"atlas actmax {model_name} {layer!r}: needs one or more units and seeds >= 1")
    at = optimize_at or layer
    shape = input_shape(preprocessing)
    with frozen(model):
        check_layers(model, model_name, at, layer, shape, what=f"atlas actmax {model_name}")
    rows = channel_rows(channels, ("channel",), int(seeds), l2=float(l2), tv=float(tv))
    run = {"device": device, "max_batch": max_batch, "progress": progress, "snapshot_every": 0}
    result, used = optimize_channels(
        model, at, preprocessing, rows, steps=steps, lr=lr, parameterization=parameterization, **run
    )
    units = (len(channels), int(seeds))
    activation = unit_activation(
        model,
        layer,
        UnitSpecs.from_rows(rows),
        result.images,
        input_mean=preprocessing["mean"],
        input_std=preprocessing["std"],
        max_batch=max_batch,
    )
    chroma = mean_chroma(result.images.numpy()).reshape(units)
    return ShardActmax(
        channels=channels,
        images=displayed_images(result.images.numpy()).reshape(*units, *shape[1:], 3),
        activation=activation.astype(np.float32).reshape(units),
        colour_score=chroma.mean(axis=1).astype(np.float32),
        optimised=result.images.reshape(*units, *shape),
        parameterization=used,
        seconds=float(result.seconds),
    )


def displayed_images(images: np.ndarray) -> np.ndarray:
    """Images [B, C, H, W] in [0, 1] as uint8 RGB [B, H, W, 3]: each stretched to its own range as the actmax study
    shows them (`display_normalize`), a 1-channel image repeated to three."""
    shown = display_normalize(images).transpose(0, 2, 3, 1)
    return np.repeat(shown, 3, axis=3) if shown.shape[3] == 1 else np.ascontiguousarray(shown)


def actmax_arrays(result: ShardActmax) -> dict[str, np.ndarray]:
    """What actmax.npz holds."""
    return {
        "channels": result.channels.astype(np.int64),
        "images": result.images.astype(np.uint8),
        "activation": result.activation.astype(np.float32),
        "colour_score": result.colour_score.astype(np.float32),
    }


def actmax_table(result: ShardActmax) -> pd.DataFrame:
    """One row per unit: channel, mean and sample standard deviation (NaN for one seed) of its final activation over
    seeds, colour score."""
    activation = result.activation.astype(np.float64)
    spread = activation.std(axis=1, ddof=1) if activation.shape[1] > 1 else np.full(len(activation), np.nan)
    return pd.DataFrame(
        {
            "channel": result.channels.astype(np.int64),
            "actmax_activation": activation.mean(axis=1),
            "actmax_activation_sd": spread,
            "actmax_colour_score": result.colour_score.astype(np.float64),
        }
    )


def write_shard_actmax(
    result: ShardActmax, npz_path: str | os.PathLike, parquet_path: str | os.PathLike
) -> pd.DataFrame:
    """actmax.npz (bytes that depend only on the arrays: `fsutil.write_npz`) and actmax.parquet, each written whole
    then renamed; returns the table."""
    write_npz(actmax_arrays(result), npz_path)
    table = actmax_table(result)
    write_parquet(table, parquet_path)
    return table
