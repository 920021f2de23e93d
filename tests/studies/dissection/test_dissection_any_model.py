"""Network dissection and the rotation experiment on any CNN: torchvision and timm architectures and a user module
with a 1-channel, non-square input, each dissected at a layer inside its graph (residual, dense and inception
blocks, stages) on a few CamVid frames.

Every model has random weights (seeded: `anymodels.get_model`): the tests check that the study runs and
that its numbers are well formed, not what the units detect. Inputs are small (shorter side 48-64 px) and
the masks coarse (30 x 40) so the whole module stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from anymodels import GRAY_PREPROCESSING, get_model

from unitscope.data.concepts import CamVidConcepts
from unitscope.studies.dissection.caches import cache_activations, dissection_transform
from unitscope.studies.dissection.dissect import (
    DissectionError,
    concept_lookup,
    iou_from_counts,
    label_batch,
    tally_direct,
    unit_thresholds,
)
from unitscope.studies.dissection.layer_dissection import dissect_network
from unitscope.studies.dissection.rotation import rotate_network

RGB = {"resize": 56, "crop": 48, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
GRAY = GRAY_PREPROCESSING  # 1 x 40 x 56, as the model reads it
MASKS = (30, 40)  # CamVid's 360 x 480 labels at shorter side 30
SETTINGS = {"quantile": 0.02, "iou_threshold": 0.04, "seed": 0, "shape": MASKS}


@pytest.fixture(scope="module")
def frames(data_dir):
    return CamVidConcepts(data_dir / "segmentation_camvid", size=4, seed=3)


# (model, layers: inside its graph, their channels, preprocessing)
CASES = [
    ("resnet50", ["layer2.0.conv2", "layer2.1"], [128, 512], RGB),  # inside a bottleneck; a residual block
    ("densenet121", ["features.denseblock2.denselayer3"], [32], RGB),  # a dense layer (inputs concatenated)
    ("googlenet", ["inception3a.branch2"], [128], RGB),  # one branch of an inception block
    ("efficientnet_b0", ["features.3.1.block"], [40], RGB),  # inside an MBConv block (stochastic depth after)
    ("convnext_tiny", ["features.1.0"], [96], RGB),  # a ConvNeXt block (its inner layers are channels-last)
    ("timm_mobilenetv3_small_050", ["blocks.2"], [24], RGB),  # a timm stage
    ("tiny_gray", ["conv1", "conv2"], [8, 16], GRAY),  # 1 channel, 40 x 56: maps 40 x 56 and 20 x 28
]


@pytest.mark.parametrize(("name", "layers", "channels", "preprocessing"), CASES, ids=[c[0] for c in CASES])
def test_dissection_of_any_model_gives_an_iou_per_channel_and_concept(
    name, layers, channels, preprocessing, frames, tmp_path, one_torch_thread
):
    results = dissect_network(
        get_model(name), frames, layers, preprocessing, model_name=name, top_k=2, folder=tmp_path, **SETTINGS
    )
    code_category, _ = concept_lookup(frames)
    concept_codes = frames.concepts["code"].to_numpy()
    for result, layer, n_channels in zip(results, layers, channels, strict=True):
        counts = [result.arrays[f"{layer}/{key}"] for key in ("intersection", "unit_area", "label_area")]
        iou = iou_from_counts(*counts, code_category)[:, concept_codes]  # the IoU table: channels x concepts
        assert iou.shape == (n_channels, len(concept_codes)) == (n_channels, 22)
        assert np.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1).all()
        units = result.units
        assert len(units) == n_channels and units["unit"].tolist() == list(range(n_channels))
        assert (units["model"] == name).all() and (units["layer"] == layer).all()
        assert units["iou"].between(0, 1).all()
        np.testing.assert_allclose(units["iou"], iou.max(axis=1))
        assert result.row["units"] == n_channels and result.row["images"] == len(frames)
        assert result.arrays[f"{layer}/top_maps"].shape[:2] == (n_channels, 2)


def test_gray_non_square_input_and_its_maps_upsampled_onto_the_masks(frames, tmp_path, one_torch_thread):
    """The 1-channel model reads 40 x 56 grayscale frames; its conv1 maps (40 x 56, finer than the 30 x 40 masks)
    and conv2 maps (20 x 28) are tallied exactly as upsampling every map with torch and thresholding would."""
    transform = dissection_transform(GRAY, "tiny_gray")
    image = transform(frames.image(0))
    assert image.shape == (1, 40, 56)
    gray = np.asarray(frames.image(0).convert("L").resize((56, 40), 2), dtype=np.float32) / 255  # 2: bilinear
    np.testing.assert_allclose(image[0].numpy() * 0.25 + 0.5, gray, atol=0.02)
    maps = cache_activations(get_model("tiny_gray"), frames, ["conv1", "conv2"], transform, tmp_path, progress=False)
    assert maps["conv1"].shape == (4, 8, 40, 56) and maps["conv2"].shape == (4, 16, 20, 28)
    labels = label_batch([frames.annotation(i, MASKS) for i in range(len(frames))], frames.categories, MASKS)
    results = dissect_network(
        get_model("tiny_gray"),
        frames,
        ["conv1", "conv2"],
        GRAY,
        model_name="tiny_gray",
        top_k=2,
        folder=tmp_path,
        **SETTINGS,
    )
    for result, layer in zip(results, ("conv1", "conv2"), strict=True):
        layer_maps = torch.from_numpy(np.array(maps[layer]))
        thresholds = torch.from_numpy(unit_thresholds(np.asarray(maps[layer]), SETTINGS["quantile"]))
        direct = tally_direct(layer_maps, thresholds, labels, frames.n_codes)
        np.testing.assert_array_equal(result.arrays[f"{layer}/intersection"], direct.intersection)
        np.testing.assert_array_equal(result.arrays[f"{layer}/unit_area"], direct.unit_area)
        assert result.row["map_shape"] == list(maps[layer].shape[2:])


def test_a_layer_without_maps_is_a_one_line_error_naming_model_and_layer(frames, tmp_path):
    with pytest.raises(DissectionError, match=r"^model tiny_gray layer 'fc': output shape \[4, 10\] is not \[N, C"):
        dissect_network(
            get_model("tiny_gray"), frames, ["fc"], GRAY, model_name="tiny_gray", top_k=2, folder=tmp_path, **SETTINGS
        )
    with pytest.raises(DissectionError, match=r"^model tiny_gray: the forward pass on images \[4, 3, 40, 56\]"):
        rgb = {**GRAY, "mean": RGB["mean"], "std": RGB["std"]}  # 3-channel images into a 1-channel model
        dissect_network(
            get_model("tiny_gray"), frames, ["conv1"], rgb, model_name="tiny_gray", top_k=2, folder=tmp_path, **SETTINGS
        )
    with pytest.raises(DissectionError, match=r"^model tiny_gray: preprocessing has 2 means"):
        dissection_transform({**GRAY, "mean": [0.5, 0.5], "std": [0.2, 0.2]}, "tiny_gray")


def test_rotation_experiment_on_a_dense_layer(frames, tmp_path, one_torch_thread):
    """densenet121's dense layer (32 channels): alpha 0 is the layer as dissected; alpha 1 its units rotated."""
    network, layer = get_model("densenet121"), "features.denseblock2.denselayer3"
    rows = rotate_network(
        network, frames, layer, RGB, model_name="densenet121", alphas=[0, 1], seeds=2, folder=tmp_path, **SETTINGS
    )
    assert [(row["seed"], row["alpha"]) for row in rows] == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]
    assert all(row["units"] == 32 and 0 <= row["detectors"] <= 32 for row in rows)
    assert all(0 <= row["mean_best_iou"] <= 1 for row in rows)
    [plain] = dissect_network(
        network, frames, [layer], RGB, model_name="densenet121", top_k=1, folder=tmp_path, **SETTINGS
    )
    for key in ("detectors", "unique_best", "mean_best_iou"):
        assert rows[0][key] == rows[2][key] == plain.row[key], key
    assert rows[1]["mean_best_iou"] != rows[0]["mean_best_iou"]  # a different basis, different units
    twice = rotate_network(  # the dissections two at a time (the stage's threads): the same rows
        network, frames, layer, RGB, model_name="densenet121", alphas=[0, 1], seeds=2, folder=tmp_path, workers=2,
        **SETTINGS,
    )  # fmt: skip
    assert json.dumps(twice, sort_keys=True, default=float) == json.dumps(rows, sort_keys=True, default=float)
    assert not list(tmp_path.glob("rotated-*.npy"))  # each rotated copy is removed once dissected
