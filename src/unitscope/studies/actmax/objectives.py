"""Activation-maximisation objectives and penalties (lucent's objective algebra), vectorised over a batch.

Each objective maps the captured tensors ({layer: output, LOGITS: model output}) to one value per batch
element, and objectives add, subtract and scale (by a number or a per-element tensor). `build_objective` mixes
the four study objectives in one batch with per-element masks:

- `channel`: (A) the mean of the unit's channel map;
- `neuron`: (B) the channel's value at (y, x);
- `topk`: (C) the mean of the channel's k largest values;
- `class_conditional`: (D) the neuron term plus `class_weight` x the target class's logit.

Penalties (per element, weights per element in the specs): L2 distance of the image to a centre and
anisotropic total variation, both as means over pixels so their weights do not depend on image size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from unitscope.studies.actmax.specs import ActmaxError, UnitSpecs

__all__ = [
    "LOGITS",
    "Objective",
    "build_objective",
    "channel_mean",
    "class_conditional",
    "l2_penalty",
    "logit",
    "neuron",
    "topk_mean",
    "tv_penalty",
]

LOGITS = "<logits>"  # key of the model's output in the captured tensors


class Objective:
    """fn(captured) -> [B]; `needs` are the captured keys it reads (a layer name or LOGITS)."""

    def __init__(self, fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], needs, name: str):
        self.fn = fn
        self.needs = frozenset(needs)
        self.name = name

    def __call__(self, captured: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(captured)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other) -> Objective:
        if isinstance(other, int | float) and other == 0:
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda c: self(c) + other(c), self.needs | other.needs, f"{self.name} + {other.name}")

    def __radd__(self, other) -> Objective:  # sum([...]) starts from 0
        return self.__add__(other)

    def __neg__(self) -> Objective:
        return Objective(lambda c: -self(c), self.needs, f"-({self.name})")

    def __sub__(self, other) -> Objective:
        return self + (-other)

    def __mul__(self, weight) -> Objective:
        """Scale by a number or a per-element tensor [B] (e.g. a mask choosing which elements use this term)."""
        if isinstance(weight, Objective):
            return NotImplemented
        label = f"{float(weight):g}" if isinstance(weight, int | float) else "w"
        return Objective(lambda c: weight * self(c), self.needs, f"{label}·{self.name}")

    __rmul__ = __mul__


def _rows(values: torch.Tensor) -> torch.Tensor:
    return torch.arange(values.shape[0], device=values.device)


def _channel_maps(captured: Mapping, layer: str, channels: torch.Tensor) -> torch.Tensor:
    """Each element's own channel of `layer`: [B, C, ...] -> [B, H*W] (a linear layer's [B, C] gives [B, 1]).

    The gather is memoised in `captured` for the forward pass, so objectives summed over the same units
    share one gather (and one gradient buffer) instead of each indexing the full layer output.
    """
    key = ("unit maps", layer, id(channels))
    if key in captured:
        return captured[key]
    output = captured[layer]
    if output.dim() < 2:
        raise ActmaxError(f"layer {layer!r} output has shape {list(output.shape)}; expected [B, C, ...]")
    n_channels = output.shape[1]
    if int(channels.max()) >= n_channels or int(channels.min()) < 0:
        raise ActmaxError(
            f"layer {layer!r} has {n_channels} channels; "
            f"unit channels span {int(channels.min())}..{int(channels.max())}"
        )
    channels = channels.to(output.device)
    maps = output[_rows(channels), channels].reshape(len(channels), -1)
    if isinstance(captured, dict):
        captured[key] = maps
    return maps


def channel_mean(layer: str, channels: torch.Tensor) -> Objective:
    """(A) Mean over the channel's map."""
    return Objective(lambda c: _channel_maps(c, layer, channels).mean(dim=1), {layer}, f"channel_mean[{layer}]")


def _neuron_values(captured: Mapping, channels, ys, xs, layer: str) -> torch.Tensor:
    output = captured[layer]
    if output.dim() != 4:
        raise ActmaxError(f"layer {layer!r} output has shape {list(output.shape)}; a neuron needs a [B, C, H, W] map")
    height, width = output.shape[2:]
    valid = ys >= 0
    if bool(((ys >= height) | (xs >= width) | (valid & (xs < 0))).any()):
        raise ActmaxError(
            f"layer {layer!r} map is {height}x{width}; neuron positions span y {int(ys.max())}, x {int(xs.max())}"
        )
    maps = _channel_maps(captured, layer, channels)
    index = (ys.clamp(min=0) * width + xs.clamp(min=0)).to(maps.device)
    return maps.gather(1, index[:, None])[:, 0]


def neuron(layer: str, channels: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> Objective:
    """(B) The channel's value at (y, x) of the layer's map (elements with y = -1 read (0, 0); mask them)."""
    return Objective(lambda c: _neuron_values(c, channels, ys, xs, layer), {layer}, f"neuron[{layer}]")


def topk_mean(layer: str, channels: torch.Tensor, k: int) -> Objective:
    """(C) Mean of the channel's k largest values (k capped at the map size)."""

    def fn(captured):
        maps = _channel_maps(captured, layer, channels)
        return maps.topk(min(int(k), maps.shape[1]), dim=1).values.mean(dim=1)

    return Objective(fn, {layer}, f"top{k}_mean[{layer}]")


def logit(classes: torch.Tensor) -> Objective:
    """The model output at each element's class (elements with class -1 read class 0; mask them)."""

    def fn(captured):
        output = captured[LOGITS]
        if output.dim() != 2 or int(classes.max()) >= output.shape[1]:
            raise ActmaxError(
                f"model output has shape {list(output.shape)}; target classes span up to {int(classes.max())}"
            )
        index = classes.clamp(min=0).to(output.device)
        return output[_rows(index), index]

    return Objective(fn, {LOGITS}, "logit")


def class_conditional(layer: str, channels, ys, xs, classes, weight) -> Objective:
    """(D) neuron + weight x target logit."""
    return neuron(layer, channels, ys, xs) + weight * logit(classes)


def build_objective(layer: str, specs: UnitSpecs, *, topk: int = 5, include_logits: bool = True) -> Objective:
    """Each element's own objective, as one masked sum of the four vectorised objectives.

    Terms no element uses are left out (so a batch without class-conditional units needs no logits and the
    forward pass can stop at `layer`). With include_logits=False the logit term is dropped: the unit's own
    activation (for D, its neuron value).
    """
    kind = specs.objective
    terms = []
    if bool((kind == 0).any()):
        terms.append((kind == 0).float() * channel_mean(layer, specs.channel))
    neuron_elements = (kind == 1) | (kind == 3)
    if bool(neuron_elements.any()):
        terms.append(neuron_elements.float() * neuron(layer, specs.channel, specs.y, specs.x))
    if bool((kind == 2).any()):
        terms.append((kind == 2).float() * topk_mean(layer, specs.channel, topk))
    if include_logits and bool((kind == 3).any()):
        terms.append(((kind == 3).float() * specs.class_weight) * logit(specs.target_class))
    return sum(terms)


# ----------------------------------------------------------------------------------------------
# penalties


def l2_penalty(images: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """[B, C, H, W] -> [B]: mean squared distance of the pixels to `center`."""
    return (images - center).pow(2).flatten(1).mean(dim=1)


def tv_penalty(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B]: anisotropic total variation, mean absolute difference of neighbouring pixels."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    return dy + dx
