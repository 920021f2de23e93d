"""TopoNet ResNet-18 (Deb, Deb & Murty, "TopoNets", ICLR 2025): torchvision's ResNet-18 with
anti-aliased (BlurPool) strided convolutions, trained on ImageNet with an added TopoLoss.

Checkpoint format (from the authors' loader, GitHub `toponets/toponets`,
`toponets/vision/resnet18.py`; files `all_topo_tau_{tau}.pt` on the Hugging Face repo
`murtylab/topo-resnet18-imagenet`, tau in {0.5, 1, 5, 10, 20, 50}):

- a plain state_dict (OrderedDict of tensors, no wrapper, no `module.` prefix), read there with
  `torch.load(path, weights_only=True)` and `model.load_state_dict(state_dict)` (strict);
- the model is `torchvision.models.resnet18()` in which every `nn.Conv2d` with a stride > 1 and
  at least 16 input channels is replaced by `BlurPoolConv2d(conv)`: a fixed depthwise 3x3
  binomial blur ([1,2,1] x [1,2,1] / 16, zero padding 1, stride 1) followed by the original conv.
  The wrapper keeps the conv as `.conv` and the filter as the buffer `.blur_filter`
  [C_in, 1, 3, 3]. In ResNet-18 that affects `layer{2,3,4}.0.conv1` and
  `layer{2,3,4}.0.downsample.0`, so their keys become e.g. `layer2.0.conv1.conv.weight`,
  `layer2.0.conv1.blur_filter`, `layer2.0.downsample.0.conv.weight`. The stem `conv1` (3 input
  channels) and the max-pool are unchanged.

This mirrors the FFCV ImageNet recipe the authors followed. Class order: the 1000 standard
ImageNet-1k classes (as torchvision's). Preprocessing: resize 256, centre crop 224, ImageNet
mean/std. Not verified against a real checkpoint here (none is available offline); the module
names and buffer shapes above follow the authors' code.

Hooking: a `BlurPoolConv2d` returns its inner conv's output, so hook the wrapper
(`layer2.0.conv1`). As in torchvision, each BasicBlock calls its single `relu` module twice;
hook the block (`layer3.1`) for its output rather than `layer3.1.relu`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlurPoolConv2d", "apply_blurpool", "toponet_resnet18"]

BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


class BlurPoolConv2d(nn.Module):
    """A fixed depthwise 3x3 blur (stride 1, zero padding 1) before a (strided) convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("blur_filter", BLUR_KERNEL.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter, stride=1, padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> nn.Module:
    """Wrap, in place, every Conv2d with stride > 1 and >= 16 input channels (TopoNets' rule)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)
    return module


def toponet_resnet18(num_classes: int = 1000) -> nn.Module:
    """Untrained TopoNet ResNet-18 whose state_dict keys match the released checkpoints."""
    import torchvision  # local: see sources.torchvision_builder

    return apply_blurpool(torchvision.models.resnet18(weights=None, num_classes=num_classes))


def load_toponet_resnet18(path, *, trusted: bool = False) -> nn.Module:
    """Stand-alone loader (strict, like the authors'); `unitscope.models.registry.build_model` is the checked one."""
    model = toponet_resnet18()
    state = torch.load(path, map_location="cpu", weights_only=not trusted)
    model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model.eval()
