"""What every image goes through before a model: the registry entry's `preprocessing`, as a torchvision transform.

Light on purpose (torchvision's transforms only): figure and section stages that show model inputs import it
without the model registry.
"""

from __future__ import annotations

from torchvision import transforms

from unitscope.models.errors import ModelError


def build_transform(preprocessing: dict):
    """Resize (shorter side, bilinear, antialiased) -> CenterCrop -> ToTensor -> Normalize."""
    missing = [k for k in ("resize", "crop", "mean", "std") if k not in preprocessing]
    if missing:
        raise ModelError(f"preprocessing: missing {', '.join(missing)} (needs resize, crop, mean, std)")
    return transforms.Compose(
        [
            transforms.Resize(
                int(preprocessing["resize"]),
                interpolation=transforms.InterpolationMode.BILINEAR,
                antialias=True,
            ),
            transforms.CenterCrop(int(preprocessing["crop"])),
            transforms.ToTensor(),
            transforms.Normalize([float(m) for m in preprocessing["mean"]], [float(s) for s in preprocessing["std"]]),
        ]
    )
