"""What every image goes through before a model: the registry entry's `preprocessing`, as an image transform.

The steps are torchvision's `Resize` (antialiased), `CenterCrop`, `ToTensor` and `Normalize` on PIL images, written
out here with the same arithmetic (tests/models/test_preprocessing_equals_torchvision.py checks equal tensors on
every dataset): importing torchvision imports torch._dynamo, about 4 s of every job that builds no torchvision model
(issue 15). Light on purpose: figure and section stages that show model inputs import it without the model registry.

A `preprocessing` dict has `resize` (an int: the shorter side; or [H, W]: exactly that size), `crop` (an int: a
square centre crop; or [H, W]), and per-channel `mean` and `std`. The number of channels is `len(mean)`: one
channel means the image is read as grayscale, three as RGB. `input_size` and `input_channels` are what a study asks
of a model's input; no study reads `crop` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from unitscope.models.errors import ModelError

__all__ = ["ImageTransform", "build_transform", "input_channels", "input_size"]

INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _pair(value, key: str) -> tuple[int, int]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ModelError(f"preprocessing.{key}: expected an integer or [height, width], got {value!r}")


def input_size(preprocessing: Mapping) -> tuple[int, int]:
    """(height, width) of the model's input: the centre crop."""
    return _pair(preprocessing["crop"], "crop")


def input_channels(preprocessing: Mapping) -> int:
    """Channels of the model's input: 1 (grayscale) or 3 (RGB), one mean per channel."""
    return len(preprocessing["mean"])


def resized_size(height: int, width: int, resize: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) after `resize`: an int sets the shorter side (the longer one scaled and truncated, as
    torchvision does), [H, W] sets both."""
    if not isinstance(resize, int):
        return int(resize[0]), int(resize[1])
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    return (new_long, resize) if width <= height else (resize, new_long)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The centre `size` (height, width) of `image`, zero-padded first where the image is smaller (torchvision's
    rounding of the offsets)."""
    crop_h, crop_w = size
    if crop_w > image.width or crop_h > image.height:
        pad_w, pad_h = max(crop_w - image.width, 0), max(crop_h - image.height, 0)
        image = ImageOps.expand(image, border=(pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2), fill=0)
        if (image.height, image.width) == (crop_h, crop_w):
            return image
    top, left = int(round((image.height - crop_h) / 2.0)), int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


class ImageTransform:
    """PIL image -> [to `mode`] -> resize -> [centre crop] -> float tensor [C, H, W] in [0, 1] -> normalised.

    A class, not a closure, so that loader workers can pickle it. `mode` None keeps the image's own mode;
    `crop` None skips the crop."""

    def __init__(self, *, mode, resize, crop, mean, std, resample=Image.Resampling.BILINEAR):
        self.mode, self.resize, self.crop, self.resample = mode, resize, crop, resample
        self.mean = torch.tensor([float(m) for m in mean])[:, None, None]
        self.std = torch.tensor([float(s) for s in std])[:, None, None]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.mode and image.mode != self.mode:
            image = image.convert(self.mode)
        height, width = resized_size(image.height, image.width, self.resize)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), self.resample)
        if self.crop is not None:
            image = center_crop(image, self.crop)
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
        pixels = pixels.view(image.height, image.width, -1).permute(2, 0, 1).contiguous()
        return pixels.to(torch.get_default_dtype()).div(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(mode={self.mode}, resize={self.resize}, crop={self.crop}, "
            f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
        )


def _image_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise ModelError(f"preprocessing.mean: {channels} channels; images are read as 1 (grayscale) or 3 (RGB)")
    return "L" if channels == 1 else "RGB"


def build_transform(preprocessing: Mapping) -> ImageTransform:
    """[to L or RGB] -> Resize (bilinear unless `interpolation: bicubic`; antialiased) -> CenterCrop -> ToTensor
    -> Normalize."""
    missing = [k for k in ("resize", "crop", "mean", "std") if k not in preprocessing]
    if missing:
        raise ModelError(f"preprocessing: missing {', '.join(missing)} (needs resize, crop, mean, std)")
    if len(preprocessing["std"]) != len(preprocessing["mean"]):
        raise ModelError(
            f"preprocessing: mean has {len(preprocessing['mean'])} values, std {len(preprocessing['std'])}; "
            "expected one of each per input channel"
        )
    if any(float(s) == 0 for s in preprocessing["std"]):
        raise ModelError(f"preprocessing.std: {list(preprocessing['std'])} has a zero; every std must be non-zero")
    interpolation = str(preprocessing.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATION:
        raise ModelError(f"preprocessing.interpolation: {interpolation!r} is not one of {', '.join(INTERPOLATION)}")
    resize = preprocessing["resize"]
    resize = int(resize) if isinstance(resize, int | float) else _pair(resize, "resize")
    return ImageTransform(
        mode=_image_mode(input_channels(preprocessing)),
        resize=resize,
        crop=input_size(preprocessing),
        mean=preprocessing["mean"],
        std=preprocessing["std"],
        resample=INTERPOLATION[interpolation],
    )
