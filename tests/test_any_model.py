"""The bring-your-own-CNN matrix: thirteen architectures of different families (torchvision classifiers, a timm
model, TopoNet's ResNet-18 and a user's own 1-channel module with a non-square input), each through the layer
survey, extraction and one step of every study at its default layer (the last block found from its graph) on a
few real images:

- extraction: one pass writes the layer's Zarr store (means per channel);
- faces: the network after the layer (exact tail or hooked re-runs) reproduces the model's logits, and a lesion
  condition equals the hooked reference;
- actmax: a few optimisation steps raise two channels' activations;
- nefesi: the layer's receptive field (arithmetic, or gradient support) and its top exemplars;
- dissection: the layer's IoU with every CamVid concept, within [0, 1].

Every model has seeded random weights (no weights for most of these are reachable offline): the test checks that
each study runs and gives well-formed numbers on any graph, not what the units mean. Inputs are small (64 px; the
user's module reads 40 x 56 grayscale), so the whole matrix takes about a minute.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from anymodels import GRAY_PREPROCESSING, TINYGRAY_SOURCE, write_user_module
from conftest import DATA_DIR

from unitscope.data.concepts import CamVidConcepts
from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout
from unitscope.extract import extract_layers
from unitscope.interventions.tail import build_tail, hooked_condition
from unitscope.models.facts import compute_facts
from unitscope.models.preprocessing import build_transform, input_size
from unitscope.models.receptive_field import layer_receptive_field
from unitscope.models.sources import build_architecture
from unitscope.studies.actmax.plan import RegistryTarget
from unitscope.studies.actmax.registry import optimize_registry_target
from unitscope.studies.dissection.layer_dissection import dissect_network
from unitscope.studies.nefesi.topn import collect_top_n

RGB64 = {"resize": 72, "crop": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
ARCHS = {
    "alexnet": {"arch": "torchvision.alexnet"},
    "vgg11_bn": {"arch": "torchvision.vgg11_bn"},
    "resnet50": {"arch": "torchvision.resnet50"},
    "densenet121": {"arch": "torchvision.densenet121"},
    "googlenet": {"arch": "torchvision.googlenet", "kwargs": {"aux_logits": False, "init_weights": False}},
    "squeezenet1_1": {"arch": "torchvision.squeezenet1_1"},
    "efficientnet_b0": {"arch": "torchvision.efficientnet_b0"},
    "mobilenet_v3_small": {"arch": "torchvision.mobilenet_v3_small"},
    "regnet_y_400mf": {"arch": "torchvision.regnet_y_400mf"},
    "convnext_tiny": {"arch": "torchvision.convnext_tiny"},
    "timm_resnet18": {"arch": "timm.resnet18"},
    "toponet_resnet18": {"arch": "toponet_resnet18"},  # ResNet-18 with BlurPool (no TopoNet weights offline)
    "own_gray": {"arch": "python:tinygray:tiny_gray", "preprocessing": GRAY_PREPROCESSING},
}


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    return write_user_module(tmp_path_factory.mktemp("mymodels"))


@functools.cache
def _built(name: str, folder: str) -> tuple[torch.nn.Module, dict, dict]:
    """(model with seeded random weights, eval, frozen; its registry entry; its layer survey)."""
    spec = {"preprocessing": RGB64, **ARCHS[name], "python_path": [folder]}
    torch.manual_seed(0)
    model = build_architecture(name, spec).eval().requires_grad_(False)
    return model, spec, compute_facts(name, spec)


@pytest.fixture(scope="module")
def images():
    """4 real images (2 faces, 2 CIFAR objects) as a manifest."""
    parts = []
    for name, category, source in [
        ("faces", "face", {"root": "faces_utkface", "path_column": "filename", "image_dir": "images"}),
        ("objects", "object", {"root": "objects_cifar10", "path_column": "path"}),
    ]:
        layout = folder_layout(name, {"kind": "folder", "labels": "labels.csv", **source}, DATA_DIR)
        parts.append(build_manifest(name, category, layout, 2, 0))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def frames():
    return CamVidConcepts(DATA_DIR / "segmentation_camvid", size=2, seed=0)


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_study_runs_on_any_cnn(name, user_folder, images, frames, tmp_path, one_torch_thread):
    model, spec, facts = _built(name, str(user_folder))
    layer = facts["last_block"]
    channels = next(row["channels"] for row in facts["layers"] if row["name"] == layer)
    assert layer and channels and facts["probe_layers"][-1] == layer
    included = images[images["included"]]
    dataset = ManifestDataset(included, build_transform(spec["preprocessing"]))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])

    # extraction: one pass, one store
    loader = [(batch, torch.arange(len(batch)))]
    stores = extract_layers(
        model, loader, list(included["image_id"]), {layer: False}, tmp_path / "pass", progress=False
    )
    means = zarr.open_group(str(stores[layer]), mode="r")["means"][:]
    assert means.shape == (len(batch), channels) and np.isfinite(means).all()

    # faces: the tail reproduces the logits; a lesion matches the hooked reference
    tail = build_tail(model, layer, name)
    with torch.inference_mode():
        logits = model(batch)
    cache = batch if tail.rerun else layer_maps_of(model, layer, batch)
    ablate = torch.zeros(2, channels, dtype=torch.bool)
    ablate[1, : max(1, channels // 4)] = True
    _, conditions = tail.run(cache, ablate, torch.zeros(channels))
    torch.testing.assert_close(conditions[0], logits, atol=1e-4, rtol=1e-4)
    _, lesioned = hooked_condition(model, tail, batch, ablate[1], torch.zeros(channels))
    torch.testing.assert_close(conditions[1], lesioned, atol=1e-4, rtol=1e-4)

    # actmax: two channels climb
    target = RegistryTarget.from_entry(
        {
            "model": name,
            "layer": layer,
            "channels": [],
            "from_faces": 0,
            "objectives": ["channel"],
            "seeds": 1,
            "steps": 6,
            "lr": 0.05,
            "parameterization": "pixel",
            "l2": 0.0,
            "tv": 0.0,
        }  # fmt: skip
    )
    result, _ = optimize_registry_target(model, name, spec, target, [0, channels - 1])
    assert np.isfinite(result.final_unit).all() and tuple(result.images.shape[2:]) == input_size(spec["preprocessing"])

    # nefesi: the field of the layer and its exemplars
    field = layer_receptive_field(model, layer, input_size(spec["preprocessing"]), channels=batch.shape[1])
    assert all(s >= 1 for s in field.size) and all(s >= 1 for s in field.stride)
    top = collect_top_n(model, loader, [layer], 2, progress=False)[layer]
    assert top.channels == channels

    # dissection: IoU of every unit with every concept
    (tmp_path / "dissection").mkdir()
    (dissected,) = dissect_network(
        model, frames, [layer], spec["preprocessing"], model_name=name, shape=(30, 40), quantile=0.02,
        iou_threshold=0.04, top_k=1, seed=0, folder=tmp_path / "dissection",
    )  # fmt: skip
    assert len(dissected.units) == channels and dissected.units["iou"].between(0, 1).all()


def layer_maps_of(model, layer, batch):
    from unitscope.hooks import ActivationRecorder

    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        with torch.inference_mode():
            rec(batch)
        return rec.maps[layer]


def test_the_user_module_source_is_the_one_the_workflow_tests_use():
    assert "def tiny_gray" in TINYGRAY_SOURCE
