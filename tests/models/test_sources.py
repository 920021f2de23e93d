"""Model sources beyond the shipped five: any torchvision classification builder, timm models, a user's own
nn.Module (1-channel, non-square input), the layer survey (`python -m unitscope layers`) and its cache.

No weights for these architectures are reachable offline, so every checkpoint here is seeded random weights saved
as a local file by the test; what is tested is loading, checking and surveying, not accuracy.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from anymodels import GRAY_PREPROCESSING, TINYGRAY_SOURCE, save_random_weights, write_user_module

from unitscope.config import ConfigError, validate_config
from unitscope.fsutil import sha256_file
from unitscope.models import facts as facts_module
from unitscope.models.errors import ModelError
from unitscope.models.facts import compute_facts, model_facts
from unitscope.models.registry import build_model
from unitscope.models.sources import build_architecture, source_preprocessing

REPO = Path(__file__).resolve().parents[2]
GRAY = GRAY_PREPROCESSING
TINYGRAY = TINYGRAY_SOURCE


@pytest.fixture
def user_module(tmp_path) -> Path:
    return write_user_module(tmp_path / "mymodels")


def test_any_torchvision_builder_with_a_local_checkpoint(tmp_path):
    spec = {"arch": "torchvision.squeezenet1_1", "kwargs": {"num_classes": 7}}
    path = save_random_weights(build_architecture("sq", spec), tmp_path / "sq.pth", seed=1)
    spec |= {"checkpoint": str(path), "sha256": sha256_file(path)}
    model = build_model("sq", spec, data_dir=tmp_path, torch_home=None)
    assert not model.training and model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    reference = torch.load(path, weights_only=True)
    assert torch.equal(model.state_dict()["features.0.weight"], reference["features.0.weight"])
    with pytest.raises(ModelError, match=r"torchvision has no classification model 'squeezenet1_2'.*squeezenet1_1"):
        build_architecture("sq", {"arch": "torchvision.squeezenet1_2"})
    with pytest.raises(ModelError, match=r"sha256"):
        build_model("sq", spec | {"sha256": "0" * 64}, data_dir=tmp_path, torch_home=None)


def test_preprocessing_comes_from_the_weights_own_transforms():
    effnet = source_preprocessing("e", {"arch": "torchvision.efficientnet_b0", "weights": "IMAGENET1K_V1"})
    assert effnet == {
        "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
    }  # fmt: skip
    cfg = timm.get_pretrained_cfg("resnet18")
    from_timm = source_preprocessing("t", {"arch": "timm.resnet18"})
    assert from_timm["crop"] == cfg.input_size[1] and from_timm["resize"] == int(cfg.input_size[1] / cfg.crop_pct)
    assert from_timm["mean"] == list(cfg.mean) and from_timm["interpolation"] == cfg.interpolation
    assert source_preprocessing("r", {"arch": "torchvision.resnet18", "weights": None}) is None


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_model_from_a_local_checkpoint(tmp_path, suffix):
    spec = {"arch": "timm.resnet18", "kwargs": {"num_classes": 5}}
    path = save_random_weights(build_architecture("t", spec), tmp_path / f"resnet18{suffix}", seed=2)
    model = build_model("t", spec | {"checkpoint": str(path)}, data_dir=tmp_path, torch_home=None)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ModelError, match=r"timm has no model 'resnet_18'; did you mean"):
        build_architecture("t", {"arch": "timm.resnet_18"})


def test_own_module_one_channel_non_square(tmp_path, user_module):
    spec = {"arch": "python:tinygray:tiny_gray", "python_path": [str(user_module)], "preprocessing": GRAY}
    path = save_random_weights(build_architecture("g", spec), tmp_path / "g.pth", seed=3)
    model = build_model("g", spec | {"checkpoint": str(path)}, data_dir=tmp_path, torch_home=None)
    assert model(torch.zeros(1, 1, 40, 56)).shape == (1, 10)
    facts = compute_facts("g", spec)
    assert facts["input"] == [1, 40, 56] and facts["last_block"] == "relu2"
    assert {"name": "conv2", "type": "Conv2d", "shape": [16, 20, 28], "channels": 16, "calls": 1} in facts["layers"]
    with pytest.raises(ModelError, match=r"no callable 'tiny_grey'; did you mean tiny_gray"):
        build_architecture("g", spec | {"arch": "python:tinygray:tiny_grey"})
    with pytest.raises(ModelError, match=r"cannot import module 'tinygrey' from .*mymodels"):
        build_architecture("g", spec | {"arch": "python:tinygrey:tiny_gray"})


@pytest.mark.parametrize(
    ("arch", "kwargs", "last", "depths"),
    [
        ("torchvision.mobilenet_v2", {}, "features.18", ["features.1", "features.3", "features.6", "features.13"]),
        ("torchvision.resnet18", {}, "layer4", ["relu", "layer1", "layer2", "layer3"]),
        ("torchvision.densenet121", {}, "features.norm5", ["features.relu0", "features.denseblock1"]),
        ("torchvision.efficientnet_b0", {}, "features.8", ["features.1", "features.2"]),  # SE pools inside blocks
        ("torchvision.convnext_tiny", {}, "features.7", ["features.1", "features.3", "features.5"]),
        ("torchvision.googlenet", {"aux_logits": False, "init_weights": False}, "inception5b", ["inception3b"]),
        ("cifar_resnet20", {}, "layer3", ["layer1", "layer2"]),
        ("timm.resnet18", {}, "layer4", ["act1", "layer1", "layer2", "layer3"]),
    ],
)
def test_last_block_and_probe_depths_come_from_the_graph(arch, kwargs, last, depths):
    size = 32 if arch.startswith("cifar") else 64
    pre = {"resize": size, "crop": size, "mean": [0.5] * 3, "std": [0.5] * 3}
    facts = compute_facts("m", {"arch": arch, "kwargs": kwargs, "preprocessing": pre})
    assert facts["last_block"] == last
    assert len(facts["probe_layers"]) == 5 and facts["probe_layers"][-1] == last
    assert set(depths) <= set(facts["probe_layers"])
    order = [row["name"] for row in facts["layers"]]
    assert [order.index(n) for n in facts["probe_layers"]] == sorted(order.index(n) for n in facts["probe_layers"])


def test_facts_are_cached_and_a_tampered_cache_is_recomputed(tmp_path, user_module, monkeypatch):
    spec = {"arch": "python:tinygray:tiny_gray", "python_path": [str(user_module)], "preprocessing": GRAY}
    config = {"resources_dir": str(tmp_path / "resources"), "models": {"g": spec}}
    facts_module._MEMORY.clear()
    survey = facts_module._run_subprocess
    first = model_facts(config, "g")  # a real subprocess: `python -m unitscope facts`
    (cached,) = (tmp_path / "resources" / "model_facts").glob("g-*.json")
    assert json.loads(cached.read_text()) == first
    facts_module._MEMORY.clear()
    monkeypatch.setattr(facts_module, "_run_subprocess", lambda *a: pytest.fail("the cache was not used"))
    assert model_facts(config, "g") == first
    tampered = dict(first, last_block="conv1", key="0" * 64)
    cached.write_text(json.dumps(tampered))
    facts_module._MEMORY.clear()
    monkeypatch.setattr(facts_module, "_run_subprocess", lambda name, spec: compute_facts(name, spec))
    assert model_facts(config, "g")["last_block"] == "relu2"
    wider = TINYGRAY.replace("(8, 16", "(8, 160").replace("(16, classes", "(160, classes")
    (user_module / "tinygray.py").write_text(wider)
    monkeypatch.setattr(facts_module, "_run_subprocess", survey)  # a fresh process imports the edited module
    assert model_facts(config, "g")["layers"] != first["layers"]  # the module's bytes are part of the key


def test_layers_command_prints_every_module_and_the_defaults(tmp_path, user_module, default_config):
    config = copy.deepcopy(default_config)
    config["models"]["gray"] = {"arch": "python:tinygray:tiny_gray", "python_path": [str(user_module)],
                                "checkpoint": None, "preprocessing": GRAY}  # fmt: skip
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    command = [sys.executable, "-m", "unitscope", "layers", "gray", "--configfile", str(tmp_path / "config.yaml")]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "model gray: input 1x40x56, 8 modules"
    relu2 = next(line for line in lines if line.startswith("relu2 "))
    assert relu2.split()[1:4] == ["ReLU", "16x20x28", "16"] and "default layer (last block)" in relu2
    done = subprocess.run([*command[:4], "grey", *command[5:]], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 2 and "no model 'grey' under models; did you mean 'gray'?" in done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "python:m:f", "preprocessing": None}, r"preprocessing: not set, and arch python:m:f has no"),
        ({"preprocessing": dict(GRAY, std=[0.2, 0.2, 0.2])}, r"preprocessing.std: 3 values for 1 means"),
        ({"preprocessing": GRAY, "in_channels": 3}, r"preprocessing.mean: 1 values, but models.m.in_channels is 3"),
        ({"preprocessing": dict(GRAY, crop=[40, 64])}, r"preprocessing.crop: \[40, 64\] is larger than resize"),
        ({"arch": "cifar_resnet65"}, r"'cifar_resnet65' is not valid; did you mean 'cifar_resnet56'\?"),
    ],
)
def test_registry_entry_errors_name_the_key(default_config, change, message):
    config = copy.deepcopy(default_config)
    config["models"]["m"] = {"arch": "python:m:f", "checkpoint": "x.pth"} | change
    config["models"]["m"].setdefault("preprocessing", GRAY)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_timm_pretrained_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """`weights: pretrained` reads timm's file from the Hugging Face cache under resources_dir (here a cache laid out
    as huggingface_hub writes it, offline), checks its sha256 and loads it like any checkpoint."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {"arch": "timm.resnet18", "weights": "pretrained"}
    repo = tmp_path / "huggingface" / "models--timm--resnet18.a1_in1k"  # timm's default tag of resnet18
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    weights = repo / "snapshots" / ("0" * 40) / "model.safetensors"
    save_random_weights(build_architecture("t", spec), weights, seed=4)
    spec["sha256"] = sha256_file(weights)
    model = build_model("t", spec, data_dir=tmp_path, torch_home=tmp_path / "torch")
    assert model.unitscope_checkpoint["path"] == str(weights) and model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ModelError, match=r"sha256"):
        build_model("t", spec | {"sha256": "f" * 64}, data_dir=tmp_path, torch_home=tmp_path / "torch")
    with pytest.raises(
        ModelError, match=r"cannot get timm/resnet18.a2_in1k/model.safetensors .*set models.t.checkpoint"
    ):
        build_model("t", spec | {"weights": "a2_in1k"}, data_dir=tmp_path, torch_home=tmp_path / "torch")
