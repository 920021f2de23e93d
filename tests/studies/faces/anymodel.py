"""Models for the "any CNN" tests: torchvision and timm architectures with random (seeded) weights, and small
user modules (1-channel, non-square input), each built once per test session, eval mode, frozen."""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import nn

# model key -> (builder, input shape [C, H, W]); AlexNet needs at least 63 px, the rest run at 32 px
TORCHVISION = {
    "alexnet": {},
    "vgg11_bn": {},
    "resnet50": {},
    "densenet121": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "squeezenet1_1": {},
    "efficientnet_b0": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "regnet_y_400mf": {},
    "convnext_tiny": {},
}
INPUT_SHAPE = {"alexnet": (3, 64, 64), "tiny_gray": (1, 40, 56), "tiny_gray_shared": (1, 40, 56)}
INPUT_SHAPE |= {"tiny_gray_branchy": (1, 40, 56)}


class TinyGray(nn.Module):
    """A user's own CNN on 1 x 40 x 56 grayscale images. `shared_relu`: one ReLU module called twice (conv2 then
    keeps 8 channels); `branchy`: control flow on the input's size, which torch.fx cannot trace."""

    def __init__(self, *, shared_relu: bool = False, branchy: bool = False):
        super().__init__()
        width = 8 if shared_relu else 16
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, width, 3, padding=1)
        self.relu2 = self.relu1 if shared_relu else nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)
        self.branchy = branchy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        if self.branchy and x.shape[-1] > 1000:  # never true here; fx cannot evaluate it symbolically
            x = x[..., ::2]
        return self.fc(torch.flatten(self.gap(x), 1))


@functools.cache
def get_model(key: str, device: str = "cpu") -> nn.Module:
    """The model `key` (a TORCHVISION name, "timm_resnet18", "tiny_gray", "tiny_gray_shared", "tiny_gray_branchy")
    with random weights drawn under seed 0, in eval mode with frozen parameters (as the registry builds them).
    On the "meta" device it has no weights at all: built in no time, enough to trace its graph."""
    torch.manual_seed(0)
    if key == "regnet_y_400mf":
        device = "cpu"  # its constructor reads tensor values, which meta tensors do not have
    with torch.device(device):
        if key in TORCHVISION:
            model = torchvision.models.get_model(key, weights=None, **TORCHVISION[key])
        elif key == "timm_resnet18":
            import timm

            model = timm.create_model("resnet18", pretrained=False)
        else:
            model = TinyGray(shared_relu=key.endswith("shared"), branchy=key.endswith("branchy"))
    model.eval().requires_grad_(False)
    return model


def get_images(key: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    """n random inputs of the model's shape (32 x 32 RGB unless INPUT_SHAPE says otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUT_SHAPE.get(key, (3, 32, 32)), generator=generator)
