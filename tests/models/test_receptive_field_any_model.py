"""Receptive fields of any graph from gradient supports (`gradient_receptive_field`): equal to the exact arithmetic
on the chain networks, equal to a brute-force measurement on branching and concatenating architectures, and the
whole input where a globally pooled value is multiplied back (squeeze-and-excitation).

Every model has random weights (torchvision `weights=None`, seeded with `torch.manual_seed(0)`), in eval mode with
`requires_grad_(False)`, as the registry builds them (`anymodels.get_model`).
"""

import copy
import functools

import pytest
import torch
from anymodels import get_model
from torch import nn

from unitscope.hooks import StopForward, hooked
from unitscope.models.cifar_resnet import cifar_resnet20
from unitscope.models.receptive_field import (
    ReceptiveField,
    ReceptiveFieldError,
    gradient_receptive_field,
    layer_receptive_field,
    probe_window,
    receptive_field,
    window_origin,
)
from unitscope.studies.actmax.colored_mnist import ColoredMnistCNN


def build(name: str) -> nn.Module:
    """The chain networks of this package, or `get_model`'s (each seeded with 0, eval mode, frozen)."""
    makers = {"resnet20": cifar_resnet20, "colored_mnist": ColoredMnistCNN}
    if name not in makers:
        return get_model(name)
    torch.manual_seed(0)
    return makers[name]().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models(one_torch_thread):
    return functools.cache(build)


def layer_output(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    captured = {}

    def grab(_module, _inputs, output):
        captured["out"] = output
        raise StopForward

    with torch.no_grad(), hooked(model, {layer: grab}):
        try:
            model(images)
        except StopForward:
            pass
    return captured["out"]


def brute_force_boxes(model, layer, size, channels, units=None):
    """Per unit (default: a corner, the centre and one more), the input rows and columns whose change changes it,
    as (top, left, bottom, right): each row and each column of a random image is pushed up by 50, all in one
    float64 batch of the real model (its ReLUs and max pools included), and the unit's channels compared."""
    double = copy.deepcopy(model).double()
    height, width = size
    base = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = base.repeat(1 + height + width, 1, 1, 1)
    rows, cols = torch.arange(height), torch.arange(width)
    batch[1 + rows, :, rows, :] += 50.0
    batch[1 + height + cols, :, :, cols] += 50.0
    out = layer_output(double, layer, batch)
    map_h, map_w = out.shape[-2:]
    units = units or [(0, 0), (map_h // 2, map_w // 2), (map_h - 1, map_w // 3)]
    boxes = []
    for y, x in units:
        values = out[:, :, y, x]
        changed = (values[1:] - values[0]).abs().amax(dim=1) > 1e-9 * (1 + values[0].abs().max())
        hit_rows, hit_cols = changed[:height].nonzero().flatten(), changed[height:].nonzero().flatten()
        boxes.append((int(hit_rows.min()), int(hit_cols.min()), int(hit_rows.max()) + 1, int(hit_cols.max()) + 1))
    return units, boxes


def clipped(box, size):
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size[0]), min(right, size[1])


@pytest.mark.parametrize(
    ("name", "layers", "size"),
    [
        ("resnet20", ["layer1", "layer2.0.shortcut", "layer3"], (32, 32)),  # layer3's 81 px field: input grown
        ("mobilenet_v2", ["features.1", "features.4"], (64, 64)),
        ("resnet18", ["maxpool", "layer2"], (64, 64)),
        ("colored_mnist", ["pool1", "conv3"], (28, 28)),
    ],
)
def test_gradient_supports_equal_the_arithmetic_on_chain_networks(models, name, layers, size):
    model = models(name)
    for layer in layers:
        assert gradient_receptive_field(model, layer, size) == receptive_field(model, layer), layer
        assert layer_receptive_field(model, layer, size) == receptive_field(model, layer)  # the fast path


@pytest.mark.parametrize(
    ("name", "layer", "size", "channels"),
    [
        ("densenet121", "features.denseblock1.denselayer3", (40, 40), 3),  # concatenation, functional relu
        ("googlenet", "inception3a", (40, 40), 3),  # four branches concatenated, ceil-mode max pools
        ("resnet50", "layer1.1", (40, 40), 3),
        ("convnext_tiny", "features.1.0", (40, 40), 3),  # permutes, LayerNorm, Linear on channels-last
        ("tiny_gray", "relu2", (40, 56), 1),  # 1 channel, not square
    ],
)
def test_gradient_supports_equal_a_brute_force_measurement(models, name, layer, size, channels):
    model = models(name)
    field = gradient_receptive_field(model, layer, size, channels=channels)
    assert not any(field.whole)
    units, boxes = brute_force_boxes(model, layer, size, channels)
    assert [clipped(field.box(*unit), size) for unit in units] == boxes


def test_a_squeeze_and_excitation_field_is_the_whole_input(models, capsys):
    model = models("mobilenet_v3_small")
    with pytest.raises(ReceptiveFieldError, match="whole image"):
        receptive_field(model, "features.1")  # the arithmetic refuses: x * mean(x)
    field = layer_receptive_field(model, "features.1", (48, 64))
    assert "gradient supports" in capsys.readouterr().out  # the log says why and how it was measured
    assert field.whole == (True, True) and field.size == (48, 64) and field.offset == (0, 0)
    assert field.box(0, 0) == field.box(5, 7) == (0, 0, 48, 64)
    assert probe_window(field, (48, 64)) == (48, 64)
    assert window_origin(field, 5, 7, (48, 64), (48, 64)) == ((0, 0), (5, 7))
    assert ReceptiveField.from_dict(field.as_dict()) == field
    _, (corner,) = brute_force_boxes(model, "features.1", (48, 64), 3, units=[(0, 0)])
    assert corner[2] > 40 and corner[3] > 56  # the corner unit reacts to the far corner: no local field


def test_the_grayscale_module_global_pool_and_non_spatial_layers(models):
    model = models("tiny_gray")
    pooled = layer_receptive_field(model, "gap", (40, 56), channels=1)  # 1 x 1 map: sees everything
    assert pooled.whole == (True, True) and pooled.size == (40, 56)
    with pytest.raises(ReceptiveFieldError, match="no spatial map") as info:
        gradient_receptive_field(model, "fc", (40, 56), channels=1)
    assert "\n" not in str(info.value)
