"""Receptive fields: arithmetic from the module graph against a gradient measurement, and probe windows that
reproduce whole-image activations exactly."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from unitscope.hooks import ActivationRecorder
from unitscope.models.cifar_resnet import cifar_resnet20
from unitscope.models.receptive_field import (
    ReceptiveFieldError,
    empirical_receptive_field,
    probe_window,
    receptive_field,
    window_origin,
)


def clipped(box, size):
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size[0]), min(right, size[1])


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cifar_resnet20().eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2().eval()


class Dilated(nn.Module):
    """Dilated conv, average pooling, strided slicing and F.pad: every rule of the arithmetic at least once."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 4, 5, stride=1, padding=0)
        self.side = nn.Conv2d(3, 4, 1, stride=2)

    def forward(self, x):
        main = self.pool(torch.relu(self.conv(x)))
        side = F.pad(self.side(x)[:, :, ::1, ::1], (0, 0, 0, 0))
        return self.head(main + side)


@pytest.mark.parametrize(
    ("which", "layer", "units", "size"),
    [
        ("resnet20", "layer1", [(16, 16), (0, 0), (31, 5)], (32, 32)),
        ("resnet20", "layer2.0", [(8, 8), (0, 15)], (32, 32)),
        ("resnet20", "layer2.0.shortcut", [(7, 7)], (32, 32)),  # strided slice + channel pad (option-A shortcut)
        ("mobilenet", "features.3", [(8, 8), (0, 15)], (64, 64)),
        ("mobilenet", "features.4", [(4, 4), (7, 0)], (64, 64)),
        ("dilated", "head", [(3, 3), (0, 7)], (24, 24)),
    ],
)
def test_field_arithmetic_matches_the_gradient_measurement(resnet20, mobilenet, which, layer, units, size):
    model = {"resnet20": resnet20, "mobilenet": mobilenet, "dilated": Dilated().eval()}[which]
    field = receptive_field(model, layer)
    for unit in units:
        assert empirical_receptive_field(model, layer, unit, size) == clipped(field.box(*unit), size), unit


def test_known_fields_of_the_default_layers(mobilenet):
    field = receptive_field(mobilenet, "features.4")
    assert (field.size, field.stride, field.offset) == ((27, 27), (8, 8), (-13, -13))
    deep = receptive_field(cifar_resnet20(), "layer3")
    assert deep.stride == (4, 4) and deep.size[0] > 32  # every unit of layer3 sees the whole 32 px image


@pytest.mark.parametrize(
    ("which", "layer", "size"),
    [
        ("resnet20", "layer1", 32),
        ("resnet20", "layer2", 32),
        ("mobilenet", "features.3", 64),
        ("mobilenet", "features.4", 96),
    ],
)
def test_probe_windows_reproduce_whole_image_activations(resnet20, mobilenet, which, layer, size):
    model = {"resnet20": resnet20, "mobilenet": mobilenet}[which]
    field = receptive_field(model, layer)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with (
        torch.inference_mode(),
        ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        recorder(image)
        whole = recorder.maps[layer][0]
        window = probe_window(field, (size, size))
        if which == "mobilenet":
            assert window[0] < size  # a real saving, not the whole image
        height, width = whole.shape[-2:]
        units = [(y, x) for y in range(height) for x in range(width)][:: max(1, height * width // 40)]
        crops, positions = [], []
        for y, x in units:
            (top, left), position = window_origin(field, y, x, window, (size, size))
            crops.append(image[0, :, top : top + window[0], left : left + window[1]])
            positions.append(position)
        recorder(torch.stack(crops))
        probed = recorder.maps[layer]
    for i, ((y, x), (py, px)) in enumerate(zip(units, positions, strict=True)):
        torch.testing.assert_close(probed[i, :, py, px], whole[:, y, x], rtol=1e-4, atol=1e-5)


def test_unsupported_operations_are_one_line_errors():
    class Upsampling(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2.0))

    class SqueezeExcite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            y = self.conv(x)
            return y * y.mean((2, 3), keepdim=True)

    with pytest.raises(ReceptiveFieldError, match="interpolate") as info:
        receptive_field(Upsampling(), "conv")
    assert "\n" not in str(info.value)
    whole = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ReceptiveFieldError, match="no spatial map"):
        receptive_field(whole, "1")
    wrapped = nn.Sequential(SqueezeExcite(), nn.Conv2d(3, 3, 1))
    with pytest.raises(ReceptiveFieldError, match="whole image"):
        receptive_field(wrapped, "1")
