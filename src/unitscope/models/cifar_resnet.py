"""CIFAR-10 ResNets (He et al. 2016, section 4.2) with "option A" parameter-free shortcuts.

Module names match the state_dict keys of akamaster/pytorch_resnet_cifar10's checkpoints once
their `module.` prefix is stripped: conv1, bn1, layer1..layer3 (BasicBlocks: conv1, bn1, conv2,
bn2), linear. Parameter-free modules (ReLUs, shortcut, pooling) add no keys, so they are free to
be named for hooking:

- every ReLU is its own module and is called once per forward, so a hook on it fires once:
  `relu` (stem), `layerK.i.relu1` (inside a block), `layerK.i.relu2` (after the residual add,
  i.e. the block's output);
- `avgpool` is the global average pool over the last 8x8 map (its output is [N, 64, 1, 1]).

Input: RGB 32x32, ToTensor then ImageNet mean/std (what the checkpoints were trained with).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "ShortcutA", "cifar_resnet20", "cifar_resnet56"]


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad `pad` channels on each side (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), mode="constant", value=0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if planes - in_planes != 2 * (planes // 4):
                raise ValueError(f"option-A shortcut cannot map {in_planes} to {planes} channels")
            self.shortcut: nn.Module = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, n BasicBlocks per stage."""

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        stages = []
        for planes, blocks, stride in zip((16, 32, 64), num_blocks, (1, 2, 2), strict=True):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20: 3 blocks per stage, 0.27M parameters."""
    return CifarResNet((3, 3, 3), num_classes)


def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56: 9 blocks per stage, 0.85M parameters."""
    return CifarResNet((9, 9, 9), num_classes)
