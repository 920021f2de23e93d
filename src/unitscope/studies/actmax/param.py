"""Image parameterisations and starting images for activation maximisation (lucent's `param`).

Two parameterisations: `pixel` (the image itself, clamped to [0, 1] after each Adam step) and `fft` (lucent's
`fft_image` and `to_valid_rgb`: a 1/f-scaled Fourier spectrum, decorrelated colour, sigmoid), which 224-px
ImageNet models need because plain pixels give high-frequency noise there. Every initialisation is an image
(`initial_images`); for `fft` it is converted exactly into the spectrum that produces it.

Images are [B, C, H, W] of any height and width (odd or not, H != W) and any number of channels. The colour
decorrelation is ImageNet's RGB correlation, so it applies to 3-channel images only; any other channel count
(a grayscale model's 1) goes through the spectrum and the sigmoid without mixing channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from unitscope.studies.actmax.specs import INITS, ActmaxError, UnitSpecs

__all__ = [
    "COLOR_DECORRELATION",
    "PARAMETERIZATIONS",
    "ImageParam",
    "decorrelates_colour",
    "fft_image_to_spectrum",
    "image_param",
    "initial_images",
    "spectrum_to_image",
]

PARAMETERIZATIONS = ("pixel", "fft")


# ----------------------------------------------------------------------------------------------
# initialisations


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def initial_images(specs: UnitSpecs, shape: tuple[int, int, int], init_images: torch.Tensor | None = None):
    """[B, C, H, W] starting images in [0, 1], each from its element's seed and init kind alone.

    gaussian: 0.5 + 0.25 N(0, 1); gray_noise: 0.5 + 0.05 N(0, 1); lowfreq: noise blurred (sigma = size / 8),
    rescaled to standard deviation 0.2 around 0.5; image: `init_images[b]`. Elements with the same seed share
    their noise, so different units start from the same image.
    """
    channels, height, width = shape
    noise = torch.empty(len(specs), channels, height, width)
    for seed in torch.unique(specs.seed).tolist():  # one draw per seed, not per element
        generator = torch.Generator().manual_seed(int(seed))
        noise[specs.seed == seed] = torch.randn((channels, height, width), generator=generator)
    images = torch.empty_like(noise)
    kinds = {name: specs.init == k for k, name in enumerate(INITS)}
    images[kinds["gaussian"]] = 0.5 + 0.25 * noise[kinds["gaussian"]]
    images[kinds["gray_noise"]] = 0.5 + 0.05 * noise[kinds["gray_noise"]]
    if bool(kinds["lowfreq"].any()):
        blurred = _gaussian_blur(noise[kinds["lowfreq"]], sigma=max(1.0, min(height, width) / 8))
        blurred = blurred / blurred.flatten(1).std(dim=1).clamp(min=1e-8)[:, None, None, None]
        images[kinds["lowfreq"]] = 0.5 + 0.2 * blurred
    if bool(kinds["image"].any()):
        if init_images is None or tuple(init_images.shape) != (len(specs), channels, height, width):
            raise ActmaxError(
                f"init 'image' needs init_images of shape {[len(specs), channels, height, width]}, got "
                f"{None if init_images is None else list(init_images.shape)}"
            )
        images[kinds["image"]] = init_images[kinds["image"]].float()
    return images.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# parameterisations (FFT + decorrelated colour: lucent's `fft_image` and `to_valid_rgb`)

# Square root of ImageNet's colour correlation (lucent), columns normalised to at most unit length.
_COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_DECORRELATION = _COLOR_SVD_SQRT / _COLOR_SVD_SQRT.norm(dim=0).max()
FFT_MAGIC = 4.0  # lucent divides the inverse FFT by 4 before the sigmoid


def _spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power  # [H, W//2 + 1]


def decorrelates_colour(channels: int) -> bool:
    """Whether images of `channels` channels get the colour decorrelation (RGB only)."""
    return channels == COLOR_DECORRELATION.shape[0]


def spectrum_to_image(spectrum: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Complex [B, C, H, W//2+1] (unscaled) -> image in (0, 1): 1/f scaling, inverse FFT, colour mix (C = 3 only),
    sigmoid."""
    scaled = spectrum * _spectrum_scale(height, width).to(spectrum.device)
    image = torch.fft.irfftn(scaled, s=(height, width), norm="ortho") / FFT_MAGIC
    if decorrelates_colour(image.shape[1]):
        image = torch.einsum("bchw,dc->bdhw", image, COLOR_DECORRELATION.to(image.device))
    return torch.sigmoid(image)


def fft_image_to_spectrum(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `spectrum_to_image` (pixels clipped to [0.001, 0.999] so the logit is finite)."""
    height, width = images.shape[2:]
    pre = torch.logit(images.clamp(1e-3, 1 - 1e-3))
    if decorrelates_colour(images.shape[1]):
        pre = torch.einsum("bdhw,cd->bchw", pre, torch.linalg.inv(COLOR_DECORRELATION).to(images.device))
    spectrum = torch.fft.rfftn(pre * FFT_MAGIC, s=(height, width), norm="ortho")
    return spectrum / _spectrum_scale(height, width).to(images.device)


class ImageParam:
    """The optimised tensor (`parameter`, a leaf with requires_grad) and the image [B, C, H, W] it stands for.

    `image()` maps the parameter to the image (the identity for `pixel`); `after_step()` runs after each
    optimiser step (for `pixel`, the clamp to [0, 1]).
    """

    def __init__(self, parameter: torch.Tensor, to_image: Callable[[torch.Tensor], torch.Tensor], clamp: bool):
        self.parameter = parameter
        self._to_image = to_image
        self._clamp = clamp

    def image(self) -> torch.Tensor:
        return self._to_image(self.parameter)

    @torch.no_grad()
    def after_step(self) -> None:
        if self._clamp:
            self.parameter.clamp_(0.0, 1.0)


def image_param(start: torch.Tensor, parameterization: str) -> ImageParam:
    """The parameter whose image is exactly `start` [B, C, H, W] (up to the FFT's clip to (0.001, 0.999))."""
    if parameterization not in PARAMETERIZATIONS:
        raise ActmaxError(f"parameterization {parameterization!r} is not one of {', '.join(PARAMETERIZATIONS)}")
    if parameterization == "pixel":
        return ImageParam(start.clone().requires_grad_(True), lambda parameter: parameter, clamp=True)
    height, width = start.shape[2:]
    spectrum = torch.view_as_real(fft_image_to_spectrum(start)).contiguous().requires_grad_(True)
    return ImageParam(
        spectrum,
        lambda parameter: spectrum_to_image(torch.view_as_complex(parameter), height, width),
        clamp=False,
    )
