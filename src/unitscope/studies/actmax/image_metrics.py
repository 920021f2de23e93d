"""Colour against stroke structure in images (synthesised or real): HSV, hue histograms and per-image measures;
and how colourful each unit's optimised images are (its actmax colour score)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.colour import srgb_to_lab  # the conversion the dissection names colours with

__all__ = ["hue_histograms", "image_color_shape", "mean_chroma", "rgb_to_hsv", "unit_colour_scores"]


def rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] in [0, 1] -> hue (radians, 0..2pi), saturation, value, each [B, H, W]."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    value, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    delta = value - minimum
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-8), torch.zeros_like(value))
    safe = delta.clamp(min=1e-8)
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) * (math.pi / 3)
    return hue, saturation, value


def hue_histograms(images: torch.Tensor, bins: int = 12) -> torch.Tensor:
    """[B, bins + 1]: hue histogram weighted by saturation x value, plus one achromatic bin weighted by
    (1 - saturation) x value; rows sum to 1 (an all-black image is all achromatic)."""
    hue, saturation, value = rgb_to_hsv(images)
    index = (hue / (2 * math.pi) * bins).long().clamp(0, bins - 1).flatten(1)
    chroma = (saturation * value).flatten(1)
    histogram = torch.zeros(len(images), bins + 1)
    histogram[:, :bins].scatter_add_(1, index, chroma)
    histogram[:, bins] = ((1 - saturation) * value).flatten(1).sum(dim=1)
    total = histogram.sum(dim=1, keepdim=True)
    histogram[total[:, 0] == 0, bins] = 1.0
    return histogram / histogram.sum(dim=1, keepdim=True)


def image_color_shape(images: torch.Tensor) -> pd.DataFrame:
    """Per image: colour concentration versus stroke structure.

    saturation: value-weighted mean saturation; hue_concentration: resultant length of the hue angles
    weighted by saturation x value (1 = one hue); color_concentration: their product; edge_energy: mean
    Sobel gradient magnitude of the value (brightness) channel, i.e. strokes on a dark background;
    color_edge_energy: the same over the R, G, B gradients together (also counts edges between equally bright
    hues, e.g. yellow on green, which brightness misses); dark_fraction: pixels with value < 0.25.
    """
    images = images.float()
    hue, saturation, value = rgb_to_hsv(images)
    flat_value = value.flatten(1)
    saturation_mean = (saturation.flatten(1) * flat_value).sum(1) / flat_value.sum(1).clamp(min=1e-8)
    weight = (saturation * value).flatten(1)
    resultant = torch.sqrt(
        (weight * torch.cos(hue.flatten(1))).sum(1) ** 2 + (weight * torch.sin(hue.flatten(1))).sum(1) ** 2
    )
    concentration = resultant / weight.sum(1).clamp(min=1e-8)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
    kernels = torch.stack([sobel, sobel.T])[:, None]
    gradients = nn.functional.conv2d(value[:, None], kernels)
    edge_energy = gradients.pow(2).sum(dim=1).sqrt().flatten(1).mean(1)
    color_gradients = nn.functional.conv2d(images.flatten(0, 1)[:, None], kernels).view(len(images), 3, 2, -1)
    color_edge_energy = color_gradients.pow(2).sum(dim=(1, 2)).sqrt().mean(1)
    mean_hue = torch.atan2((weight * torch.sin(hue.flatten(1))).sum(1), (weight * torch.cos(hue.flatten(1))).sum(1))
    return pd.DataFrame(
        {
            "saturation": saturation_mean.numpy(),
            "hue_concentration": concentration.numpy(),
            "color_concentration": (saturation_mean * concentration).numpy(),
            "mean_hue_deg": (torch.rad2deg(mean_hue) % 360).numpy(),
            "edge_energy": edge_energy.numpy(),
            "color_edge_energy": color_edge_energy.numpy(),
            "dark_fraction": (flat_value < 0.25).float().mean(1).numpy(),
            "brightness": flat_value.mean(1).numpy(),
        }
    )


def mean_chroma(images: np.ndarray) -> np.ndarray:
    """[B] the mean CIELAB chroma C*ab = hypot(a*, b*) over the pixels of each sRGB image [B, 3, H, W] in [0, 1]
    (clipped there): 0 for a grey image, about 100 or more for saturated red, green or blue; NaN for images
    without three channels (grayscale inputs have no chroma)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] != 3:
        return np.full(len(images), np.nan)
    lab = srgb_to_lab(np.clip(images, 0.0, 1.0).transpose(0, 2, 3, 1))
    return np.hypot(lab[..., 1], lab[..., 2]).mean(axis=(1, 2))


def unit_colour_scores(images: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """A unit's actmax colour score: the mean chroma (`mean_chroma`) of its optimised images, averaged over all its
    runs (seeds, and objectives when a target has several). `images` [R, 3, H, W] and `table` (one row per run, as
    `runs.save_run` writes a registry target: model, unit_layer, channel) are in the same order. One row per unit:
    model, layer (the unit layer), channel, colour_score, n_runs."""
    if len(images) != len(table):
        raise ValueError(f"actmax colour score: {len(images)} images for {len(table)} runs")
    runs = table.assign(chroma=mean_chroma(images))
    layer = runs["unit_layer"] if "unit_layer" in runs else runs["layer"]
    grouped = runs.assign(unit=layer).groupby(["model", "unit", "channel"], sort=True)["chroma"]
    scores = grouped.agg(colour_score="mean", n_runs="size").reset_index()
    return scores.rename(columns={"unit": "layer"})
