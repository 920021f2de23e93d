"""Where a stage runs: device choice and thread settings, with errors that name the config key."""

import numpy as np
import pytest
import torch
from torch import nn

from unitscope.models.cifar_resnet import cifar_resnet20
from unitscope.runtime import DeviceError, inference_copy, pick_device, use_threads


def test_device_errors_name_the_key():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match=r"config key extraction.device: 'banana' is not a device \(expected auto"):
        pick_device("banana")
    absent = torch.cuda.device_count()  # one past the last GPU, on any machine
    with pytest.raises(DeviceError, match=rf"config key faces.device: 'cuda:{absent}' was asked for, but torch sees"):
        pick_device(f"cuda:{absent}", key="faces.device")


def test_use_threads_gives_at_least_one():
    previous = torch.get_num_threads()
    try:
        use_threads(0)
        assert torch.get_num_threads() == 1
        use_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_loader_workers_come_out_of_the_jobs_threads():
    """A 2-thread job decodes in its own process (torch keeps both threads); an 8-thread job gets 2 workers and
    torch 6: never more processes busy than the job was given."""
    import torch

    from unitscope.runtime import loader_workers, use_threads

    before = torch.get_num_threads()
    try:
        use_threads(2)
        assert loader_workers(2) == 0 and torch.get_num_threads() == 2
        use_threads(8)
        assert loader_workers(4) == 2 and torch.get_num_threads() == 6
        use_threads(8)
        assert loader_workers(1) == 1 and torch.get_num_threads() == 7
    finally:
        torch.set_num_threads(before)


def test_every_study_stage_that_runs_a_network_refuses_an_absent_gpu_before_reading_anything(tmp_path):
    """The actmax and dissection stages take extraction.device as nefesi, the faces study and the atlas do: an absent
    GPU is the one-line error naming the key, raised before any input is read (the inputs here do not exist)."""
    from unitscope.studies.actmax.stages import run_optimize_layer, run_registry_target
    from unitscope.studies.dissection.stages import run_dissection, run_rotation

    absent = f"cuda:{torch.cuda.device_count()}"
    missing = str(tmp_path / "missing")
    calls = {
        "actmax optimise": lambda: run_optimize_layer(
            None, layer="conv1", checkpoint_path=missing, info_path=missing, units_path=missing, npz_path=missing,
            table_path=missing, images_dir=missing, device=absent,
        ),
        "actmax registry": lambda: run_registry_target(
            None, None, npz_path=missing, table_path=missing, images_dir=missing, device=absent
        ),
        "dissection": lambda: run_dissection(
            None, None, units_path=missing, layers_path=missing, tallies_path=missing, device=absent
        ),
        "rotation": lambda: run_rotation(None, None, out_path=missing, device=absent),
    }  # fmt: skip
    for stage, call in calls.items():
        with pytest.raises(DeviceError, match=rf"^config key extraction.device: '{absent}' was asked for") as error:
            call()
        assert "\n" not in str(error.value), stage
    assert not list(tmp_path.iterdir())


def test_parallel_map_keeps_order_gives_each_piece_one_thread_and_restores_torchs_threads():
    from unitscope.runtime import parallel_map

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = parallel_map(lambda item: (item, torch.get_num_threads()), list(range(6)), workers=2)
        assert seen == [(item, 1) for item in range(6)]  # in order, one intra-op thread per piece
        assert torch.get_num_threads() == 2  # restored
        assert parallel_map(lambda item: torch.get_num_threads(), [0, 1], workers=1) == [2, 2]  # a plain loop
        with pytest.raises(ZeroDivisionError):
            parallel_map(lambda item: 1 / item, [1, 0], workers=2)
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# inference_copy: BatchNorm folded into the convolution before it


def test_inference_copy_folds_batchnorm_without_changing_outputs():
    torch.manual_seed(0)
    model = cifar_resnet20().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, as after training
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
    fast = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in model.named_modules()]
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(
            fast(x.contiguous(memory_format=torch.channels_last)),
            expected,
            rtol=1e-4,
            atol=1e-4 * float(expected.abs().max()),
        )
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def _face_images(data_dir, n: int = 3) -> torch.Tensor:
    """The first `n` UTKFace chips, 224 px, in [0, 1]."""
    from PIL import Image

    paths = sorted((data_dir / "faces_utkface" / "images").iterdir())[:n]
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32) / 255 for path in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_inference_copy_keeps_a_hooked_convolution_and_a_hooked_batchnorms_values(data_dir, default_config, tmp_path):
    """MobileNetV2 (ImageNet weights) on real faces: every Conv2d -> BatchNorm2d pair is fused in the copy but the
    kept convolution's, a hooked BatchNorm gives the same output through its Identity, a kept convolution stays
    before normalisation, and the model itself is untouched."""
    from unitscope.hooks import ActivationRecorder
    from unitscope.models.registry import build_model

    spec = {**default_config["models"]["mobilenet_v2_imagenet"], "enabled": True}
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=data_dir, torch_home=tmp_path / "torch")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    folded = inference_copy(model, keep={"features.17.conv.2"})
    norms = [name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)]
    left = [name for name, module in folded.named_modules() if isinstance(module, nn.BatchNorm2d)]
    assert len(norms) == 52 and left == ["features.17.conv.3"]  # the kept convolution's BatchNorm only
    assert isinstance(folded.features[18][1], nn.Identity) and isinstance(model.features[18][1], nn.BatchNorm2d)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())

    images = _face_images(data_dir)
    layers = ["features.17.conv.2", "features.18.1"]
    outputs = []
    for network in (model, folded):
        recorder = ActivationRecorder(network, layers, keep_maps=True, maps_dtype=torch.float32)
        with recorder, torch.no_grad():
            logits = network(images)
        outputs.append({**recorder.maps, "logits": logits})
    for name, value in outputs[0].items():
        scale = float(value.abs().max())
        assert scale > 0.1 and torch.allclose(outputs[1][name], value, atol=1e-5 * scale, rtol=0), name


def test_inference_copy_leaves_what_it_cannot_fold():
    """A convolution whose output also goes elsewhere, a BatchNorm without running statistics, and every BatchNorm
    of a model torch.fx cannot trace stay as they are (the copy still computes the same)."""

    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y

    class Untraceable(nn.Sequential):
        def forward(self, x):
            return self[1](self[0](x)) if float(x.sum()) > -1e9 else x  # control flow on a value

    torch.manual_seed(0)
    batch_stats = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    x = torch.randn(2, 3, 8, 8)
    for model in (TwoUsers(), batch_stats, Untraceable(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))):
        model.eval()
        copy = inference_copy(model)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in copy.modules()) == 1, type(model).__name__
        with torch.no_grad():
            torch.testing.assert_close(copy(x), model(x))
    fused = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()
    assert [type(m).__name__ for m in inference_copy(fused, keep={"2"})] == [
        "Conv2d", "Identity", "Conv2d", "BatchNorm2d"
    ]  # fmt: skip
