import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from unitscope.hooks import ActivationRecorder, HookError, hooked, spatial_mean


def total_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def test_hooks_are_removed_after_normal_exit_and_after_an_error(resnet):
    x = torch.randn(2, 3, 64, 64)
    with ActivationRecorder(resnet, ["layer4", "layer1.0"]) as rec:
        assert total_hooks(resnet) == 3  # two layers + the per-forward reset
        rec(x)
    assert total_hooks(resnet) == 0
    with pytest.raises(RuntimeError, match="boom"), hooked(resnet, {"layer2": lambda m, i, o: None}):
        assert total_hooks(resnet) == 1
        raise RuntimeError("boom")
    assert total_hooks(resnet) == 0


def test_unknown_layer_lists_valid_names_and_registers_nothing(resnet):
    with pytest.raises(HookError) as info, ActivationRecorder(resnet, ["layer4", "layer9"]):
        pass
    assert "'layer9'" in str(info.value) and "layer4" in str(info.value) and "\n" not in str(info.value)
    assert total_hooks(resnet) == 0


def test_recorded_means_match_a_manual_forward(resnet):
    x = torch.randn(3, 3, 64, 64)
    with (
        torch.inference_mode(),
        ActivationRecorder(resnet, ["layer3"], keep_maps=True, maps_dtype=torch.float32) as rec,
    ):
        means = rec(x)["layer3"]
        maps = rec.maps["layer3"]
    with torch.inference_mode():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected = resnet.layer3(resnet.layer2(resnet.layer1(h)))
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(means, expected.mean(dim=(2, 3)))


def test_module_run_twice_per_forward_is_refused(resnet):
    # torchvision's BasicBlock calls self.relu twice (after bn1 and after the residual add).
    with ActivationRecorder(resnet, ["layer1.0.relu"]) as rec, pytest.raises(HookError, match="ran twice"):
        rec(torch.randn(1, 3, 64, 64))
    assert total_hooks(resnet) == 0


def test_inplace_activation_after_the_hooked_module_does_not_change_the_record():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    with (
        torch.inference_mode(),
        ActivationRecorder(model, ["1"], keep_maps=True, maps_dtype=torch.float32) as rec,
    ):
        rec(x)
    with torch.inference_mode():
        expected = model[1](model[0](x))
    assert (rec.maps["1"] < 0).any()  # pre-ReLU values survived the in-place ReLU
    torch.testing.assert_close(rec.maps["1"], expected)


def test_stop_early_skips_later_layers(resnet):
    calls = []
    with hooked(resnet, {"fc": lambda m, i, o: calls.append(1)}):
        with ActivationRecorder(resnet, ["layer2"], stop_early=True) as rec:
            rec(torch.randn(1, 3, 64, 64))
        assert calls == []
        with ActivationRecorder(resnet, ["layer2"]) as rec:
            rec(torch.randn(1, 3, 64, 64))
        assert calls == [1]


def test_intervention_hook_replaces_output(resnet):
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), hooked(resnet, {"layer4": lambda m, i, o: torch.zeros_like(o)}):
        out = resnet(x)
    torch.testing.assert_close(out, resnet.fc.bias.detach().expand_as(out))


def test_spatial_mean_shapes():
    assert spatial_mean(torch.ones(2, 5, 3, 3)).shape == (2, 5)
    assert spatial_mean(torch.ones(2, 5)).shape == (2, 5)
