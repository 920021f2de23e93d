"""Activation maximisation core (batched objectives, regularisers, inits, parameterisations, frozen model) and
the analysis measures (colour vs shape, polysemanticity, unit choice)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from unitscope.studies.actmax.color_shape import color_shape_probe
from unitscope.studies.actmax.colored_mnist import ColoredMnistCNN, colorize, load_mnist_sources
from unitscope.studies.actmax.image_metrics import hue_histograms, image_color_shape
from unitscope.studies.actmax.objectives import LOGITS, build_objective, channel_mean, l2_penalty, neuron, tv_penalty
from unitscope.studies.actmax.param import fft_image_to_spectrum, initial_images, spectrum_to_image
from unitscope.studies.actmax.polysemanticity import polysemanticity
from unitscope.studies.actmax.render import optimize_inputs
from unitscope.studies.actmax.similarity import seed_similarities
from unitscope.studies.actmax.specs import ActmaxError, UnitSpecs
from unitscope.studies.actmax.units import select_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _registry_target_defaults() -> dict:
    """A registry target's schema defaults (what a validated config fills in)."""
    from unitscope.config import load_schema

    item = load_schema()["properties"]["actmax"]["properties"]["registry_targets"]["items"]
    return {key: spec["default"] for key, spec in item["properties"].items() if "default" in spec}


REGISTRY_DEFAULTS = _registry_target_defaults()


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return ColoredMnistCNN((6, 8, 8)).eval()


def planted_red_cnn() -> ColoredMnistCNN:
    """conv1 channel 0 adds red and subtracts green and blue over its 3x3 window: it responds only to red."""
    torch.manual_seed(1)
    model = ColoredMnistCNN((4, 4, 4)).eval()
    with torch.no_grad():
        model.conv1.weight[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 3, 3)
        model.conv1.bias[0] = 0.0
    return model


MIXED_ROWS = [
    {"channel": 0, "objective": "channel", "seed": 0},
    {"channel": 3, "objective": "channel", "seed": 1, "init": "gaussian", "l2": 0.1},
    {"channel": 1, "objective": "neuron", "y": 5, "x": 9, "seed": 0, "tv": 0.2},
    {"channel": 5, "objective": "neuron", "y": 27, "x": 0, "seed": 2, "init": "lowfreq"},
    {"channel": 2, "objective": "topk", "seed": 3},
    {"channel": 4, "objective": "class_conditional", "y": 14, "x": 14, "target_class": 7, "class_weight": 0.5},
    {"channel": 0, "objective": "class_conditional", "y": 3, "x": 20, "target_class": 2, "class_weight": 2.0},
]


def _captured(model, layer, images):
    captured = {}

    def hook(_m, _i, output):
        captured[layer] = output

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        captured[LOGITS] = model(images)
    finally:
        handle.remove()
    return captured


def test_objectives_batched_equal_one_unit_at_a_time(cnn):
    specs = UnitSpecs.from_rows(MIXED_ROWS)
    images = torch.rand(len(specs), 3, 28, 28, generator=torch.Generator().manual_seed(0))
    batched = build_objective("conv1", specs, topk=4)(_captured(cnn, "conv1", images))
    for i in range(len(specs)):
        alone = build_objective("conv1", specs.select([i]), topk=4)(_captured(cnn, "conv1", images[i : i + 1]))
        assert torch.allclose(batched[i], alone[0], atol=1e-5), MIXED_ROWS[i]
    # and each objective is what its definition says
    maps = cnn.conv1(images)
    logits = cnn(images)
    assert torch.allclose(batched[0], maps[0, 0].mean(), atol=1e-5)
    assert torch.allclose(batched[2], maps[2, 1, 5, 9], atol=1e-5)
    assert torch.allclose(batched[4], maps[4, 2].flatten().topk(4).values.mean(), atol=1e-5)
    assert torch.allclose(batched[5], maps[5, 4, 14, 14] + 0.5 * logits[5, 7], atol=1e-5)


def test_optimisation_batched_equals_one_run_at_a_time(cnn):
    specs = UnitSpecs.from_rows(MIXED_ROWS)
    kwargs = {"steps": 6, "lr": 0.05, "topk": 4, "snapshot_every": 3, "progress": False}
    batched = optimize_inputs(cnn, "conv2", specs_for_layer(specs, 14), **kwargs)
    for i in range(len(specs)):
        alone = optimize_inputs(cnn, "conv2", specs_for_layer(specs, 14).select([i]), **kwargs)
        assert torch.allclose(batched.images[i], alone.images[0], atol=1e-4)
        assert np.allclose(batched.objective_curve[:, i], alone.objective_curve[:, 0], atol=1e-4)
        assert np.allclose(batched.final_objective[i], alone.final_objective[0], atol=1e-4)
    assert batched.snapshots.shape == (3, len(specs), 3, 28, 28) and batched.snapshot_steps == [0, 3, 6]
    chunked = optimize_inputs(cnn, "conv2", specs_for_layer(specs, 14), max_batch=3, **kwargs)
    assert torch.allclose(chunked.images, batched.images, atol=1e-5)
    assert list(chunked.table()["channel"]) == [row["channel"] for row in MIXED_ROWS]


def specs_for_layer(specs: UnitSpecs, size: int) -> UnitSpecs:
    """The same units with neuron positions folded into a size x size map."""
    moved = specs.select(torch.arange(len(specs)))
    moved.y = torch.where(moved.y >= 0, moved.y % size, moved.y)
    moved.x = torch.where(moved.x >= 0, moved.x % size, moved.x)
    return moved


def test_objective_algebra(cnn):
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    captured = _captured(cnn, "conv1", images)
    channels, ys, xs = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    a, b = channel_mean("conv1", channels), neuron("conv1", channels, ys, xs)
    weights = torch.tensor([1.0, 0.0, -2.0])
    combined = 2 * a - b + weights * a
    expected = 2 * a(captured) - b(captured) + weights * a(captured)
    assert torch.allclose(combined(captured), expected)
    assert combined.needs == {"conv1"} and "channel_mean" in combined.name
    assert torch.allclose(sum([a, b])(captured), a(captured) + b(captured))


def test_planted_red_unit_gives_a_mostly_red_image():
    model = planted_red_cnn()
    specs = UnitSpecs.from_rows(
        [
            {"channel": 0, "objective": "channel", "seed": s, "init": i, "l2": 0.01, "tv": 0.05}
            for s in range(2)
            for i in ("gray_noise", "gaussian")
        ]
        + [{"channel": 0, "objective": "neuron", "y": 14, "x": 14, "seed": 0, "l2": 0.01}]
    )
    result = optimize_inputs(model, "conv1", specs, steps=150, lr=0.05, progress=False)
    for image in result.images[:4]:
        red = (image[0] > 0.8) & (image[1] < 0.2) & (image[2] < 0.2)
        assert red.float().mean() > 0.9
    metrics = image_color_shape(result.images[:4])
    assert (metrics["color_concentration"] > 0.9).all()
    assert ((metrics["mean_hue_deg"] < 10) | (metrics["mean_hue_deg"] > 350)).all()
    # the neuron's image is red inside its 3x3 receptive field
    window = result.images[4, :, 13:16, 13:16]
    assert (window[0] > 0.8).all() and (window[1:] < 0.2).all()


def test_l2_and_tv_move_the_image_the_way_they_should(cnn):
    start = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    for penalty, center in ((lambda x: l2_penalty(x, 0.25), 0.25), (tv_penalty, None)):
        image = start.clone().requires_grad_(True)
        penalty(image).sum().backward()
        stepped = start - 0.5 * image.grad
        if center is not None:  # every pixel moves towards the centre value, none overshoots
            assert torch.all((stepped - center).abs() <= (start - center).abs() + 1e-7)
            assert torch.all(torch.sign(stepped - center) == torch.sign(start - center))
        else:
            assert torch.all(tv_penalty(stepped) < tv_penalty(start))
    # through the optimiser: with the objective weighted zero, only the regulariser acts
    specs = UnitSpecs.from_rows(
        [
            {"channel": 0, "objective": "channel", "init": "gaussian", "l2": 1.0},
            {"channel": 0, "objective": "channel", "init": "gaussian", "tv": 1.0},
        ]
    )
    zero = 0 * channel_mean("conv1", specs.channel)
    result = optimize_inputs(cnn, "conv1", specs, objective=zero, steps=30, l2_center=0.0, progress=False)
    initial = initial_images(specs, (3, 28, 28))
    assert l2_penalty(result.images[:1]) < 0.5 * l2_penalty(initial[:1])
    assert tv_penalty(result.images[1:]) < 0.5 * tv_penalty(initial[1:])
    assert (result.loss_curve[-1] < result.loss_curve[0]).all()


def test_no_parameter_receives_a_gradient_or_changes(cnn):
    cnn.train()
    cnn.requires_grad_(True)
    cnn.conv1.weight.requires_grad_(False)  # flags are restored as they were, whatever they were
    cnn.classifier.weight.grad = torch.ones_like(cnn.classifier.weight)  # a gradient left by earlier training
    before = {name: p.detach().clone() for name, p in cnn.state_dict().items()}
    specs = UnitSpecs.from_rows(MIXED_ROWS[:5] + MIXED_ROWS[5:6])
    specs = specs_for_layer(specs, 14)
    optimize_inputs(cnn, "conv2", specs, steps=5, progress=False)
    for name, value in cnn.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for name, p in cnn.named_parameters() if name != "classifier.weight")
    assert torch.equal(cnn.classifier.weight.grad, torch.ones_like(cnn.classifier.weight))
    assert cnn.training and cnn.conv2.weight.requires_grad and not cnn.conv1.weight.requires_grad


def test_initialisations_differ_as_described():
    specs = UnitSpecs.from_rows(
        [{"channel": 0, "objective": "channel", "seed": 5, "init": i} for i in ("gaussian", "gray_noise", "lowfreq")]
        + [{"channel": 1, "objective": "channel", "seed": 5, "init": "gray_noise"}]
    )
    images = initial_images(specs, (3, 28, 28))
    assert images.min() >= 0 and images.max() <= 1
    spread = images.flatten(1).std(dim=1)
    assert spread[0] > 0.15 and spread[1] < 0.06  # gaussian vs grey + faint noise
    assert torch.equal(images[1], images[3])  # same seed, same start, whatever the unit
    tv = tv_penalty(images)
    assert tv[2] < 0.3 * tv[0]  # low-frequency noise is smooth


def test_inplace_op_after_the_layer_does_not_change_the_objective():
    """ReLU(inplace=True) after the hooked conv rewrites its output during the full forward pass that the
    class-conditional objective needs; the objective must still read the pre-ReLU values."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 64, 3))
    rows = [
        {"channel": c, "objective": "class_conditional", "y": y, "x": 3, "target_class": 1, "class_weight": 0.0}
        for c in range(8)
        for y in (0, 4)
    ]
    specs = UnitSpecs.from_rows(rows)
    result = optimize_inputs(model, "0", specs, image_shape=(3, 8, 8), steps=1, lr=1e-4, progress=False)
    with torch.no_grad():
        pre_relu = model[0](result.images)
    expected = pre_relu[torch.arange(16), specs.channel, specs.y, specs.x]
    assert (expected < 0).any(), "the check needs negative pre-ReLU values to be able to fail"
    assert torch.allclose(torch.from_numpy(result.final_unit), expected, atol=1e-5)
    assert np.allclose(result.objective_curve[0], expected.numpy(), atol=1e-2)


def test_fft_parameterisation_round_trip_and_climb(cnn):
    images = 0.05 + 0.9 * torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(4))
    back = spectrum_to_image(fft_image_to_spectrum(images), 16, 20)
    assert torch.allclose(back, images, atol=1e-4)
    specs = UnitSpecs.from_rows([{"channel": c, "objective": "channel", "seed": c} for c in range(3)])
    result = optimize_inputs(
        cnn,
        "conv2",
        specs,
        image_shape=(3, 28, 28),
        steps=25,
        lr=0.05,
        parameterization="fft",
        transforms=True,
        progress=False,
    )
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.final_objective > result.objective_curve[0]).all()


def test_bad_units_and_layers_are_one_line_errors(cnn):
    specs = UnitSpecs.from_rows([{"channel": 9, "objective": "channel"}])
    with pytest.raises(ActmaxError) as err:
        optimize_inputs(cnn, "conv1", specs, steps=1, progress=False)
    assert "conv1" in str(err.value) and "6 channels" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ActmaxError, match="'conv9'"):
        optimize_inputs(cnn, "conv9", specs, steps=1, progress=False)
    far = UnitSpecs.from_rows([{"channel": 0, "objective": "neuron", "y": 20, "x": 1}])
    with pytest.raises(ActmaxError, match="7x7"):
        optimize_inputs(cnn, "conv3", far, steps=1, progress=False)
    with pytest.raises(ActmaxError, match="objective 'mean'"):
        UnitSpecs.from_rows([{"channel": 0, "objective": "mean"}])
    with pytest.raises(ActmaxError, match="needs a neuron position"):
        UnitSpecs.from_rows([{"channel": 0, "objective": "neuron"}])
    with pytest.raises(ActmaxError, match="target_class"):
        UnitSpecs.from_rows([{"channel": 0, "objective": "class_conditional", "y": 1, "x": 1}])


# ----------------------------------------------------------------------------------------------
# analysis


def _blob(color, size=28, center=(14, 14), radius=7):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).float()
    return mask[None] * torch.tensor(color)[:, None, None]


def _stroke(color, size=28, column=14):
    image = torch.zeros(3, size, size)
    image[:, 4:24, column - 1 : column + 1] = torch.tensor(color)[:, None, None]
    return image


def test_image_colour_and_shape_measures():
    images = torch.stack([_blob([1.0, 0.0, 0.0], radius=20), _stroke([1.0, 1.0, 1.0]), torch.zeros(3, 28, 28)])
    metrics = image_color_shape(images)
    assert metrics.loc[0, "color_concentration"] > 0.99 and metrics.loc[0, "edge_energy"] < 0.02
    assert metrics.loc[1, "saturation"] < 0.01 and metrics.loc[1, "edge_energy"] > 3 * metrics.loc[0, "edge_energy"]
    assert metrics.loc[1, "dark_fraction"] > 0.9
    histograms = hue_histograms(images, bins=12)
    assert torch.allclose(histograms.sum(1), torch.ones(3))
    assert histograms[0, 0] > 0.99 and histograms[1, 12] > 0.99 and histograms[2, 12] == 1.0


def test_polysemanticity_flags_seeds_with_unrelated_patterns():
    red, green, blue = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    units = {
        0: [_blob(red, center=(14, 14 + s)) for s in range(4)],  # the same red blob every seed
        1: [_blob(red), _blob(red, center=(14, 15)), _stroke(green), _stroke(green, column=16)],  # two patterns
        2: [_stroke(blue, column=10 + s) for s in range(4)],
        3: [_blob([1.0, 1.0, 0.0], radius=5 + s) for s in range(4)],
    }
    rows, images = [], []
    for channel, seeds in units.items():
        for seed, image in enumerate(seeds):
            rows.append({"layer": "conv1", "channel": channel, "objective": "channel", "seed": seed})
            images.append(image)
    table = pd.DataFrame(rows)
    table["final_activation"] = 1.0
    images = torch.stack(images)
    similarities = seed_similarities(images, activations=images.flatten(1))
    scores, pairs = polysemanticity(table, similarities, group_columns=("layer", "channel", "objective"))
    scores = scores.set_index("channel")
    assert scores.loc[1, "flagged"] and scores.loc[1, "unrelated_pairs"] >= 4
    assert not scores.loc[0, "flagged"] and not scores.loc[2, "flagged"]
    assert scores.loc[0, "score"] < scores.loc[1, "score"]
    assert len(pairs) == 4 * 6 and set(pairs["n_reference_pairs"]) == {len(images) * (len(images) - 1) // 2 - 24}
    # a seed that failed to climb is not read as a second meaning
    table.loc[(table["channel"] == 1) & (table["seed"] == 3), "final_activation"] = 0.1
    scores, _ = polysemanticity(table, similarities, group_columns=("layer", "channel", "objective"))
    assert not scores.set_index("channel").loc[1, "flagged"]


def test_colour_probe_sees_the_planted_red_unit(data_dir):
    sources = load_mnist_sources(data_dir / "mnist")
    model = planted_red_cnn()
    probe = color_shape_probe(
        model,
        sources["test_images"][:2000],
        sources["test_labels"][:2000],
        ["conv1"],
        groups=5,
        neurons={"conv1": [(0, 14, 14)]},
    )
    assert len(probe) == 4 + 1 and probe["n_images"].eq(500).all()
    red = probe[(probe["kind"] == "channel") & (probe["channel"] == 0)].iloc[0]
    assert red["color_index"] > 0.6  # changing the colour matters more than changing the digit


def test_select_units_picks_high_variance_channels_and_spread_neurons(data_dir):
    sources = load_mnist_sources(data_dir / "mnist")
    digits, labels = sources["test_images"][:300], sources["test_labels"][:300]
    images = torch.from_numpy(colorize(digits, labels % 10)).float() / 255
    model = planted_red_cnn()
    with torch.no_grad():
        model.conv1.weight[3] = 3 * model.conv1.weight[0]  # channel 3 now varies most (9x channel 0)
    chosen = select_units(
        model,
        images,
        ["conv1", "conv3"],
        channels_per_layer=2,
        extra_channels={"conv1": [1]},
        neurons_per_channel=3,
        target_images=images,
        target_labels=torch.from_numpy(labels),
    )
    conv1 = chosen["conv1"]["units"]
    assert conv1[0]["channel"] == 3 and len(conv1) == 3 and conv1[-1]["channel"] == 1 and conv1[-1]["requested"]
    variances = [u["variance"] for u in conv1[:2]]
    assert variances == sorted(variances, reverse=True)
    for unit in conv1:
        positions = unit["neurons"]
        assert len(positions) == 3
        for i in range(3):
            for j in range(i):
                assert max(abs(positions[i][0] - positions[j][0]), abs(positions[i][1] - positions[j][1])) >= 4
        assert 0 <= unit["target_class"] < 10
    assert chosen["conv3"]["map_size"] == [7, 7] and chosen["conv3"]["neuron_min_distance"] == math.ceil(7 / 7)


def test_registry_model_channels_with_the_fft_parameterisation(data_dir, default_config, tmp_path):
    """The generic path the faces study uses: MobileNetV2 features.18 channels, 224 px, FFT + transforms.

    Hooked at features.18.1 (BatchNorm, before the in-place ReLU6): a post-ReLU6 channel that is 0 on the grey
    start image has no gradient to climb, and the in-place ReLU6 exercises the copy-on-modification path."""
    from unitscope.models.registry import build_model
    from unitscope.studies.actmax.render import unit_activation

    spec = {**default_config["models"]["mobilenet_v2_imagenet"], "enabled": True}
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=data_dir, torch_home=tmp_path / "torch")
    specs = UnitSpecs.from_rows([{"channel": c, "objective": "channel", "seed": c} for c in (3, 700)])
    mean, std = spec["preprocessing"]["mean"], spec["preprocessing"]["std"]
    result = optimize_inputs(
        model,
        "features.18.1",
        specs,
        image_shape=(3, 224, 224),
        steps=4,
        lr=0.05,
        parameterization="fft",
        transforms=True,
        input_mean=mean,
        input_std=std,
        progress=False,
    )
    start = unit_activation(
        model, "features.18.1", specs, initial_images(specs, (3, 224, 224)), input_mean=mean, input_std=std
    )
    assert result.images.shape == (2, 3, 224, 224)
    assert (result.final_unit > start).all()
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_optimisation_climbs_on_the_folded_copy_and_reports_the_model_itself(data_dir, default_config, tmp_path):
    """The first step's objective (before any update, the same transform) is the same with and without folding,
    and the final activations are the unmodified model's on the final images."""
    from unitscope.models.registry import build_model
    from unitscope.studies.actmax.render import unit_activation

    spec = {**default_config["models"]["mobilenet_v2_imagenet"], "enabled": True}
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=data_dir, torch_home=tmp_path / "torch")
    specs = UnitSpecs.from_rows([{"channel": c, "objective": "channel", "seed": 0} for c in (5, 925)])
    pre = spec["preprocessing"]
    settings = {
        "image_shape": (3, 224, 224), "steps": 2, "parameterization": "fft", "transforms": True,
        "input_mean": pre["mean"], "input_std": pre["std"], "progress": False,
    }  # fmt: skip
    folded = optimize_inputs(model, "features.18.1", specs, **settings)
    plain = optimize_inputs(model, "features.18.1", specs, fold_batchnorm=False, **settings)
    assert np.allclose(folded.objective_curve[0], plain.objective_curve[0], rtol=1e-4, atol=1e-5)
    again = unit_activation(
        model, "features.18.1", specs, folded.images, input_mean=pre["mean"], input_std=pre["std"]
    )  # fmt: skip
    assert np.allclose(folded.final_unit, again, rtol=1e-6, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_registry_targets_are_checked_against_the_model_registry():
    from unitscope.studies.actmax.plan import registry_targets

    models = {"mobilenet_v2_imagenet": {"enabled": True}, "resnet18_imagenet": {"enabled": False}}
    target = {**REGISTRY_DEFAULTS, "model": "mobilenet_v2_imagenet", "layer": "features.18", "channels": [1]}
    config = {"models": models, "actmax": {"enabled": True, "registry_targets": [target]}}
    resolved = registry_targets(config)
    assert list(resolved) == [("mobilenet_v2_imagenet", "features.18")]
    settings = resolved[("mobilenet_v2_imagenet", "features.18")]
    assert settings.channels == (1,) and (settings.face_rule, settings.unit_layer) == (None, None)
    assert type(settings).from_params(settings.as_params()) == settings
    assert registry_targets({**config, "actmax": {"enabled": False, "registry_targets": [target]}}) == {}
    for bad, message in (
        ({**target, "model": "vgg"}, "registry_targets\\[0\\].model: unknown model 'vgg'"),
        ({**target, "model": "resnet18_imagenet"}, "is disabled"),
    ):
        with pytest.raises(ValueError, match=message):
            registry_targets({"models": models, "actmax": {"enabled": True, "registry_targets": [bad]}})
    with pytest.raises(ValueError, match="listed twice"):
        registry_targets({"models": models, "actmax": {"enabled": True, "registry_targets": [target, target]}})


def test_registry_target_from_faces_needs_the_faces_study_on_its_model_and_layer():
    from unitscope.studies.actmax.plan import registry_targets

    preprocessing = {"resize": 232, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    models = {
        "mobilenet_v2_imagenet": {"enabled": True, "arch": "torchvision.mobilenet_v2", "preprocessing": preprocessing}
    }
    faces = {"enabled": True, "model": "mobilenet_v2_imagenet", "layer": None}
    target = {**REGISTRY_DEFAULTS, "model": "mobilenet_v2_imagenet", "layer": "features.18.1", "from_faces": 3}

    def config(target, faces=faces):
        return {"models": models, "faces": faces, "actmax": {"enabled": True, "registry_targets": [target]}}

    resolved = registry_targets(config(target))[("mobilenet_v2_imagenet", "features.18.1")]
    assert (resolved.unit_layer, resolved.face_rule) == ("features.18", "top_percentile")
    contrast = {**faces, "selection": {"use": "contrast"}}
    assert registry_targets(config(target, contrast))[("mobilenet_v2_imagenet", "features.18.1")].face_rule == (
        "contrast"
    )
    for bad, bad_faces, message in (
        (target, {**faces, "enabled": False}, r"registry_targets\[0\]\.from_faces: the faces study is disabled"),
        ({**target, "layer": "features.17"}, faces, r"selects channels of mobilenet_v2_imagenet features\.18; .*"),
        ({**target, "layer": "features.180"}, faces, r"not mobilenet_v2_imagenet features\.180$"),
        ({**target, "from_faces": 0}, faces, r"registry_targets\[0\]: no channels to visualise"),
    ):
        with pytest.raises(ValueError, match=message):
            registry_targets(config(bad, bad_faces))


def test_registry_channels_from_the_faces_selection_table(tmp_path):
    from unitscope.studies.actmax.plan import RegistryTarget
    from unitscope.studies.actmax.registry import target_channels

    selection = pd.DataFrame(
        {
            "channel": [0, 1, 2, 3],
            "face_mean": [0.5, 2.0, 1.0, 3.0],
            "top_percentile": [True, True, False, True],
            "d_min": [0.1, 0.2, 0.3, 0.4],
            "contrast": [False, False, True, False],
        }
    )
    selection.to_parquet(tmp_path / "selection.parquet")
    entry = {**REGISTRY_DEFAULTS, "model": "m", "layer": "l", "channels": [1, 7], "from_faces": 2}
    target = RegistryTarget.from_entry(entry, face_rule="top_percentile", unit_layer="l")
    assert target_channels(target, tmp_path / "selection.parquet") == [1, 7, 3]  # 3 and 1 by face mean, no repeat
    contrast = RegistryTarget.from_entry({**entry, "channels": []}, face_rule="contrast", unit_layer="l")
    assert target_channels(contrast, tmp_path / "selection.parquet") == [2]
    with pytest.raises(ValueError, match="from_faces needs the faces selection table"):
        target_channels(target)


def test_config_defaults_are_the_issue_defaults_and_bad_values_name_their_key(default_config):
    from unitscope.config import ConfigError, validate_config

    config = validate_config(default_config)["actmax"]
    assert config["enabled"] and config["dataset"]["rho"] == 0.99
    assert config["units"] == {
        "layers": ["conv1", "conv2", "conv3"],
        "channels_per_layer": 5,
        "extra_channels": {},
        "neurons_per_channel": 3,
    }
    optimization = config["optimization"]
    assert (optimization["seeds"], optimization["steps"], optimization["lr"], optimization["snapshot_every"]) == (
        5,
        500,
        0.05,
        50,
    )
    assert optimization["objectives"] == ["channel", "neuron", "topk", "class_conditional"]
    registry = [(t["model"], t["layer"], t["from_faces"], t["channels"]) for t in config["registry_targets"]]
    # the faces study's channels; ResNet-56 layer3's units, which nefesi and the dissection also label, are the
    # atlas's to optimise (the lesions study scores its images)
    assert registry == [("mobilenet_v2_imagenet", "features.18.1", 3, [])]
    for key, value, expected in (
        ("dataset", {"rho": 1.5}, "actmax.dataset.rho"),
        ("optimization", {"objectives": ["mean"]}, "actmax.optimization.objectives"),
        ("units", {"layer": ["conv1"]}, "unknown key 'layer'"),
    ):
        bad = json.loads(json.dumps(default_config))
        bad["actmax"] = {key: value}
        with pytest.raises(ConfigError, match=expected):
            validate_config(bad)


def test_registry_stage_writes_runs_table_and_grids(data_dir, default_config, tmp_path):
    from unitscope.settings import ModelRef
    from unitscope.studies.actmax.plan import RegistryTarget
    from unitscope.studies.actmax.runs import load_run
    from unitscope.studies.actmax.stages import run_registry_target

    config = {**default_config, "data_dir": str(data_dir), "resources_dir": str(tmp_path)}
    model = ModelRef.from_config(config, "resnet20_cifar")
    entry = {
        "model": "resnet20_cifar",
        "layer": "layer3",
        "channels": [0, 9],
        "from_faces": 0,
        "objectives": ["channel", "topk"],
        "seeds": 2,
        "steps": 3,
        "lr": 0.05,
        "parameterization": "auto",
        "l2": 0.0,
        "tv": 0.0,
    }
    target = RegistryTarget.from_entry(entry)
    out = tmp_path / "registry"
    run_target = functools.partial(run_registry_target, model=model)
    table = run_target(
        target, npz_path=out / "layer3.npz", table_path=out / "layer3.parquet", images_dir=out / "images"
    )
    assert len(table) == 2 * 2 * 2 and set(table["parameterization"]) == {"pixel"}  # 32 px: plain pixels
    run, saved = load_run(out / "layer3.npz", out / "layer3.parquet")
    assert run["images"].shape == (8, 3, 32, 32) and len(saved) == 8
    assert len(list((out / "images").rglob("*.png"))) == 2 * 2

    from PIL import Image

    from unitscope.studies.actmax.section import registry_outputs

    paths = [("resnet20_cifar", "layer3", out / "layer3.npz", out / "layer3.parquet")]
    registry = registry_outputs(paths, tmp_path / "figures")
    summary, units = registry.summary, registry.units
    assert [(u["layer"], u["channel"]) for u in units] == [("layer3", 0), ("layer3", 9)]
    assert summary[0]["runs"] == 8 and 'href="units/resnet20_cifar__layer3__9.html"' in registry.tables["channels"]
    with Image.open(tmp_path / "figures" / "resnet20_cifar__layer3__0.png") as grid:
        assert grid.size == (2 * 34, 12 + 2 * 34)  # rows: 2 objectives, columns: 2 seeds, 32 px + gaps
    assert units[0]["images"][0]["src"] == "figures/actmax/units/resnet20_cifar__layer3__0.png"
    with pytest.raises(ValueError, match=r"has 64 channels, but the units it stands for \('layer2'\) have 32"):
        run_target(
            RegistryTarget.from_entry(entry, unit_layer="layer2"),
            npz_path=out / "x.npz",
            table_path=out / "x.parquet",
            images_dir=out / "x",
        )
