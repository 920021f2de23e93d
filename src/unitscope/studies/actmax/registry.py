"""Activation maximisation on a registry model (`unitscope.models.registry.build_model`), channel level: which
channels (listed, or the faces study's first selected ones) and how they are optimised.

Large inputs (224-px ImageNet models) use the FFT / decorrelated-colour parameterisation with random transforms
(lucent's approach), since plain pixels give high-frequency noise there; small inputs use plain pixels. Works on
any CNN: input size and channels come from the model's preprocessing (non-square, grayscale), the layer is any
module path. Kept apart from the Colored-MNIST modules so that their stages do not depend on the model
registry's or the faces study's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from unitscope.hooks import ActivationRecorder
from unitscope.studies.actmax.render import ActmaxResult, optimize_inputs
from unitscope.studies.actmax.specs import ActmaxError, UnitSpecs
from unitscope.studies.faces.selection import selected_channels

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import RegistryTarget

__all__ = [
    "channel_rows",
    "check_layers",
    "chosen_parameterization",
    "input_shape",
    "optimize_channels",
    "optimize_registry_target",
    "target_channels",
]


def target_channels(target: RegistryTarget, faces_selection=None) -> list[int]:
    """The target's `channels`, then the first `from_faces` channels of the faces study's selection table (in the
    order of its rule, `face_rule`), without repeats."""
    channels = [int(c) for c in target.channels]
    wanted = int(target.from_faces)
    if wanted:
        if faces_selection is None:
            raise ValueError(
                f"actmax registry target {target.model} {target.layer}: from_faces needs the faces selection table"
            )
        rule = target.face_rule or "top_percentile"
        picked = selected_channels(pd.read_parquet(faces_selection), rule)[:wanted]
        if len(picked) < wanted:
            print(f"the faces study selected only {len(picked)} channels; visualising those", flush=True)
        channels += [int(c) for c in picked]
    return list(dict.fromkeys(channels))


def optimize_registry_target(
    model, model_name: str, spec: Mapping, target: RegistryTarget, channels: Sequence[int], *, device="cpu"
):
    """Optimise the target's channels (objectives x seeds, grey start) on the built `model`, already on `device`,
    any CNN: images of its input shape (`input_size`, `input_channels` of its preprocessing), normalised by its mean
    and std; FFT with transforms when both sides are 64 px or more, unless the target sets its parameterisation.
    The target layer may be any module path; the forward pass stops there. Returns the result and the table's
    extra columns (model, parameterization, unit_layer)."""
    preprocessing = spec["preprocessing"]
    unit_layer = target.unit_layer or target.layer
    check_layers(model, model_name, target.layer, unit_layer, input_shape(preprocessing))
    rows = channel_rows(channels, target.objectives, int(target.seeds), l2=target.l2, tv=target.tv)
    result, parameterization = optimize_channels(
        model,
        target.layer,
        preprocessing,
        rows,
        steps=target.steps,
        lr=target.lr,
        parameterization=target.parameterization,
        device=device,
    )
    return result, {"model": model_name, "parameterization": parameterization, "unit_layer": unit_layer}


def input_shape(preprocessing: Mapping) -> tuple[int, int, int]:
    """(channels, height, width) of the model's input, from its preprocessing."""
    from unitscope.models.preprocessing import input_channels, input_size  # torchvision: only the stages

    return (input_channels(preprocessing), *input_size(preprocessing))


def chosen_parameterization(parameterization: str, shape: Sequence[int]) -> str:
    """`auto`: the FFT parameterisation (with transforms) when both sides are 64 px or more, plain pixels below;
    `pixel` or `fft` as given."""
    if parameterization == "auto":
        return "fft" if min(shape[1:]) >= 64 else "pixel"
    return parameterization


def channel_rows(channels: Sequence[int], objectives: Sequence[str], seeds: int, *, l2: float, tv: float) -> list[dict]:
    """One run per channel x objective x seed (in that nesting, seeds innermost), each from the grey start."""
    return [
        {"channel": int(c), "objective": o, "seed": s, "init": "gray_noise", "l2": l2, "tv": tv}
        for c in channels
        for o in objectives
        for s in range(int(seeds))
    ]


def optimize_channels(
    model, layer: str, preprocessing: Mapping, rows: Sequence[Mapping], *, steps, lr, parameterization: str, **run
) -> tuple[ActmaxResult, str]:
    """Optimise `rows` (`channel_rows`) on `layer` of a registry model in one batch (`render.optimize_inputs`):
    images of the model's input shape in [0, 1], normalised by its preprocessing's mean and std on the way in, pulled
    towards 0.5 grey by each row's L2 weight; `run` passes device, max_batch, progress, snapshot_every (none of
    them changes the images). Returns the result and the parameterisation used."""
    shape = input_shape(preprocessing)
    parameterization = chosen_parameterization(parameterization, shape)
    result = optimize_inputs(
        model,
        layer,
        UnitSpecs.from_rows(rows),
        image_shape=shape,
        steps=int(steps),
        lr=float(lr),
        l2_center=0.5,
        parameterization=parameterization,
        transforms=parameterization == "fft",
        input_mean=preprocessing["mean"],
        input_std=preprocessing["std"],
        **run,
    )
    return result, parameterization


def check_layers(
    model: torch.nn.Module, model_name: str, layer: str, unit_layer: str, shape, *, what: str = "actmax registry target"
) -> None:
    """Both layers exist (else the registry's one-line error with the nearest name) and, when they differ, have
    the same channels (one forward pass on a blank image on the model's device, stopped once both have run);
    `what` names the setting in the error."""
    from unitscope.models.registry import resolve_layer  # torchvision: only this stage

    for name in dict.fromkeys((layer, unit_layer)):
        resolve_layer(model, name, model_name)
    if unit_layer == layer:
        return
    device = next(model.parameters(), torch.empty(0)).device
    with ActivationRecorder(model, [layer, unit_layer], stop_early=True) as recorder, torch.inference_mode():
        means = recorder(torch.zeros(1, *shape, device=device))
    if means[layer].shape[1] != means[unit_layer].shape[1]:
        raise ActmaxError(
            f"{what} layer {layer!r} has {means[layer].shape[1]} channels, but the units it stands "
            f"for ({unit_layer!r}) have {means[unit_layer].shape[1]}"
        )
