"""Activation maximisation of registry targets on any CNN (issue 13): torchvision and timm models and a user's
1-channel, non-square module, with the FFT parameterisation and with plain pixels.

Every model has random weights (seeded: `anymodels.get_model`) and small inputs (32-56 px, odd and non-square
sizes among them), and is frozen as the registry freezes it (eval mode, `requires_grad_(False)`). Target layers
sit where real targets do: inside a residual block before its addition, a DenseNet concatenation, a ConvNeXt
stage's block, a GoogLeNet branch, a timm model's stage.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anymodels import get_model
from PIL import Image
from torch import nn

from unitscope.studies.actmax.param import fft_image_to_spectrum, initial_images, spectrum_to_image
from unitscope.studies.actmax.plan import RegistryTarget
from unitscope.studies.actmax.registry import optimize_registry_target
from unitscope.studies.actmax.render import unit_activation
from unitscope.studies.actmax.transforms import _rotation_scale, random_transform, step_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# model key (`get_model`): (target layer, channels, head module that must not run, crop, mean/std)
ARCHS = {
    "resnet50": ("layer2.0.bn3", [0, 300], "fc", [33, 47], IMAGENET),
    "densenet121": ("features.denseblock2", [0, 500], "classifier", 32, IMAGENET),
    "convnext_tiny": ("features.3.1", [0, 5], "classifier", [48, 40], IMAGENET),
    # inside a branch, before BasicConv2d's functional in-place ReLU
    "googlenet": ("inception3a.branch3.1.bn", [0, 7], "fc", [36, 45], IMAGENET),
    "timm_mobilenetv3_small_050": ("blocks.2", [0, 3], "classifier", 48, IMAGENET),
    "tiny_gray": ("conv2", [0, 5], "fc", [40, 56], {"mean": [0.5], "std": [0.25]}),
}


def _spec(name: str) -> dict:
    crop, norm = ARCHS[name][3], ARCHS[name][4]
    return {"preprocessing": {"resize": crop, "crop": crop, **norm}}


def _target(layer: str, parameterization: str, *, steps: int = 12, **extra) -> RegistryTarget:
    entry = {
        "model": "m",
        "layer": layer,
        "channels": [],
        "from_faces": 0,
        "objectives": ["channel"],
        "seeds": 1,
        "steps": steps,
        "lr": 0.05,
        "parameterization": parameterization,
        "l2": 0.0,
        "tv": 0.0,
    }
    return RegistryTarget.from_entry(entry, **extra)


@pytest.mark.parametrize("parameterization", ["fft", "pixel"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_registry_target_climbs_on_any_cnn_and_stops_at_its_layer(name, parameterization):
    layer, channels, head, _, norm = ARCHS[name]
    model, spec = get_model(name), _spec(name)
    from unitscope.models.preprocessing import input_channels, input_size

    shape = (input_channels(spec["preprocessing"]), *input_size(spec["preprocessing"]))
    head_calls = []
    handle = dict(model.named_modules())[head].register_forward_hook(lambda *_: head_calls.append(1))
    try:
        result, extra = optimize_registry_target(model, name, spec, _target(layer, parameterization), channels)
    finally:
        handle.remove()
    assert head_calls == [], "the forward pass ran past the target layer into the head"
    assert extra == {"model": name, "parameterization": parameterization, "unit_layer": layer}
    assert tuple(result.images.shape) == (len(channels), *shape)
    assert torch.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1
    start = initial_images(result.specs, shape)
    before = unit_activation(model, layer, result.specs, start, input_mean=norm["mean"], input_std=norm["std"])
    assert np.isfinite(result.final_unit).all()
    assert (result.final_unit > before).all(), f"{name} {layer} {parameterization}: {before} -> {result.final_unit}"
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_a_wrong_layer_is_the_registrys_one_line_error_with_the_nearest_name():
    from unitscope.models.errors import ModelError

    with pytest.raises(ModelError) as err:
        target = _target("layer2.0.bn4", "fft")
        optimize_registry_target(get_model("resnet50"), "resnet50", _spec("resnet50"), target, [0])
    message = str(err.value)
    assert "resnet50 has no layer 'layer2.0.bn4'" in message and "'layer2.0.bn3'" in message and "\n" not in message
    with pytest.raises(ModelError, match="tiny_gray has no layer 'conv2.0'"):
        target = _target("conv2", "pixel", unit_layer="conv2.0")
        optimize_registry_target(get_model("tiny_gray"), "tiny_gray", _spec("tiny_gray"), target, [0])


def test_unit_layer_channels_are_checked_on_a_grayscale_non_square_input():
    target = _target("conv2", "pixel", steps=1, unit_layer="conv1")
    with pytest.raises(ValueError, match=r"'conv2' has 16 channels, but the units it stands for \('conv1'\) have 8"):
        optimize_registry_target(get_model("tiny_gray"), "tiny_gray", _spec("tiny_gray"), target, [0])


@pytest.mark.parametrize("shape", [(1, 33, 47), (3, 33, 47), (1, 40, 56), (3, 28, 28)])
def test_fft_parameterisation_round_trips_any_channels_and_size(shape):
    images = 0.05 + 0.9 * torch.rand(2, *shape, generator=torch.Generator().manual_seed(4))
    spectrum = fft_image_to_spectrum(images)
    assert spectrum.shape == (2, shape[0], shape[1], shape[2] // 2 + 1)
    assert torch.allclose(spectrum_to_image(spectrum, *shape[1:]), images, atol=1e-4)


def test_random_transforms_keep_a_grayscale_non_square_shape_and_rotate_in_pixels():
    images = torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(1))
    out = random_transform(images, step_generator(0), pad=3)
    assert out.shape == images.shape and torch.isfinite(out).all()
    height, width, angle = 20, 60, 0.3
    grid = nn.functional.affine_grid(_rotation_scale(angle, 1.0, height, width)[None], [1, 1, height, width], False)
    source = (grid[0] + 1) * torch.tensor([width, height]) / 2  # sampled pixel positions (x, y)
    target = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1) + 0.5
    for a, b in (((0, 0), (height - 1, width - 1)), ((0, width - 1), (height - 1, 0)), ((3, 7), (15, 50))):
        # distances between output pixels are kept, so the turn is a rotation in pixels, not a skew
        assert torch.isclose((source[a] - source[b]).norm(), (target[a] - target[b]).norm(), rtol=1e-4)


def test_grayscale_non_square_runs_give_grayscale_grids(tmp_path):
    from unitscope.studies.actmax.grids import save_unit_grids
    from unitscope.studies.actmax.runs import save_run
    from unitscope.studies.actmax.section import registry_outputs

    target = _target("conv2", "fft", steps=2)
    result, extra = optimize_registry_target(get_model("tiny_gray"), "tiny_gray", _spec("tiny_gray"), target, [0, 5])
    table = save_run(result, tmp_path / "conv2.npz", tmp_path / "conv2.parquet", extra=extra)
    assert save_unit_grids(table, result.snapshots, result.snapshot_steps, tmp_path / "grids") == 2
    registry = registry_outputs([("tiny_gray", "conv2", tmp_path / "conv2.npz", tmp_path / "conv2.parquet")], tmp_path)
    assert [(u["layer"], u["channel"]) for u in registry.units] == [("conv2", 0), ("conv2", 5)]
    with Image.open(tmp_path / "tiny_gray__conv2__5.png") as grid:
        pixels = np.asarray(grid.convert("RGB"))
    assert grid.size == (56 + 2, 12 + 40 + 2)  # one objective x one seed, scale 1, 2-px gaps, label row
    tile = pixels[12 : 12 + 40, :56]
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all() and tile.std() > 0
