"""Activation maximisation, batched over units: synthesise inputs that excite chosen units of a frozen model
(the optimisation loop; lucent's `render`).

Every batch element is one optimisation run (one unit, objective, seed, initialisation and regulariser
setting, see `specs.UnitSpecs`) with its own image; all of them step together. The objective of the whole
batch is one vectorised gather of each element's unit from the hooked layer's output (`objectives`), so there
is no Python loop over units in the step, and because Adam, the clamp and the penalties act element by element,
a batched run gives the same images as running each element alone (tested).

Images live in [0, 1] (`param`: plain pixels or lucent's FFT / decorrelated colour); `input_mean`/`input_std`
normalise them on the way into the model (registry models). With `transforms` each step sees the images
padded, jittered, scaled and rotated (`transforms`).

The model is frozen for the run (eval mode, requires_grad off, both restored afterwards): no gradient reaches
a weight and no buffer changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from unitscope.hooks import HookError, StopForward, get_module, hooked
from unitscope.runtime import inference_copy
from unitscope.studies.actmax.activations import frozen
from unitscope.studies.actmax.objectives import LOGITS, Objective, build_objective, l2_penalty, logit, tv_penalty
from unitscope.studies.actmax.param import PARAMETERIZATIONS, ImageParam, image_param, initial_images
from unitscope.studies.actmax.specs import OBJECTIVES, ActmaxError, UnitSpecs
from unitscope.studies.actmax.transforms import default_pad, random_transform, step_generator

__all__ = ["ActmaxResult", "RenderSettings", "optimize_inputs", "unit_activation"]


@dataclass(frozen=True)
class RenderSettings:
    """How the images are optimised (every argument of `optimize_inputs` that is not the model, the units or
    the objective)."""

    image_shape: tuple[int, int, int] = (3, 28, 28)
    steps: int = 500
    lr: float = 0.05
    topk: int = 5
    l2_center: float = 0.0
    parameterization: str = "pixel"
    transforms: bool = False
    transform_pad: int | None = None
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    snapshot_every: int = 50
    device: torch.device = torch.device("cpu")
    progress: bool = True
    fold_batchnorm: bool = True


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


# ----------------------------------------------------------------------------------------------
# capturing the layer


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


# ----------------------------------------------------------------------------------------------
# the optimisation


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
    fold_batchnorm: bool = True,
) -> ActmaxResult:
    """Optimise one image per element of `specs` to maximise its objective on `layer` of the frozen `model`.

    `objective` defaults to `build_objective(layer, specs, topk=topk)`; any Objective over (layer, LOGITS)
    works. `max_batch` splits very large batches into chunks that run one after another (same results).
    `fold_batchnorm`: the steps run on a copy of the model with each BatchNorm folded into the convolution before it
    (`runtime.inference_copy`: the same function to float rounding, a step 1.2-1.5x faster on MobileNetV2 at 224 px);
    the final values always come from `model` itself.
    """
    settings = RenderSettings(
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
        device=torch.device(device),
        progress=progress,
        fold_batchnorm=fold_batchnorm,
    )
    _check_request(model, layer, specs, settings, custom_objective=objective is not None, max_batch=max_batch)
    chunk = int(max_batch) if max_batch else len(specs)
    began = time.perf_counter()
    parts = []
    for group in _groups(specs, custom_objective=objective is not None):
        for index in torch.split(group, chunk):
            part_specs = specs if len(index) == len(specs) else specs.select(index)
            part_init = None if init_images is None else init_images[index]
            parts.append((index, _optimize_chunk(model, layer, part_specs, settings, part_init, objective)))
    result = parts[0][1] if len(parts) == 1 else _assemble(parts, specs)
    result.seconds = time.perf_counter() - began
    return result


def _check_request(model, layer: str, specs: UnitSpecs, settings: RenderSettings, *, custom_objective, max_batch):
    if settings.parameterization not in PARAMETERIZATIONS:
        raise ActmaxError(
            f"parameterization {settings.parameterization!r} is not one of {', '.join(PARAMETERIZATIONS)}"
        )
    if settings.steps < 1 or settings.lr <= 0:
        raise ActmaxError(f"steps must be >= 1 and lr > 0 (got steps={settings.steps}, lr={settings.lr})")
    channels = settings.image_shape[0]
    for name in ("input_mean", "input_std"):
        values = getattr(settings, name)
        if values is not None and len(values) != channels:
            raise ActmaxError(f"{name} has {len(values)} values; expected one per image channel ({channels})")
    try:
        get_module(model, layer)
    except HookError as err:  # its message lists valid layers
        raise ActmaxError(str(err)) from None
    if custom_objective and max_batch and max_batch < len(specs):
        raise ActmaxError("a custom objective cannot be split into chunks; leave max_batch unset")


def _groups(specs: UnitSpecs, *, custom_objective: bool) -> list[torch.Tensor]:
    """Element indices that run together: with the study objectives, the elements that need logits run apart,
    so the others stop the forward pass at the layer."""
    if custom_objective:
        return [torch.arange(len(specs))]
    needs_logits = specs.objective == OBJECTIVES.index("class_conditional")
    return [index for index in (torch.nonzero(~needs_logits)[:, 0], torch.nonzero(needs_logits)[:, 0]) if len(index)]


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


def _model_input(settings: RenderSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [0, 1] -> the model's input: normalised with input_mean/input_std when given, channels-last
    (oneDNN's convolutions, forward and input-gradient, run ~30% faster on CPU in that layout)."""
    device = settings.device
    mean, std = (
        None if values is None else torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        for values in (settings.input_mean, settings.input_std)
    )

    def model_input(images):
        images = images if mean is None else (images - mean) / std
        return images.contiguous(memory_format=torch.channels_last)

    return model_input


@dataclass
class _Trace:
    """What the steps record: objective and loss per step [steps, B], snapshots (uint8) and their steps."""

    objective_curve: np.ndarray
    loss_curve: np.ndarray
    snapshots: list[np.ndarray]
    snapshot_steps: list[int]


def _optimize_chunk(
    model, layer, specs: UnitSpecs, settings: RenderSettings, init_images, objective: Objective | None
) -> ActmaxResult:
    grads_before = _grad_state(model)
    objective = objective if objective is not None else build_objective(layer, specs, topk=settings.topk)
    start = initial_images(specs, settings.image_shape, init_images).to(settings.device)
    param = image_param(start, settings.parameterization)
    model_input = _model_input(settings)
    capture = _Capture(layer, stop=LOGITS not in objective.needs)
    with frozen(model):
        climber = inference_copy(model, keep={layer}) if settings.fold_batchnorm else model
        with hooked(climber, {layer: capture}), torch.enable_grad():
            trace = _climb(
                climber, capture, objective, param, specs, settings, model_input, first_snapshot=_to_uint8(start)
            )
        with torch.no_grad():
            final_images = param.image().detach()
        with hooked(model, {layer: capture}):
            finals = _final_values(model, capture, objective, specs, model_input(final_images), settings.topk)
    if trace.snapshot_steps[-1] != settings.steps:
        trace.snapshots.append(_to_uint8(final_images))
        trace.snapshot_steps.append(settings.steps)
    if _grad_state(model) != grads_before:
        raise ActmaxError("a model parameter received a gradient during activation maximisation")
    return ActmaxResult(
        specs=specs,
        layer=layer,
        images=final_images.cpu(),
        objective_curve=trace.objective_curve,
        loss_curve=trace.loss_curve,
        snapshots=np.stack(trace.snapshots),
        snapshot_steps=trace.snapshot_steps,
        **finals,
    )


def _climb(
    model, capture: _Capture, objective, param: ImageParam, specs: UnitSpecs, settings, model_input, first_snapshot
) -> _Trace:
    """The Adam steps on the parameter: objective minus the weighted penalties, each element on its own."""
    steps, device = settings.steps, settings.device
    height, width = settings.image_shape[1:]
    pad = settings.transform_pad if settings.transform_pad is not None else default_pad(height, width)
    l2_weight, tv_weight = specs.l2.to(device), specs.tv.to(device)
    optimizer = torch.optim.Adam([param.parameter], lr=settings.lr)
    trace = _Trace(
        np.zeros((steps, len(specs)), dtype=np.float32), np.zeros((steps, len(specs)), dtype=np.float32), [], []
    )
    trace.snapshots.append(first_snapshot)
    trace.snapshot_steps.append(0)
    label = f"actmax {capture.layer} ({len(specs)} runs)"
    for step in tqdm(range(steps), desc=label, disable=not settings.progress, mininterval=5):
        images = param.image()
        inputs = random_transform(images, step_generator(step), pad) if settings.transforms else images
        values = objective(_evaluate(model, capture, model_input(inputs)))
        loss = -values + l2_weight * l2_penalty(images, settings.l2_center) + tv_weight * tv_penalty(images)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        param.after_step()
        trace.objective_curve[step] = values.detach().cpu().numpy()
        trace.loss_curve[step] = loss.detach().cpu().numpy()
        if settings.snapshot_every and (step + 1) % settings.snapshot_every == 0:
            with torch.no_grad():
                trace.snapshots.append(_to_uint8(param.image()))
            trace.snapshot_steps.append(step + 1)
    return trace


@torch.no_grad()
def _final_values(model, capture: _Capture, objective, specs: UnitSpecs, inputs: torch.Tensor, topk: int) -> dict:
    """The final objective, the unit alone (D without its logit term) and the target logit (nan without one).
    The pass runs past the layer only when logits are needed."""
    has_target = specs.target_class >= 0
    capture.stop = LOGITS not in objective.needs and not bool(has_target.any())
    captured = _evaluate(model, capture, inputs)
    final_objective = objective(captured).cpu().numpy()
    final_unit = build_objective(capture.layer, specs, topk=topk, include_logits=False)(captured).cpu().numpy()
    final_logit = np.full(len(specs), np.nan, dtype=np.float32)
    if bool(has_target.any()):
        logits = logit(specs.target_class)(captured).cpu().numpy()
        final_logit[has_target.numpy()] = logits[has_target.numpy()]
    return {
        "final_objective": final_objective.astype(np.float32),
        "final_unit": final_unit.astype(np.float32),
        "final_logit": final_logit,
    }


def unit_activation(
    model: nn.Module,
    layer: str,
    specs: UnitSpecs,
    images: torch.Tensor,
    *,
    topk: int = 5,
    input_mean=None,
    input_std=None,
    max_batch: int | None = None,
) -> np.ndarray:
    """Each element's objective (without logit term) on given images [B, C, H, W] in [0, 1], no optimisation: one
    plain forward pass on the model's device (normalised by input_mean/input_std when given), in chunks of at most
    `max_batch` images (the values do not depend on it)."""
    device = next(model.parameters(), torch.empty(0)).device
    capture = _Capture(layer, stop=True)
    chunk = int(max_batch) if max_batch else max(1, len(specs))
    values = []
    with frozen(model), hooked(model, {layer: capture}), torch.no_grad():
        for index in torch.split(torch.arange(len(specs)), chunk):
            part = specs if len(index) == len(specs) else specs.select(index)
            objective = build_objective(layer, part, topk=topk, include_logits=False)
            inputs = images[index].to(device)
            if input_mean is not None:
                mean = torch.tensor(input_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                inputs = (inputs - mean) / torch.tensor(input_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            values.append(objective(_evaluate(model, capture, inputs)).cpu().numpy())
    return np.concatenate(values)
