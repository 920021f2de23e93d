"""Colour against stroke structure in images (synthesised or real): HSV, hue histograms and per-image measures."""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

__all__ = ["hue_histograms", "image_color_shape", "rgb_to_hsv"]


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
