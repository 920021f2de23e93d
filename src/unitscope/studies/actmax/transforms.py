"""Random transforms for activation maximisation (lucent's `transforms.standard_transforms`): each step sees the
image padded, jittered, scaled and rotated at random, the same way for the whole batch, so the optimum must
survive small shifts and turns instead of exploiting single pixels.

Images may have any number of channels and any height and width: the rotation is a true rotation in pixels
also when height != width (`affine_grid` works in coordinates normalised per axis, see `_rotation_scale`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["default_pad", "random_transform", "step_generator"]


def default_pad(height: int, width: int) -> int:
    """The padding (grey pixels per side) when none is set: about 1/18 of the image, at least 2."""
    return max(2, min(height, width) // 18)


def step_generator(step: int) -> torch.Generator:
    """The random stream of one optimisation step's transform (the same for every run at that step)."""
    return torch.Generator().manual_seed(1_000_003 * (step + 1))


def random_transform(images: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """lucent's standard transforms, one draw for the whole batch: pad (grey), jitter, scale, rotate, jitter."""
    height, width = images.shape[2:]
    out = nn.functional.pad(images, (pad, pad, pad, pad), value=0.5)

    def jitter(x, amount):
        dy, dx = (int(v) for v in torch.randint(0, amount + 1, (2,), generator=generator))
        return x[:, :, dy : x.shape[2] - amount + dy, dx : x.shape[3] - amount + dx]

    out = jitter(out, max(1, pad * 2 // 3))
    scales = [1 + (i - 5) / 50 for i in range(11)]
    angles = list(range(-10, 11)) + 5 * [0]
    scale = scales[int(torch.randint(len(scales), (1,), generator=generator))]
    angle = math.radians(angles[int(torch.randint(len(angles), (1,), generator=generator))])
    theta = _rotation_scale(angle, scale, out.shape[2], out.shape[3]).to(dtype=out.dtype, device=out.device)
    grid = nn.functional.affine_grid(theta.expand(out.shape[0], 2, 3), list(out.shape), align_corners=False)
    out = nn.functional.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = jitter(out, max(1, pad // 3))
    return nn.functional.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)


def _rotation_scale(angle: float, scale: float, height: int, width: int) -> torch.Tensor:
    """The [2, 3] `affine_grid` matrix that turns by `angle` and zooms by `scale` about the centre.

    affine_grid's x and y run over [-1, 1] each, so a pixel is 2/width wide and 2/height high: a rotation in
    pixels is the normalised rotation with its off-diagonal terms scaled by the aspect ratio (both factors are
    exactly 1 for a square image).
    """
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return torch.tensor([[cos, -sin * (height / width), 0.0], [sin * (width / height), cos, 0.0]])
