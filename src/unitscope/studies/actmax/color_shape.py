"""Colour versus shape in the units' responses to data: each channel's activation change when only the colour of
a digit changes against when only the digit changes (colour fixed), in a fully crossed design of digits x
colours, and the per-layer summary with intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.stats import bootstrap_interval, wilson_interval
from unitscope.studies.actmax.activations import layer_activations
from unitscope.studies.actmax.colored_mnist import NUM_CLASSES, colorize

__all__ = ["color_shape_probe", "color_shape_table"]


def _mean_pairwise_abs(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |a_i - a_j| over pairs i != j along `dim` (that dim removed)."""
    values = values.movedim(dim, -1)
    n = values.shape[-1]
    differences = (values[..., :, None] - values[..., None, :]).abs().sum(dim=(-1, -2))
    return differences / (n * (n - 1))


def color_shape_probe(
    model: nn.Module,
    digits: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[str],
    *,
    groups: int = 50,
    seed: int = 0,
    target: str = "stroke",
    neurons: Mapping[str, Sequence[tuple[int, int, int]]] | None = None,
) -> pd.DataFrame:
    """Per channel (spatial mean) and per listed neuron (channel, y, x): activation change under a colour swap
    (digit fixed) and under a digit swap (colour fixed).

    `groups` sets of ten evaluation digits (one per class, drawn with `seed`) are each drawn in all ten
    colours: A[g, digit, colour]. color_change = mean |A[g, d, c] - A[g, d, c']| over c != c';
    shape_change = mean |A[g, d, c] - A[g, d', c]| over d != d'; color_index = color / (color + shape).
    """
    rng = np.random.default_rng([seed, 4, 2])
    chosen = np.stack(
        [rng.choice(np.flatnonzero(labels == k), size=groups, replace=False) for k in range(NUM_CLASSES)], axis=1
    )  # [G, 10]
    picked = digits[chosen.reshape(-1)]  # [G*10, 28, 28]
    repeated = np.repeat(picked, NUM_CLASSES, axis=0)  # [G*10*10]: colour varies fastest
    colors = np.tile(np.arange(NUM_CLASSES), len(picked))
    images = torch.from_numpy(colorize(repeated, colors, target=target)).float().div_(255.0)
    outputs = layer_activations(model, images, layers)
    rows = []
    for layer in layers:
        output = outputs[layer]
        units = [("channel", c, -1, -1, output[:, c].mean(dim=(1, 2))) for c in range(output.shape[1])]
        for channel, y, x in (neurons or {}).get(layer, []):
            units.append(("neuron", channel, y, x, output[:, channel, y, x]))
        values = torch.stack([u[4] for u in units], dim=1).view(groups, NUM_CLASSES, NUM_CLASSES, len(units))
        color_change = _mean_pairwise_abs(values, dim=2).mean(dim=(0, 1))
        shape_change = _mean_pairwise_abs(values, dim=1).mean(dim=(0, 1))
        spread = values.flatten(0, 2).std(dim=0)
        for i, (kind, channel, y, x, _) in enumerate(units):
            total = float(color_change[i] + shape_change[i])
            rows.append(
                {
                    "layer": layer,
                    "kind": kind,
                    "channel": int(channel),
                    "y": int(y),
                    "x": int(x),
                    "color_change": float(color_change[i]),
                    "shape_change": float(shape_change[i]),
                    "color_index": float(color_change[i]) / total if total > 0 else float("nan"),
                    "activation_std": float(spread[i]),
                    "n_images": int(values.shape[0] * values.shape[1] * values.shape[2]),
                }
            )
    return pd.DataFrame(rows)


def color_shape_table(probe: pd.DataFrame, image_metrics: pd.DataFrame | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Per layer: the data-based colour index of its channels (median with bootstrap 95% CI, share of channels
    whose colour change exceeds their digit change with a Wilson CI), and, given image metrics of synthesised
    images, their median colour concentration and edge energy."""
    rng = np.random.default_rng([seed, 4, 3])
    rows = []
    channels = probe[probe["kind"] == "channel"]
    for layer, group in channels.groupby("layer", sort=False):
        index = group["color_index"].dropna().to_numpy()
        color_dominated = int((index > 0.5).sum())
        row = {
            "layer": layer,
            "n_channels": int(len(group)),
            "n_responsive": int(len(index)),
            "median_color_index": float(np.median(index)) if len(index) else float("nan"),
            "median_color_index_ci95": list(bootstrap_interval(index, rng, statistic=np.median))
            if len(index) >= 2
            else [float("nan"), float("nan")],
            "color_dominated": color_dominated,
            "color_dominated_fraction": color_dominated / len(index) if len(index) else float("nan"),
            "color_dominated_ci95": list(wilson_interval(color_dominated, len(index))),
        }
        if image_metrics is not None:
            metrics = image_metrics[image_metrics["layer"] == layer]
            row.update(
                {
                    "n_images": int(len(metrics)),
                    "median_color_concentration": float(metrics["color_concentration"].median()),
                    "median_edge_energy": float(metrics["edge_energy"].median()),
                    "median_color_edge_energy": float(metrics["color_edge_energy"].median()),
                    "median_dark_fraction": float(metrics["dark_fraction"].median()),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)
