"""What every image goes through before a model: the registry entry's `preprocessing`, as a torchvision transform.

Light on purpose (torchvision's transforms only): figure and section stages that show model inputs import it
without the model registry.

A `preprocessing` dict has `resize` (an int: the shorter side; or [H, W]: exactly that size), `crop` (an int: a
square centre crop; or [H, W]), and per-channel `mean` and `std`. The number of channels is `len(mean)`: one
channel means the image is read as grayscale, three as RGB. `input_size` and `input_channels` are what a study asks
of a model's input; no study reads `crop` itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchvision import transforms

from unitscope.models.errors import ModelError

__all__ = ["build_transform", "input_channels", "input_size"]

INTERPOLATION = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}


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


class _ToMode:
    """PIL image -> the mode the model reads (datasets hold RGB, grayscale and palette images alike).
    A class, not a lambda, so that loader workers can pickle the transform."""

    def __init__(self, channels: int):
        if channels not in (1, 3):
            raise ModelError(f"preprocessing.mean: {channels} channels; images are read as 1 (grayscale) or 3 (RGB)")
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode})"


def build_transform(preprocessing: Mapping):
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
    interpolation = str(preprocessing.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATION:
        raise ModelError(f"preprocessing.interpolation: {interpolation!r} is not one of {', '.join(INTERPOLATION)}")
    resize = preprocessing["resize"]
    resize = int(resize) if isinstance(resize, int | float) else list(_pair(resize, "resize"))
    return transforms.Compose(
        [
            _ToMode(input_channels(preprocessing)),
            transforms.Resize(resize, interpolation=INTERPOLATION[interpolation], antialias=True),
            transforms.CenterCrop(list(input_size(preprocessing))),
            transforms.ToTensor(),
            transforms.Normalize([float(m) for m in preprocessing["mean"]], [float(s) for s in preprocessing["std"]]),
        ]
    )
