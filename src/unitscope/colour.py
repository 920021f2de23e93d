"""Colour spaces shared by the studies: sRGB to CIELAB (D65), the space colour names and chroma are measured in."""

from __future__ import annotations

import numpy as np

__all__ = ["srgb_to_lab"]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1, [..., 3] -> CIELAB (D65 white), [..., 3]."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
