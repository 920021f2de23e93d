"""Activation maximisation, batched over units: synthesise inputs that excite chosen units of a frozen model.

Every batch element is one optimisation run (one unit, objective, seed, initialisation and regulariser
setting) with its own image; all of them step together. The objective of the whole batch is one vectorised
gather of each element's unit from the hooked layer's output, so there is no Python loop over units in the
step, and because Adam, the clamp and the regularisers act element by element, a batched run gives the
same images as running each element alone (tested).

Objectives are small composable functions (lucent's objective algebra): each maps the captured tensors
({layer: output, LOGITS: model output}) to one value per element, and objectives add, subtract and scale
(by a number or a per-element tensor). `build_objective` mixes the four study objectives in one batch with
per-element masks:

- `channel`: (A) the mean of the unit's channel map;
- `neuron`: (B) the channel's value at (y, x);
- `topk`: (C) the mean of the channel's k largest values;
- `class_conditional`: (D) the neuron term plus `class_weight` x the target class's logit.

Regularisers (per element, weights per element): L2 distance of the image to `l2_center` and anisotropic
total variation, both as means over pixels so their weights do not depend on image size. Images live in
[0, 1]; `input_mean`/`input_std` normalise them on the way into the model (registry models).

Two parameterisations: `pixel` (the image itself, clamped to [0, 1] after each Adam step) and `fft`
(lucent's: a 1/f-scaled Fourier spectrum, decorrelated colour, sigmoid; with `transforms` the image is padded,
jittered, scaled and rotated at random each step, the same way for the whole batch), which 224-px ImageNet
models need because plain pixels give high-frequency noise there. Every initialisation is an image; for `fft`
it is converted exactly into the spectrum that produces it.

The model is frozen for the run (eval mode, requires_grad off, both restored afterwards): no gradient reaches
a weight and no buffer changes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from unitscope.errors import UnitscopeError
from unitscope.hooks import HookError, StopForward, get_module, hooked

__all__ = [
    "INITS",
    "LOGITS",
    "OBJECTIVES",
    "ActmaxError",
    "ActmaxResult",
    "Objective",
    "UnitSpecs",
    "build_objective",
    "channel_mean",
    "class_conditional",
    "fft_image_to_spectrum",
    "frozen",
    "initial_images",
    "l2_penalty",
    "logit",
    "neuron",
    "optimize_inputs",
    "spectrum_to_image",
    "topk_mean",
    "tv_penalty",
    "unit_activation",
]

OBJECTIVES = ("channel", "neuron", "topk", "class_conditional")
INITS = ("gaussian", "gray_noise", "lowfreq", "image")
PARAMETERIZATIONS = ("pixel", "fft")
LOGITS = "<logits>"  # key of the model's output in the captured tensors


class ActmaxError(UnitscopeError, ValueError):
    """Bad unit specs, layer or settings for activation maximisation; the message is one line."""


# ----------------------------------------------------------------------------------------------
# objectives


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


# ----------------------------------------------------------------------------------------------
# unit specs


@dataclass
class UnitSpecs:
    """One row per batch element, every field a tensor of length B.

    `objective` and `init` index OBJECTIVES and INITS; `y`, `x` are -1 for channel objectives and
    `target_class` is -1 unless the objective is class_conditional.
    """

    channel: torch.Tensor
    objective: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    target_class: torch.Tensor
    class_weight: torch.Tensor
    seed: torch.Tensor
    init: torch.Tensor
    l2: torch.Tensor
    tv: torch.Tensor

    INTEGER_FIELDS = ("channel", "objective", "y", "x", "target_class", "seed", "init")

    def __len__(self) -> int:
        return len(self.channel)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping]) -> UnitSpecs:
        """From dicts with channel, objective (name), and optionally y, x, target_class, class_weight, seed,
        init (name), l2, tv."""
        if not rows:
            raise ActmaxError("no units to optimise (empty unit list)")
        columns = {f.name: [] for f in fields(cls)}
        for i, row in enumerate(rows):
            objective, init = row["objective"], row.get("init", "gray_noise")
            if objective not in OBJECTIVES:
                raise ActmaxError(f"unit {i}: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
            if init not in INITS:
                raise ActmaxError(f"unit {i}: init {init!r} is not one of {', '.join(INITS)}")
            y, x = int(row.get("y", -1)), int(row.get("x", -1))
            if objective in ("neuron", "class_conditional") and (y < 0 or x < 0):
                raise ActmaxError(f"unit {i}: objective {objective} needs a neuron position y, x >= 0")
            target = int(row.get("target_class", -1))
            if objective == "class_conditional" and target < 0:
                raise ActmaxError(f"unit {i}: objective class_conditional needs target_class >= 0")
            columns["channel"].append(int(row["channel"]))
            columns["objective"].append(OBJECTIVES.index(objective))
            columns["y"].append(y if objective in ("neuron", "class_conditional") else -1)
            columns["x"].append(x if objective in ("neuron", "class_conditional") else -1)
            columns["target_class"].append(target if objective == "class_conditional" else -1)
            columns["class_weight"].append(float(row.get("class_weight", 0.0)))
            columns["seed"].append(int(row.get("seed", 0)))
            columns["init"].append(INITS.index(init))
            columns["l2"].append(float(row.get("l2", 0.0)))
            columns["tv"].append(float(row.get("tv", 0.0)))
        return cls(
            **{
                name: torch.tensor(values, dtype=torch.long if name in cls.INTEGER_FIELDS else torch.float32)
                for name, values in columns.items()
            }
        )

    def select(self, index) -> UnitSpecs:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        return UnitSpecs(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({f.name: getattr(self, f.name).numpy() for f in fields(self)})
        frame["objective"] = [OBJECTIVES[i] for i in frame["objective"]]
        frame["init"] = [INITS[i] for i in frame["init"]]
        return frame


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
# regularisers and initialisations


def l2_penalty(images: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """[B, C, H, W] -> [B]: mean squared distance of the pixels to `center`."""
    return (images - center).pow(2).flatten(1).mean(dim=1)


def tv_penalty(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B]: anisotropic total variation, mean absolute difference of neighbouring pixels."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    return dy + dx


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def initial_images(specs: UnitSpecs, shape: tuple[int, int, int], init_images: torch.Tensor | None = None):
    """[B, C, H, W] starting images in [0, 1], each from its element's seed and init kind alone.

    gaussian: 0.5 + 0.25 N(0, 1); gray_noise: 0.5 + 0.05 N(0, 1); lowfreq: noise blurred (sigma = size / 8),
    rescaled to standard deviation 0.2 around 0.5; image: `init_images[b]`. Elements with the same seed share
    their noise, so different units start from the same image.
    """
    channels, height, width = shape
    noise = torch.empty(len(specs), channels, height, width)
    for seed in torch.unique(specs.seed).tolist():  # one draw per seed, not per element
        generator = torch.Generator().manual_seed(int(seed))
        noise[specs.seed == seed] = torch.randn((channels, height, width), generator=generator)
    images = torch.empty_like(noise)
    kinds = {name: specs.init == k for k, name in enumerate(INITS)}
    images[kinds["gaussian"]] = 0.5 + 0.25 * noise[kinds["gaussian"]]
    images[kinds["gray_noise"]] = 0.5 + 0.05 * noise[kinds["gray_noise"]]
    if bool(kinds["lowfreq"].any()):
        blurred = _gaussian_blur(noise[kinds["lowfreq"]], sigma=max(1.0, min(height, width) / 8))
        blurred = blurred / blurred.flatten(1).std(dim=1).clamp(min=1e-8)[:, None, None, None]
        images[kinds["lowfreq"]] = 0.5 + 0.2 * blurred
    if bool(kinds["image"].any()):
        if init_images is None or tuple(init_images.shape) != (len(specs), channels, height, width):
            raise ActmaxError(
                f"init 'image' needs init_images of shape {[len(specs), channels, height, width]}, got "
                f"{None if init_images is None else list(init_images.shape)}"
            )
        images[kinds["image"]] = init_images[kinds["image"]].float()
    return images.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# parameterisations (FFT + decorrelated colour: lucent's `fft_image` and `to_valid_rgb`)

# Square root of ImageNet's colour correlation (lucent), columns normalised to at most unit length.
_COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_DECORRELATION = _COLOR_SVD_SQRT / _COLOR_SVD_SQRT.norm(dim=0).max()
FFT_MAGIC = 4.0  # lucent divides the inverse FFT by 4 before the sigmoid


def _spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power  # [H, W//2 + 1]


def spectrum_to_image(spectrum: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Complex [B, 3, H, W//2+1] (unscaled) -> image in (0, 1): 1/f scaling, inverse FFT, colour mix, sigmoid."""
    scaled = spectrum * _spectrum_scale(height, width).to(spectrum.device)
    image = torch.fft.irfftn(scaled, s=(height, width), norm="ortho") / FFT_MAGIC
    image = torch.einsum("bchw,dc->bdhw", image, COLOR_DECORRELATION.to(image.device))
    return torch.sigmoid(image)


def fft_image_to_spectrum(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `spectrum_to_image` (pixels clipped to [0.001, 0.999] so the logit is finite)."""
    height, width = images.shape[2:]
    pre = torch.logit(images.clamp(1e-3, 1 - 1e-3))
    pre = torch.einsum("bdhw,cd->bchw", pre, torch.linalg.inv(COLOR_DECORRELATION).to(images.device))
    spectrum = torch.fft.rfftn(pre * FFT_MAGIC, s=(height, width), norm="ortho")
    return spectrum / _spectrum_scale(height, width).to(images.device)


def _random_transform(images: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """lucent's standard transforms, one draw for the whole batch: pad (grey), jitter, scale, rotate, jitter."""
    height, width = images.shape[2:]
    out = nn.functional.pad(images, (pad, pad, pad, pad), value=0.5)

    def jitter(x, amount):
        dy, dx = (int(v) for v in torch.randint(0, amount + 1, (2,), generator=generator))
        return x[:, :, dy : x.shape[2] - amount + dy, dx : x.shape[3] - amount + dx]

    out = jitter(out, max(1, pad * 2 // 3))
    scales = [1 + (i - 5) / 50 for i in range(11)]
    angles = list(range(-10, 11)) + 5 * [0]
    scale = scales[int(torch.randint(len(scales), (1,), generator=generator))]
    angle = math.radians(angles[int(torch.randint(len(angles), (1,), generator=generator))])
    theta = torch.tensor(
        [
            [math.cos(angle) / scale, -math.sin(angle) / scale, 0.0],
            [math.sin(angle) / scale, math.cos(angle) / scale, 0.0],
        ],
        dtype=out.dtype,
        device=out.device,
    )
    grid = nn.functional.affine_grid(theta.expand(out.shape[0], 2, 3), list(out.shape), align_corners=False)
    out = nn.functional.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = jitter(out, max(1, pad // 3))
    return nn.functional.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# the optimisation


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


@dataclass
class ActmaxResult:
    """Images [B, C, H, W] in [0, 1]; curves [steps, B] (objective and loss per step, taken before each
    update); snapshots uint8 [S, B, C, H, W] at `snapshot_steps` (0 = the start); final values [B] of the
    objective, the unit alone (D without its logit term) and the target logit (nan without a target)."""

    specs: UnitSpecs
    layer: str
    images: torch.Tensor
    objective_curve: np.ndarray
    loss_curve: np.ndarray
    snapshots: np.ndarray
    snapshot_steps: list[int]
    final_objective: np.ndarray
    final_unit: np.ndarray
    final_logit: np.ndarray
    seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        frame = self.specs.to_frame()
        frame.insert(0, "layer", self.layer)
        frame["final_objective"] = self.final_objective
        frame["final_activation"] = self.final_unit
        frame["final_logit"] = self.final_logit
        frame["start_objective"] = self.objective_curve[0]
        return frame


class _Capture:
    """Hook that keeps `layer`'s output and, when the objective needs no logits, stops the forward pass there.

    The output is kept without a copy; if a later in-place op (e.g. ReLU(inplace=True)) changes it during
    the forward pass, `_evaluate` notices (tensor version counter) and reruns the pass keeping a copy.
    """

    def __init__(self, layer: str, stop: bool):
        self.layer, self.stop, self.copy, self.captured, self.version = layer, stop, False, {}, 0

    def __call__(self, _module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            kind = type(output).__name__
            raise ActmaxError(f"layer {self.layer!r} returns {kind}, not a tensor; pick a module inside it")
        if self.layer in self.captured:
            raise ActmaxError(f"layer {self.layer!r} runs twice per forward pass (a shared module); pick another")
        self.captured[self.layer] = output.clone() if self.copy else output
        self.version = output._version
        if self.stop:
            raise StopForward


def _evaluate(model, capture: _Capture, inputs: torch.Tensor) -> dict:
    for _attempt in range(2):
        capture.captured = {}
        try:
            capture.captured[LOGITS] = model(inputs)
        except StopForward:
            pass
        if capture.layer not in capture.captured:
            raise ActmaxError(f"layer {capture.layer!r} did not run in the forward pass")
        if capture.copy or capture.captured[capture.layer]._version == capture.version:
            return capture.captured
        capture.copy = True  # modified in place after the hook: run again, keeping a copy
    return capture.captured


def optimize_inputs(
    model: nn.Module,
    layer: str,
    specs: UnitSpecs,
    *,
    image_shape: tuple[int, int, int] = (3, 28, 28),
    steps: int = 500,
    lr: float = 0.05,
    topk: int = 5,
    l2_center: float = 0.0,
    parameterization: str = "pixel",
    transforms: bool = False,
    transform_pad: int | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    snapshot_every: int = 50,
    init_images: torch.Tensor | None = None,
    objective: Objective | None = None,
    max_batch: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ActmaxResult:
    """Optimise one image per element of `specs` to maximise its objective on `layer` of the frozen `model`.

    `objective` defaults to `build_objective(layer, specs, topk=topk)`; any Objective over (layer, LOGITS)
    works. `max_batch` splits very large batches into chunks that run one after another (same results).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ActmaxError(f"parameterization {parameterization!r} is not one of {', '.join(PARAMETERIZATIONS)}")
    if steps < 1 or lr <= 0:
        raise ActmaxError(f"steps must be >= 1 and lr > 0 (got steps={steps}, lr={lr})")
    try:
        get_module(model, layer)
    except HookError as err:  # its message lists valid layers
        raise ActmaxError(str(err)) from None
    if objective is not None and max_batch and max_batch < len(specs):
        raise ActmaxError("a custom objective cannot be split into chunks; leave max_batch unset")
    groups = [torch.arange(len(specs))]
    if objective is None:  # elements that need logits run apart, so the others stop the forward pass at `layer`
        needs_logits = specs.objective == OBJECTIVES.index("class_conditional")
        groups = [
            index for index in (torch.nonzero(~needs_logits)[:, 0], torch.nonzero(needs_logits)[:, 0]) if len(index)
        ]
    chunk = int(max_batch) if max_batch else len(specs)
    began = time.perf_counter()
    parts = []
    for group in groups:
        for index in torch.split(group, chunk):
            part_specs = specs if len(index) == len(specs) else specs.select(index)
            parts.append(
                (
                    index,
                    _optimize_chunk(
                        model,
                        layer,
                        part_specs,
                        image_shape=tuple(image_shape),
                        steps=steps,
                        lr=lr,
                        topk=topk,
                        l2_center=l2_center,
                        parameterization=parameterization,
                        transforms=transforms,
                        transform_pad=transform_pad,
                        input_mean=input_mean,
                        input_std=input_std,
                        snapshot_every=snapshot_every,
                        init_images=None if init_images is None else init_images[index],
                        objective=objective,
                        device=torch.device(device),
                        progress=progress,
                    ),
                )
            )
    result = parts[0][1] if len(parts) == 1 else _assemble(parts, specs)
    result.seconds = time.perf_counter() - began
    return result


def _assemble(parts: list[tuple[torch.Tensor, ActmaxResult]], specs: UnitSpecs) -> ActmaxResult:
    """Put chunk results back in the order of `specs`."""
    first = parts[0][1]
    n = len(specs)
    images = torch.empty((n, *first.images.shape[1:]), dtype=first.images.dtype)
    objective_curve = np.empty((first.objective_curve.shape[0], n), dtype=np.float32)
    loss_curve = np.empty_like(objective_curve)
    snapshots = np.empty((first.snapshots.shape[0], n, *first.snapshots.shape[2:]), dtype=np.uint8)
    finals = {name: np.empty(n, dtype=np.float32) for name in ("final_objective", "final_unit", "final_logit")}
    for index, part in parts:
        rows = index.numpy()
        images[index] = part.images
        objective_curve[:, rows] = part.objective_curve
        loss_curve[:, rows] = part.loss_curve
        snapshots[:, rows] = part.snapshots
        for name, values in finals.items():
            values[rows] = getattr(part, name)
    return ActmaxResult(
        specs=specs,
        layer=first.layer,
        images=images,
        objective_curve=objective_curve,
        loss_curve=loss_curve,
        snapshots=snapshots,
        snapshot_steps=first.snapshot_steps,
        **finals,
    )


def _grad_state(model: nn.Module) -> list:
    """Each parameter's .grad as (absent, version): any gradient written during the run changes it."""
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in model.parameters()]


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _optimize_chunk(
    model,
    layer,
    specs: UnitSpecs,
    *,
    image_shape,
    steps,
    lr,
    topk,
    l2_center,
    parameterization,
    transforms,
    transform_pad,
    input_mean,
    input_std,
    snapshot_every,
    init_images,
    objective,
    device,
    progress,
) -> ActmaxResult:
    grads_before = _grad_state(model)
    objective = objective if objective is not None else build_objective(layer, specs, topk=topk)
    unit_only = build_objective(layer, specs, topk=topk, include_logits=False)
    needs_logits = LOGITS in objective.needs
    start = initial_images(specs, image_shape, init_images).to(device)
    height, width = image_shape[1:]
    if parameterization == "pixel":
        parameter = start.clone().requires_grad_(True)

        def render():
            return parameter

    else:
        parameter = torch.view_as_real(fft_image_to_spectrum(start)).contiguous().requires_grad_(True)

        def render():
            return spectrum_to_image(torch.view_as_complex(parameter), height, width)

    mean = (
        None if input_mean is None else torch.tensor(input_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    )
    std = None if input_std is None else torch.tensor(input_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def model_input(images):
        # channels-last: oneDNN's convolutions (forward and input-gradient) run ~30% faster on CPU in that layout
        images = images if mean is None else (images - mean) / std
        return images.contiguous(memory_format=torch.channels_last)

    l2_weight, tv_weight = specs.l2.to(device), specs.tv.to(device)
    pad = transform_pad if transform_pad is not None else max(2, min(height, width) // 18)
    optimizer = torch.optim.Adam([parameter], lr=lr)
    objective_curve = np.zeros((steps, len(specs)), dtype=np.float32)
    loss_curve = np.zeros((steps, len(specs)), dtype=np.float32)
    snapshots, snapshot_steps = [_to_uint8(start)], [0]
    capture = _Capture(layer, stop=not needs_logits)
    with frozen(model), hooked(model, {layer: capture}), torch.enable_grad():
        for step in tqdm(range(steps), desc=f"actmax {layer} ({len(specs)} runs)", disable=not progress, mininterval=5):
            images = render()
            inputs = images
            if transforms:
                generator = torch.Generator().manual_seed(1_000_003 * (step + 1))
                inputs = _random_transform(images, generator, pad)
            values = objective(_evaluate(model, capture, model_input(inputs)))
            loss = -values + l2_weight * l2_penalty(images, l2_center) + tv_weight * tv_penalty(images)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            if parameterization == "pixel":
                with torch.no_grad():
                    parameter.clamp_(0.0, 1.0)
            objective_curve[step] = values.detach().cpu().numpy()
            loss_curve[step] = loss.detach().cpu().numpy()
            if snapshot_every and (step + 1) % snapshot_every == 0:
                with torch.no_grad():
                    snapshots.append(_to_uint8(render()))
                snapshot_steps.append(step + 1)
        with torch.no_grad():
            final_images = render().detach()
            capture.stop = False
            captured = _evaluate(model, capture, model_input(final_images))
            final_objective = objective(captured).cpu().numpy()
            final_unit = unit_only(captured).cpu().numpy()
            has_target = specs.target_class >= 0
            final_logit = np.full(len(specs), np.nan, dtype=np.float32)
            if bool(has_target.any()):
                logits = logit(specs.target_class)(captured).cpu().numpy()
                final_logit[has_target.numpy()] = logits[has_target.numpy()]
    if snapshot_steps[-1] != steps:
        snapshots.append(_to_uint8(final_images))
        snapshot_steps.append(steps)
    if _grad_state(model) != grads_before:
        raise ActmaxError("a model parameter received a gradient during activation maximisation")
    return ActmaxResult(
        specs=specs,
        layer=layer,
        images=final_images.cpu(),
        objective_curve=objective_curve,
        loss_curve=loss_curve,
        snapshots=np.stack(snapshots),
        snapshot_steps=snapshot_steps,
        final_objective=final_objective.astype(np.float32),
        final_unit=final_unit.astype(np.float32),
        final_logit=final_logit,
    )


def unit_activation(
    model: nn.Module,
    layer: str,
    specs: UnitSpecs,
    images: torch.Tensor,
    *,
    topk: int = 5,
    input_mean=None,
    input_std=None,
) -> np.ndarray:
    """Each element's objective (without logit term) on given images [B, C, H, W], no optimisation."""
    objective = build_objective(layer, specs, topk=topk, include_logits=False)
    capture = _Capture(layer, stop=True)
    if input_mean is not None:
        mean = torch.tensor(input_mean, dtype=torch.float32).view(1, -1, 1, 1)
        images = (images - mean) / torch.tensor(input_std, dtype=torch.float32).view(1, -1, 1, 1)
    with frozen(model), hooked(model, {layer: capture}), torch.no_grad():
        return objective(_evaluate(model, capture, images)).cpu().numpy()
