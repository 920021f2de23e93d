"""A user's own CNN for the "bring your own model" tests, as the file a researcher would write (1-channel,
non-square 40 x 56 input), and seeded random weights saved as a local checkpoint: no weights for these
architectures are reachable offline, so the tests check that every study runs, not what the units mean."""

from __future__ import annotations

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
