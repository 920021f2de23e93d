"""Models for the "bring your own model" and "any CNN" tests. A user's own CNN (1-channel, non-square 40 x 56
input) twice: as the file a researcher would write (`TINYGRAY_SOURCE`, for the registry's `python:` archs) and as
the class `TinyGray`; torchvision and timm architectures by name (`get_model`), each built once per test session
with seeded random weights, eval mode, frozen; and seeded random weights saved as a local checkpoint. No weights
for these architectures are reachable offline, so the tests check that every study runs, not what the units mean.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

TINYGRAY_SOURCE = """
from torch import nn


class TinyGray(nn.Sequential):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, classes)


def tiny_gray(classes=10):
    return TinyGray(classes)
"""
GRAY_PREPROCESSING = {"resize": [40, 56], "crop": [40, 56], "mean": [0.5], "std": [0.25]}


def write_user_module(folder: Path) -> Path:
    """`folder`/tinygray.py, the module of registry arch `python:tinygray:tiny_gray`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tinygray.py").write_text(TINYGRAY_SOURCE)
    return folder


def save_random_weights(model: nn.Module, path: Path, seed: int = 0) -> Path:
    """Seeded N(0, 0.05) weights (BatchNorm statistics as built) saved at `path` (.safetensors or torch)."""
    torch.manual_seed(seed)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.05)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# the torchvision architectures of the faces tests, with their builders' arguments beyond `weights=None` (any other
# torchvision name builds with none)
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
# model key -> input shape [C, H, W] where it is not 3 x 32 x 32: AlexNet needs at least 63 px
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
    """The model `key` ("tiny_gray", "tiny_gray_shared", "tiny_gray_branchy", "timm_<timm name>" or a torchvision
    name) with random weights drawn under seed 0, in eval mode with frozen parameters (as the registry builds them),
    shared by every test of the session: tests must not change it (copy it first). On the "meta" device it has no
    weights at all: built in no time, enough to trace its graph."""
    torch.manual_seed(0)
    if key == "regnet_y_400mf":
        device = "cpu"  # its constructor reads tensor values, which meta tensors do not have
    with torch.device(device):
        if key.startswith("tiny_gray"):
            model = TinyGray(shared_relu=key.endswith("shared"), branchy=key.endswith("branchy"))
        elif key.startswith("timm_"):
            import timm

            model = timm.create_model(key.removeprefix("timm_"), pretrained=False)
        else:
            import torchvision

            model = torchvision.models.get_model(key, weights=None, **TORCHVISION.get(key, {}))
    model.eval().requires_grad_(False)
    return model


def get_images(key: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    """n random inputs of the model's shape (32 x 32 RGB unless INPUT_SHAPE says otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUT_SHAPE.get(key, (3, 32, 32)), generator=generator)
