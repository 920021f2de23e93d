"""The model registry: build an entry of `config.models` into an eval-mode CPU model with frozen
parameters, its image transform, and the lookup of its layers by module path.

Where the weights come from and how they are checked is `unitscope.models.weights`; the model card
(layers, classes, accuracy) is `unitscope.models.card`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from unitscope.models.errors import ModelError
from unitscope.models.sources import LOCAL_ARCHS, build_architecture
from unitscope.models.weights import (
    build_torchvision,
    checkpoint_path,
    first_few,
    load_checkpoint,
    timm_weights_file,
)
from unitscope.settings import ModelRef

__all__ = [
    "CIFAR10_CLASSES",
    "LOCAL_ARCHS",
    "ModelError",
    "build_model",
    "imagenet_categories",
    "layer_names",
    "resolve_layer",
    "summary_layers",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_model(ref: ModelRef) -> nn.Module:
    """`build_model` for a stage's `ModelRef` (the settings object its rule was given)."""
    return build_model(ref.name, ref.spec, data_dir=ref.data_dir, torch_home=ref.torch_home)


def build_model(name: str, spec: dict, *, data_dir, torch_home) -> nn.Module:
    """The registry entry `models.<name>` as an eval-mode CPU model with frozen parameters.

    torchvision entries with `weights` go through torchvision's loader (on checked bytes); every other entry is
    its architecture (`sources.build_architecture`) plus its `checkpoint` (for timm entries with `weights` and no
    checkpoint: timm's pretrained file in the Hugging Face cache), read safely and matched key by key.
    `data_dir` resolves relative checkpoint paths; `torch_home` is the torch hub cache (TORCH_HOME) used by
    torchvision weights (None: torch's current default).
    """
    arch = spec.get("arch") or ""
    if arch.startswith("torchvision.") and spec.get("weights"):
        model, checkpoint = build_torchvision(name, spec, arch, data_dir, torch_home)
    else:
        model = build_architecture(name, spec)
        path = checkpoint_path(name, spec, data_dir, required=not (arch.startswith("timm.") and spec.get("weights")))
        if path is None:  # timm's pretrained weights, from the Hugging Face cache beside the torch hub cache
            path = timm_weights_file(name, spec, Path(torch_home).parent / "huggingface" if torch_home else None)
        checkpoint = load_checkpoint(name, spec, arch, model, path)
    model = model.to("cpu").eval()
    model.requires_grad_(False)
    model.unitscope_checkpoint = checkpoint  # {path, sha256, bytes} of the bytes loaded, for the card
    return model


# ----------------------------------------------------------------------------------------------
# transform, layers


def layer_names(model: nn.Module) -> list[str]:
    """Every module path (as in named_modules), without the root ''."""
    return [name for name, _ in model.named_modules() if name]


def summary_layers(model: nn.Module) -> list[str]:
    """The layers a user extracts: top-level modules and the children of top-level containers
    (`features.N`, `classifier.N` for MobileNetV2; `layerK`, `layerK.i`, `avgpool` for ResNets)."""
    names = []
    for top, module in model.named_children():
        names.append(top)
        if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            names.extend(f"{top}.{child}" for child, _ in module.named_children())
    return names


def resolve_layer(model: nn.Module, name: str, model_name: str) -> nn.Module:
    """The module at path `name`; an unknown name is a ModelError listing valid ones."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    everything = layer_names(model)
    close = difflib.get_close_matches(name, everything, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelError(
        f"model {model_name} has no layer {name!r}; {hint}valid layers include: "
        f"{first_few(summary_layers(model), 40)} ({len(everything)} layers in all, any named_modules() path)"
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's (standard) order."""
    import torchvision  # local: a job that builds no torchvision model starts without it (issue 15)

    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
