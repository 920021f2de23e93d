"""Activation maximisation for every unit of an atlas shard (`studies.atlas.actmax`) on the real ResNet-20 CIFAR
checkpoint (layer1's 16 units, plain pixels at 32 px) and on a 1-channel, non-square CNN with random weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anymodels import GRAY_PREPROCESSING, get_model
from wfutil import tiny_config

from unitscope.hooks import ActivationRecorder
from unitscope.models.registry import build_model
from unitscope.studies.actmax.param import initial_images
from unitscope.studies.actmax.registry import channel_rows
from unitscope.studies.actmax.render import unit_activation
from unitscope.studies.actmax.specs import ActmaxError, UnitSpecs
from unitscope.studies.atlas.actmax import shard_actmax, write_shard_actmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

LAYER, UNITS, SEEDS = "layer1", 16, 2


@pytest.fixture(scope="module")
def resnet20(data_dir):
    spec = tiny_config(data_dir)["models"]["resnet20_cifar"]
    return build_model("resnet20_cifar", spec, data_dir=data_dir, torch_home=None), spec["preprocessing"]


@pytest.fixture(scope="module")
def whole_layer(resnet20):
    """All 16 units of layer1 x 2 seeds, 32 steps, in one shard."""
    model, preprocessing = resnet20
    return shard_actmax(model, preprocessing, LAYER, range(UNITS), seeds=SEEDS, steps=32)


def layer_means(model, preprocessing, images: torch.Tensor, layer: str) -> np.ndarray:
    """[B, C]: every channel's mean at `layer` on images [B, C, H, W] in [0, 1] (a plain forward pass)."""
    mean, std = (torch.tensor(preprocessing[key]).view(1, -1, 1, 1) for key in ("mean", "std"))
    with ActivationRecorder(model, [layer], stop_early=True) as recorder, torch.no_grad():
        return recorder((images - mean) / std)[layer].numpy()


def test_every_unit_climbs_from_the_grey_start_and_its_images_are_its_own(resnet20, whole_layer):
    model, preprocessing = resnet20
    specs = UnitSpecs.from_rows(channel_rows(range(UNITS), ("channel",), SEEDS, l2=0.0, tv=0.0))
    start = unit_activation(
        model,
        LAYER,
        specs,
        initial_images(specs, (3, 32, 32)),
        input_mean=preprocessing["mean"],
        input_std=preprocessing["std"],
    ).reshape(UNITS, SEEDS)
    climbed = (whole_layer.activation > start).all(axis=1)
    assert climbed.sum() >= UNITS - 1, f"units that did not climb: {np.flatnonzero(~climbed)}"
    # activation[u, s] is unit u's channel mean on its own final image, from a plain forward pass
    means = layer_means(model, preprocessing, whole_layer.optimised.flatten(0, 1), LAYER).reshape(UNITS, SEEDS, -1)
    np.testing.assert_allclose(whole_layer.activation, means[np.arange(UNITS), :, np.arange(UNITS)], rtol=1e-5)
    # matrix[i, j]: unit j's activation on unit i's images (mean over seeds); each unit's own images excite it most
    matrix = means.mean(axis=1)[:, whole_layer.channels]
    others = np.where(np.eye(UNITS, dtype=bool), -np.inf, matrix).max(axis=0)
    specific = np.diag(matrix) > others
    assert specific.sum() >= UNITS - 1, f"units another unit's images excite more: {np.flatnonzero(~specific)}"
    assert np.median(np.diag(matrix) / others) > 1.2


def test_two_shards_give_the_images_of_one_shard_of_both(resnet20):
    model, preprocessing = resnet20
    run = {"seeds": SEEDS, "steps": 12}
    first, second = (shard_actmax(model, preprocessing, LAYER, units, **run) for units in ([0, 1, 2], [3, 4, 5]))
    both = shard_actmax(model, preprocessing, LAYER, [0, 1, 2, 3, 4, 5], **run)
    joined = torch.cat([first.optimised, second.optimised])
    torch.testing.assert_close(joined, both.optimised, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.concatenate([first.activation, second.activation]), both.activation, rtol=1e-5)
    pixels = np.abs(np.concatenate([first.images, second.images]).astype(int) - both.images.astype(int))
    assert pixels.max() <= 1  # uint8 rounding of equal-within-float images
    assert not torch.equal(both.optimised[0], both.optimised[1])  # the units' images differ


def test_shapes_dtypes_and_what_is_written(whole_layer, tmp_path):
    result = whole_layer
    assert result.parameterization == "pixel"  # 32 px: plain pixels, as the actmax study chooses
    assert result.channels.dtype == np.int64 and result.channels.tolist() == list(range(UNITS))
    assert result.images.dtype == np.uint8 and result.images.shape == (UNITS, SEEDS, 32, 32, 3)
    assert result.activation.dtype == np.float32 and result.activation.shape == (UNITS, SEEDS)
    assert result.colour_score.dtype == np.float32 and result.colour_score.shape == (UNITS,)
    assert np.isfinite(result.colour_score).all() and (result.colour_score > 0).all()
    flat = result.images.reshape(UNITS * SEEDS, -1)
    assert (flat.min(axis=1) == 0).all() and (flat.max(axis=1) == 255).all()  # each stretched to its own range
    paths = [tmp_path / "a/actmax.npz", tmp_path / "a/actmax.parquet"]
    table = write_shard_actmax(result, *paths)
    write_shard_actmax(result, tmp_path / "b/actmax.npz", tmp_path / "b/actmax.parquet")
    assert paths[0].read_bytes() == (tmp_path / "b/actmax.npz").read_bytes()  # a shard's file depends on its arrays
    with np.load(paths[0]) as stored:
        assert sorted(stored.files) == ["activation", "channels", "colour_score", "images"]
        assert {key: stored[key].dtype for key in stored.files} == {
            "channels": np.int64,
            "images": np.uint8,
            "activation": np.float32,
            "colour_score": np.float32,
        }
        np.testing.assert_array_equal(stored["images"], result.images)
    saved = pd.read_parquet(paths[1])
    pd.testing.assert_frame_equal(saved, table)
    assert list(saved.columns) == ["channel", "actmax_activation", "actmax_activation_sd", "actmax_colour_score"]
    np.testing.assert_allclose(saved["actmax_activation"], result.activation.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(saved["actmax_activation_sd"], result.activation.std(axis=1, ddof=1), rtol=1e-5)


def test_a_grayscale_model_gives_three_channel_grey_images():
    model = get_model("tiny_gray")
    result = shard_actmax(model, GRAY_PREPROCESSING, "conv2", [0, 3, 5], seeds=2, steps=16)
    assert result.images.shape == (3, 2, 40, 56, 3) and result.optimised.shape == (3, 2, 1, 40, 56)
    assert (result.images[..., 0] == result.images[..., 1]).all() and (
        result.images[..., 0] == result.images[..., 2]
    ).all()
    assert np.isnan(result.colour_score).all()  # a grey image has no chroma: NaN, not 0
    specs = UnitSpecs.from_rows(channel_rows([0, 3, 5], ("channel",), 2, l2=0.0, tv=0.0))
    start = unit_activation(
        model, "conv2", specs, initial_images(specs, (1, 40, 56)), input_mean=[0.5], input_std=[0.25]
    )
    assert (result.activation.ravel() > start).all()


def test_optimising_inside_the_layer_still_reports_the_layers_activation(resnet20):
    model, preprocessing = resnet20
    result = shard_actmax(model, preprocessing, LAYER, [4, 9], seeds=1, steps=8, optimize_at="layer1.2.bn2")
    means = layer_means(model, preprocessing, result.optimised.flatten(0, 1), LAYER)
    np.testing.assert_allclose(result.activation[:, 0], means[[0, 1], [4, 9]], rtol=1e-5)
    with pytest.raises(ActmaxError, match=r"atlas actmax resnet20_cifar layer 'layer2' has 32 channels.*'layer1'.* 16"):
        shard_actmax(
            model, preprocessing, LAYER, [0], seeds=1, steps=1, optimize_at="layer2", model_name="resnet20_cifar"
        )
    with pytest.raises(ActmaxError, match="layer 'layer1' has 16 channels; unit channels span 0..16"):
        shard_actmax(model, preprocessing, LAYER, [0, 16], seeds=1, steps=1)
