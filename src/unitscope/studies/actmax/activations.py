"""Forward passes through a frozen model: the mode it runs in for activation maximisation and analysis, and the
outputs of chosen layers for a set of images."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from unitscope.hooks import hooked

__all__ = ["frozen", "layer_activations"]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and requires_grad off for the block; the previous mode and flags are restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def layer_activations(
    model: nn.Module, images: torch.Tensor, layers: Sequence[str], *, batch_size: int = 500, reduce=None
) -> dict[str, torch.Tensor]:
    """{layer: outputs of all images} (or `reduce(output)` per batch, e.g. spatial_mean), in one pass per batch."""
    collected: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def keep(layer):
        def hook(_module, _inputs, output):
            collected[layer].append((reduce(output) if reduce else output).detach().float().clone())

        return hook

    with frozen(model), hooked(model, {layer: keep(layer) for layer in layers}):
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    return {layer: torch.cat(values) for layer, values in collected.items()}
