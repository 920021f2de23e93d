"""nefesi on any CNN: the layer analysis of the `nefesi_layer` stage (top-N, probes, Neuron Features, indexes,
layer record) and the image decomposition on a DenseNet (concatenation, functional ReLU), a timm ResNet, a
MobileNetV3 layer with squeeze-and-excitation (every unit sees the whole image) and a user's grayscale module with
non-square input, on 8 real CIFAR-10 images drawn into a manifest.

Every model has random weights (seeded with `torch.manual_seed(0)`), in eval mode with `requires_grad_(False)`, as
the registry builds them (`anymodels.get_model`).
"""

import json

import numpy as np
import pytest
import torch
from anymodels import GRAY_PREPROCESSING, get_model
from torch import nn

from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout, write_manifest
from unitscope.models.preprocessing import build_transform, input_size
from unitscope.runtime import inference_copy
from unitscope.studies.nefesi.decomposition import decompose_image, image_maps
from unitscope.studies.nefesi.images import exemplar_crops, image_table, layer_field, nf_rgb
from unitscope.studies.nefesi.indexes import layer_index_table
from unitscope.studies.nefesi.probes import LayerGeometry, layer_record, local_geometry, manifest_batches, probe_layer
from unitscope.studies.nefesi.section import layer_summary
from unitscope.studies.nefesi.topn import collect_top_n

CIFAR_SOURCE = {
    "kind": "folder",
    "root": "objects_cifar10",
    "labels": "labels.csv",
    "path_column": "path",
    "label_column": "label",
}
RGB = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
INDEXES = ["color_index", "orientation_index", "symmetry_index", "class_index"]


# model key (`get_model`) -> the layer analysed
MODELS = {
    "densenet121": "features.denseblock1.denselayer2",
    "timm_resnet18": "layer1.0",
    "mobilenet_v3_small": "features.1",
    "tiny_gray": "relu2",
}


@pytest.fixture(scope="module")
def images(data_dir, tmp_path_factory, one_torch_thread):
    """8 real CIFAR-10 test images, drawn into a manifest in a temporary folder, as the image table of a target."""
    manifest = build_manifest("objects", "object", folder_layout("objects", CIFAR_SOURCE, data_dir), 8, 0)
    path = tmp_path_factory.mktemp("any_model") / "manifest.parquet"
    write_manifest(manifest, path)
    return image_table({"objects": path})


def analyse(name: str, images):
    """What the nefesi_layer stage computes for one layer (top-N, probes, index table), as its stage calls it."""
    layer = MODELS[name]
    network = inference_copy(get_model(name))
    colour = name != "tiny_gray"
    preprocessing = {"resize": 48, "crop": 48, **RGB} if colour else GRAY_PREPROCESSING
    mean, std = preprocessing["mean"], preprocessing["std"]
    transform = build_transform(preprocessing)
    dataset = ManifestDataset(images, transform)
    pixels = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert pixels.shape[1:] == (3 if colour else 1, *input_size(preprocessing))
    top = collect_top_n(network, [(pixels, torch.arange(len(pixels)))], [layer], 2, progress=False)[layer]
    probes = probe_layer(
        network,
        layer,
        top,
        manifest_batches(images, transform),
        image_size=input_size(preprocessing),
        mean=mean,
        std=std,
        rotation_step=90,
        progress=False,
    )
    table = layer_index_table(
        name,
        layer,
        top,
        probes,
        images["class"],
        mean=mean,
        std=std,
        class_coverage=1.0,
        population_threshold=0.1,
        color_name_share=0.2,
    )
    return network, layer, pixels, (mean, std), top, probes, table


@pytest.mark.parametrize("name", list(MODELS))
def test_layer_analysis_gives_finite_indexes_on_any_model(images, name, capsys):
    network, layer, pixels, (mean, std), top, probes, table = analyse(name, images)
    colour = name != "tiny_gray"
    alive = table[~table["dead"]]
    assert len(alive) > 0 and len(table) == top.channels
    measured = INDEXES if colour else INDEXES[1:]
    assert np.isfinite(alive[measured].to_numpy(dtype=float)).all()
    assert alive[measured].to_numpy(dtype=float).min() >= 0 and alive[measured].to_numpy(dtype=float).max() <= 1
    if not colour:  # a grayscale model has no colour: not applicable, not a number
        assert table["color_index"].isna().all()
    info = layer_record(name, layer, top, probes, probes.geometry, len(images), images["class"].nunique(), None)
    info = json.loads(json.dumps(info))  # what layer.json keeps
    field = layer_field(info)
    assert field == probes.geometry.field and info["identity_max_abs_error"] < 1e-3
    summary = layer_summary(table, info, 0.25)
    assert (summary["color_index_mean"] is None) == (summary["color_selective_share"] is None) == (not colour)
    nf = nf_rgb(probes.nf, mean, std)
    assert nf.shape[-1] == 3 and np.isfinite(nf).all()
    channel = int(alive["channel"].iloc[0])
    crops = exemplar_crops(
        pixels[top.image[channel]], field, top.y[channel], top.x[channel], info["nf_extent"], mean, std
    )
    assert crops.shape[1:] == nf.shape[1:]  # the crops the unit figures show are the NF's size
    kept = decompose_image(image_maps(network, layer, pixels[0]), field, top.values[:, 0], pixels.shape[-2:])
    assert len(kept) >= 1
    if name == "mobilenet_v3_small":  # squeeze-and-excitation: the whole image, reported and logged
        assert info["receptive_field"]["whole"] == [True, True] and info["probe_window"] == [48, 48]
        assert info["whole_image_exemplars"] == info["exemplar_crops"] and len(kept) == 1
        assert "whole" in capsys.readouterr().out


def test_probe_windows_fall_back_to_whole_images_where_a_layer_is_not_local(capsys):
    """A layer whose output depends on the input's size (as TensorFlow-style 'same' padding does): its local
    field gives small windows, but windows do not reproduce its activations, so it is probed on whole images."""

    class WidthScaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x) * (x.shape[-1] / 32)

    torch.manual_seed(0)
    model = nn.Sequential(WidthScaled(), nn.ReLU()).eval().requires_grad_(False)
    geometry = LayerGeometry.of(model, "0", (32, 32), (32, 32))
    assert geometry.field.size == (3, 3) and geometry.window[0] < 32
    probed = local_geometry(model, "0", geometry, 3, "cpu")
    assert probed.window == (32, 32) and probed.field == geometry.field
    assert "probed on whole images" in capsys.readouterr().out
    local = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    assert local_geometry(local, "0", LayerGeometry.of(local, "0", (32, 32), (32, 32)), 3, "cpu").window == (3, 3)
