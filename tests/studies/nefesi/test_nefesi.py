"""nefesi analysis on real CIFAR-10 images: streaming top-N, Neuron Features and indexes of planted channels."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout, write_manifest
from unitscope.models.cifar_resnet import cifar_resnet20
from unitscope.models.preprocessing import build_transform
from unitscope.models.receptive_field import receptive_field
from unitscope.studies.nefesi.decomposition import decompose_image
from unitscope.studies.nefesi.errors import NefesiError
from unitscope.studies.nefesi.hierarchy import hierarchy_weights
from unitscope.studies.nefesi.images import image_table, nf_rgb
from unitscope.studies.nefesi.indexes import class_selectivity, selectivity_table
from unitscope.studies.nefesi.probes import (
    LUMA,
    Transform,
    apply_transform,
    per_channel_responses,
    probe_layer,
    tensor_batches,
)
from unitscope.studies.nefesi.topn import (
    StreamingTopN,
    collect_top_n,
    full_sort_top_n,
    read_layer_peaks,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_SOURCE = {
    "kind": "folder",
    "root": "objects_cifar10",
    "labels": "labels.csv",
    "path_column": "path",
    "label_column": "label",
}


@pytest.fixture(scope="module")
def cifar(data_dir, tmp_path_factory):
    """40 real CIFAR-10 test images (normalised 32 px tensors) and their manifest."""
    manifest = build_manifest("objects", "object", folder_layout("objects", CIFAR_SOURCE, data_dir), 40, 0)
    path = tmp_path_factory.mktemp("cifar") / "manifest.parquet"
    write_manifest(manifest, path)
    dataset = ManifestDataset(
        manifest[manifest["included"]],
        build_transform({"resize": 32, "crop": 32, "mean": list(MEAN), "std": list(STD)}),
    )
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), path


def pixel_model(filters: torch.Tensor) -> nn.Sequential:
    """The given filters applied to pixel values (normalisation folded into the conv, so its zero padding is the
    mean colour, as in a real network), then ReLU. Layer "1"."""
    std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    conv = nn.Conv2d(3, filters.shape[0], filters.shape[-1], padding=filters.shape[-1] // 2)
    with torch.no_grad():
        conv.weight.copy_(filters * std)
        conv.bias.copy_((filters * mean).sum(dim=(1, 2, 3)))
    return nn.Sequential(conv, nn.ReLU()).eval()


def analyse(model, layer, images, n, classes=None):
    batches = [(images[i : i + 16], torch.arange(i, min(i + 16, len(images)))) for i in range(0, len(images), 16)]
    top = collect_top_n(model, batches, [layer], n, progress=False)[layer]
    probes = probe_layer(
        model,
        layer,
        top,
        tensor_batches(images),
        image_size=tuple(images.shape[-2:]),
        mean=MEAN,
        std=STD,
        progress=False,
        batch_size=512,
    )
    codes = np.zeros(len(images), dtype=np.int64) if classes is None else classes
    table = selectivity_table(top, probes, codes, [str(k) for k in range(int(codes.max()) + 1)], mean=MEAN, std=STD)
    return top, probes, table


def luminance_filter(spatial: torch.Tensor) -> torch.Tensor:
    return torch.tensor(LUMA).view(3, 1, 1) * spatial


def test_streaming_top_n_equals_a_full_sort():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(53, 6, 5, 4, generator=generator)
    maps[10:20, 2] = 1.5  # ties: equal maxima in many images and locations
    stream = StreamingTopN(7)
    for start in range(0, 53, 9):
        stream.update(maps[start : start + 9], torch.arange(start, min(start + 9, 53)))
    streamed, reference = stream.result(), full_sort_top_n(maps, 7)
    for field in ("values", "image", "y", "x"):
        torch.testing.assert_close(getattr(streamed, field), getattr(reference, field))
    assert all(len(set(row.tolist())) == 7 for row in streamed.image)  # each image at most once per channel
    flat_peak = maps.flatten(2).amax(2)
    assert torch.equal(streamed.values[:, 0], flat_peak.amax(0))


def test_top_n_from_the_extraction_stores_peaks_equals_the_streaming_pass(cifar, tmp_path):
    """The workflow's top-N comes from the peaks its extraction pass stores (two datasets' stores, read back in the
    image table's order): the same exemplars as nefesi's streaming pass over the same images."""
    from unitscope.extract import extract_layers

    images, manifest = cifar
    model = cifar_resnet20().eval()  # seeded random weights: the same model in both passes
    table = image_table({"objects": manifest, "again": manifest})  # 80 rows: the second set repeats the first
    stores = []
    for name in ("objects", "again"):
        loader = [(images[i : i + 16], torch.arange(i, min(i + 16, len(images)))) for i in range(0, len(images), 16)]
        made = extract_layers(model, loader, list(table["image_id"][:40]), {"layer2": False}, tmp_path / name)
        stores.append(str(made["layer2"]))
    peaks = read_layer_peaks(table, ("objects", "again"), stores, "layer2")
    top = peaks.top_n(7)
    batches = [(torch.cat([images, images]), torch.arange(80))]
    streamed = collect_top_n(model, batches, ["layer2"], 7, progress=False)["layer2"]
    torch.testing.assert_close(top.values, streamed.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(top.image, streamed.image) and torch.equal(top.y, streamed.y) and torch.equal(top.x, streamed.x)
    assert top.map_size == streamed.map_size == (16, 16)
    assert torch.equal(top.image[:, 1:6:2], top.image[:, 0:6:2] + 40)  # each image's twin right after it: ties in order
    with pytest.raises(NefesiError, match="holds no peaks of layer 'layer3'"):
        read_layer_peaks(table, ("objects", "again"), stores, "layer3")


def test_neuron_feature_of_a_planted_channel_shows_its_pattern(cifar):
    images = cifar[0].clone()
    pattern = torch.zeros(3, 7, 7)
    pattern[0] = torch.eye(7) * 0.9 + 0.05  # a red diagonal on a dark ground
    pattern[1] = 0.05
    pattern[2] = torch.eye(7).flip(1) * 0.6  # and a blue anti-diagonal
    planted = [3, 8, 11, 17, 22, 29, 33, 38]
    generator = torch.Generator().manual_seed(1)
    for i in planted:
        y, x = (int(v) for v in torch.randint(2, 23, (2,), generator=generator))
        pixels = images[i] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        pixels[:, y : y + 7, x : x + 7] = pattern
        images[i] = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    detector = pattern - pattern.mean(dim=(1, 2), keepdim=True)
    other = torch.randn(3, 7, 7, generator=generator) * 0.1
    model = pixel_model(torch.stack([detector, other]))
    top, probes, _ = analyse(model, "1", images, len(planted))
    assert set(top.image[0].tolist()) == set(planted)
    nf = torch.as_tensor(nf_rgb(probes.nf, MEAN, STD)[0]).permute(2, 0, 1)  # [3, 7, 7] pixels
    correlation = np.corrcoef(nf.flatten().numpy(), pattern.flatten().numpy())[0, 1]
    assert correlation > 0.95
    assert abs(float(probes.nf[1].mean())) < 1.0  # the other channel's NF is a plain average, no pattern imposed


def test_color_index_is_high_for_a_pure_colour_and_zero_for_luminance(cifar):
    images, _ = cifar
    red = torch.tensor([1.0, -0.5, -0.5]).view(3, 1, 1) * torch.ones(5, 5) / 25
    luminance = luminance_filter(torch.ones(5, 5) / 25)
    _, _, table = analyse(pixel_model(torch.stack([red, luminance])), "1", images, 10)
    assert table.loc[0, "color_index"] > 0.95
    assert table.loc[1, "color_index"] < 0.01
    assert "red" in table.loc[0, "color_names"] or table.loc[0, "dominant_color"] in ("red", "pink", "brown")


def test_orientation_index_separates_an_oriented_edge_from_a_blob(cifar):
    images, _ = cifar
    edge = torch.zeros(7, 7)
    edge[:3], edge[4:] = 1.0, -1.0  # bright above dark: a horizontal edge
    yy, xx = torch.meshgrid(torch.arange(7.0) - 3, torch.arange(7.0) - 3, indexing="ij")
    blob = torch.exp(-(yy**2 + xx**2) / (2 * 1.5**2))
    model = pixel_model(torch.stack([luminance_filter(edge / 21), luminance_filter(blob / blob.sum())]))
    _, _, table = analyse(model, "1", images, 10)
    edge_row, blob_row = table.loc[0], table.loc[1]
    assert edge_row["orientation_index"] > 0.5
    assert blob_row["orientation_index"] < 0.1
    # mirror semantics: flipping top/bottom inverts a horizontal edge, flipping left/right keeps it
    assert edge_row["ratio_mirror000"] < 0.1 and edge_row["ratio_mirror090"] > 0.9
    assert blob_row["symmetry_index"] > 0.9
    assert abs((edge_row["preferred_angle"] + 90) % 180 - 90) < 10  # NF edge is horizontal (0°)


def test_class_index_is_one_for_a_single_class_and_zero_for_uniform():
    n = 10
    weights = torch.full((3, n), 1 / n)
    one_class = torch.zeros(n, dtype=torch.int64)
    uniform = torch.arange(n) % 5
    half = torch.tensor([0] * 8 + [1, 2])
    result = class_selectivity(weights, torch.stack([one_class, uniform, half]), 5, coverage=1.0, population=0.1)
    np.testing.assert_allclose(result["index"], [1.0, 0.0, (5 - 3) / (5 - 1)])
    # float32 weights that sum to 1 only up to rounding still reach a coverage of 1
    rounded = torch.full((1, 7), 1 / 7, dtype=torch.float32)
    assert class_selectivity(rounded, torch.arange(7).view(1, 7), 7)["index"][0] == 0.0
    np.testing.assert_array_equal(result["population"], [1, 5, 3])
    # nefesi's own N when the set has at least N classes: each exemplar its own class gives M = N, index 0
    distinct = class_selectivity(torch.full((1, n), 1 / n), torch.arange(n).view(1, n), 1000)
    assert distinct["index"][0] == 0.0 and distinct["K"][0] == n
    # coverage below 1: the fewest classes reaching it
    partial = class_selectivity(weights[:1], half.view(1, n), 5, coverage=0.5)
    assert partial["M"][0] == 1 and partial["index"][0] == 1.0


def test_transforms_move_pixels_exactly_inside_the_region_only():
    generator = torch.Generator().manual_seed(0)
    window = torch.randn(1, 3, 12, 12, generator=generator)
    region = torch.tensor([[2, 3, 9, 10]])  # 7 x 7
    inner = window[:, :, 2:9, 3:10]
    mean, std = torch.tensor(MEAN), torch.tensor(STD)

    def run(kind, angle=0.0):
        out = apply_transform(window, region, Transform("t", kind, angle), mean, std)
        outside = torch.ones(12, 12, dtype=torch.bool)
        outside[2:9, 3:10] = False
        assert torch.equal(out[..., outside], window[..., outside])
        return out[:, :, 2:9, 3:10]

    torch.testing.assert_close(run("rotate", 90.0), torch.rot90(inner, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(run("rotate", 180.0), torch.rot90(inner, 2, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(run("mirror", 0.0), inner.flip(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(run("mirror", 90.0), inner.flip(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(run("mirror", 135.0), inner.transpose(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(run("mirror", 45.0), inner.flip(2, 3).transpose(2, 3), atol=1e-5, rtol=0)
    gray = run("gray") * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    torch.testing.assert_close(gray[:, 0], gray[:, 1]) and torch.testing.assert_close(gray[:, 1], gray[:, 2])
    pixels = inner * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    torch.testing.assert_close(gray[:, 0], (pixels * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1))


def test_batched_probes_equal_the_per_channel_whole_image_loop(cifar):
    images = cifar[0][:16]
    torch.manual_seed(0)
    model = cifar_resnet20().eval()
    top = collect_top_n(model, [(images, torch.arange(16))], ["layer1"], 3, progress=False)["layer1"]
    probes = probe_layer(
        model, "layer1", top, tensor_batches(images), image_size=(32, 32), mean=MEAN, std=STD, progress=False
    )
    channels = [0, 5, 11]
    reference = per_channel_responses(model, "layer1", top, images, mean=MEAN, std=STD, channels=channels)
    torch.testing.assert_close(probes.responses[channels], reference, rtol=1e-4, atol=1e-4)
    assert probes.probes < top.channels * top.n  # crops shared by several channels were probed once


def test_hierarchy_weights_find_the_shallow_channel_a_deep_one_reads():
    torch.manual_seed(0)
    shallow = nn.Conv2d(3, 4, 3, padding=1)
    deep = nn.Conv2d(4, 2, 3, padding=1)
    with torch.no_grad():
        deep.weight.zero_()
        deep.weight[0, 2] = 1.0  # deep channel 0 sums shallow channel 2 over its 3x3 neighbourhood
        deep.weight[1, 0] = 1.0
        deep.bias.zero_()
    model = nn.Sequential(shallow, nn.ReLU(), deep, nn.ReLU()).eval()
    images = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    tops = collect_top_n(model, [(images, torch.arange(30))], ["1", "3"], 5, progress=False)
    probes = probe_layer(
        model,
        "3",
        tops["3"],
        tensor_batches(images),
        image_size=(16, 16),
        mean=MEAN,
        std=STD,
        shallower="1",
        progress=False,
    )
    weights = hierarchy_weights(probes.children, tops["3"], tops["1"])
    assert weights.shape == (2, 4)
    assert np.argmax(weights[0]) == 2 and np.argmax(weights[1]) == 0
    assert 0 < weights.max() <= 1 + 1e-6


def test_image_decomposition_keeps_distinct_positions():
    field = receptive_field(nn.Sequential(nn.Conv2d(3, 3, 5, padding=2)), "0")
    maps = torch.zeros(3, 20, 20)
    maps[0, 3, 3], maps[1, 3, 4], maps[2, 15, 15] = 5.0, 4.0, 1.0  # channel 1 sits on top of channel 0
    kept = decompose_image(maps, field, torch.tensor([5.0, 4.0, 2.0]), (20, 20), count=5, max_overlap=0.3)
    assert [(k["channel"], k["y"], k["x"]) for k in kept] == [(0, 3, 3), (2, 15, 15)]
    assert kept[1]["relative"] == 0.5


def test_dead_channels_get_no_index_and_image_table_checks_labels(cifar, tmp_path):
    images, manifest_path = cifar
    model = pixel_model(torch.stack([torch.ones(3, 3, 3) / 27, -torch.ones(3, 3, 3)]))  # channel 1: never > 0
    _, _, table = analyse(model, "1", images, 5)
    assert not table.loc[0, "dead"] and table.loc[1, "dead"]
    assert math.isnan(table.loc[1, "color_index"]) and math.isnan(table.loc[1, "class_index"])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    frame = image_table({"objects": manifest_path}, max_images=12, label_names={"objects": names})
    assert len(frame) == 12 and set(frame["class"]) <= set(names)
    pooled = image_table({"objects": manifest_path, "again": manifest_path}, max_images=3)
    assert list(pooled["class"])[:1][0].startswith("objects:") and pooled["image"].tolist() == list(range(6))
    with pytest.raises(NefesiError, match="datasets.objects.label_names") as info:
        image_table({"objects": manifest_path}, label_names={"objects": ["a", "b"]})
    assert "\n" not in str(info.value)
    assert isinstance(pd.read_parquet(manifest_path), pd.DataFrame)


def test_plan_checks_targets_with_one_line_errors(default_config):
    from unitscope.config import validate_config
    from unitscope.studies.nefesi.plan import NefesiConfigError, NefesiPlan

    config = validate_config(default_config)
    plan = NefesiPlan(config)
    assert set(plan.targets) == {"resnet56_cifar", "mobilenet_v2_imagenet"}
    assert plan.layer_settings("resnet56_cifar", "layer2").shallower == "layer1"
    assert plan.layer_settings("resnet56_cifar", "layer1").shallower is None
    assert plan.top_n_settings("resnet56_cifar").top_n == config["nefesi"]["top_n"]  # the target's null: the default
    assert plan.decomposition_settings("mobilenet_v2_imagenet").layer == "features.4"
    for lookup, message in [
        (lambda: plan.layer_settings("resnet56_cifar", "layer9"), "layer 'layer9' is not in nefesi.targets"),
        (lambda: plan.decomposition_settings("resnet56_cifar"), "decompose_layer is null"),
        (lambda: plan.top_n_settings("resnet_missing"), "no target for model 'resnet_missing'"),
    ]:
        with pytest.raises(NefesiConfigError, match=re.escape(message)):
            lookup()
    assert plan.decompositions("resnet56_cifar") == []
    assert len(plan.decompositions("mobilenet_v2_imagenet", "record")) == 3
    assert len(plan.figures()) == 2 * (2 * 3 + 2) + 3
    cases = [
        ({"datasets": ["objects", "nowhere"]}, "nefesi.targets[0].datasets: unknown dataset 'nowhere'"),
        ({"layers": ["layer1", "layer1"]}, "repeats a layer"),
        ({"decompose_layer": "layer9"}, "decompose_layer: 'layer9' is not one of its layers"),
        ({"model": "mobilenet_v2_imagenet"}, "listed twice"),
        ({"model": "resnet18_imagenet"}, "is disabled"),
    ]
    for change, message in cases:
        broken = json.loads(json.dumps(config))
        broken["nefesi"]["targets"][0].update(change)
        with pytest.raises(NefesiConfigError, match=re.escape(message)) as info:
            NefesiPlan(broken)
        assert "\n" not in str(info.value)
    off = json.loads(json.dumps(config))
    off["nefesi"]["enabled"] = False
    assert NefesiPlan(off).targets == {}


def test_each_setting_reaches_only_the_rules_whose_results_it_changes(data_dir):
    """Each rule gets one settings object: changing a key changes exactly the objects of the rules it affects (so
    Snakemake re-runs those and what depends on them), and run-only keys change none."""
    from wfutil import study_config

    from unitscope.config import validate_config
    from unitscope.studies.nefesi.plan import NefesiPlan

    base = validate_config(study_config("nefesi", data_dir))
    model = base["nefesi"]["targets"][0]["model"]

    def settings(change) -> dict:
        config = json.loads(json.dumps(base))
        change(config["nefesi"], config["nefesi"]["targets"][0], config)
        plan = NefesiPlan(validate_config(config))
        return {
            "top_n": plan.top_n_settings(model),
            "layer": tuple(plan.layer_settings(model, layer) for layer in plan.target(model)["layers"]),
            "layer_figures": plan.layer_figures_settings,
            "model_figures": plan.model_figures_settings(model),
            "decomposition": plan.decomposition_settings(model),
            "section": plan.section_settings,
        }

    before = settings(lambda nefesi, target, config: None)
    for objects in before.values():
        for obj in objects if isinstance(objects, tuple) else (objects,):
            assert type(obj).from_params(obj.as_params()) == obj  # what a script rebuilds from its params
    cases = [
        (lambda n, t, c: n.update(top_n=5), {"top_n", "section"}),
        (lambda n, t, c: t.update(top_n=4), {"top_n"}),
        (lambda n, t, c: t.update(max_images=5), {"top_n"}),
        (lambda n, t, c: t.update(class_by="dataset"), {"top_n"}),
        (lambda n, t, c: c["datasets"]["objects"].update(label_names=list("abcdefghij")), {"top_n"}),
        (lambda n, t, c: n.update(rotation_step=30), {"layer", "section"}),
        (lambda n, t, c: n.update(class_coverage=0.5), {"layer", "section"}),
        (lambda n, t, c: n.update(population_threshold=0.2), {"layer", "section"}),
        (lambda n, t, c: n.update(color_name_share=0.3), {"layer"}),
        (lambda n, t, c: n.update(order_by="class"), {"layer_figures", "section"}),
        (lambda n, t, c: n.update(top_channels=4), {"layer_figures"}),
        (lambda n, t, c: t.update(hierarchy_channel=1), {"model_figures"}),
        (lambda n, t, c: n["hierarchy"].update(children=3), {"model_figures"}),
        (lambda n, t, c: n["decomposition"].update(channels=2), {"decomposition"}),
        (lambda n, t, c: n["decomposition"].update(max_overlap=0.5), {"decomposition"}),
        (lambda n, t, c: n.update(color_selective_threshold=0.2), {"section"}),
        (lambda n, t, c: n.update(unit_exemplars=4), {"section"}),
        (lambda n, t, c: n.update(probe_batch_size=16), set()),  # run-only
        (lambda n, t, c: c["extraction"].update(batch_size=2, num_workers=1, device="cpu"), set()),  # run-only
    ]
    for index, (change, expected) in enumerate(cases):
        after = settings(change)
        assert {name for name in before if after[name] != before[name]} == expected, f"case {index}"


def test_unit_figure_crops_average_to_the_neuron_feature(cifar, tmp_path):
    from PIL import Image

    from unitscope.studies.nefesi.images import exemplar_crops, layer_field, model_inputs
    from unitscope.studies.nefesi.topn import exemplar_frame
    from unitscope.studies.nefesi.units import draw_unit_figures, merge_units

    images, manifest_path = cifar
    generator = torch.Generator().manual_seed(3)
    model = pixel_model(torch.randn(2, 3, 5, 5, generator=generator) * 0.2)  # 5 px fields, padding 2
    top, probes, _ = analyse(model, "1", images, 6)
    field = receptive_field(model, "1")
    info = {
        "receptive_field": field.as_dict(),
        "nf_extent": [list(probes.nf_extent[0]), list(probes.nf_extent[1])],
        "images": len(images),
    }
    assert layer_field(info) == field
    nf = nf_rgb(probes.nf, MEAN, STD)
    corner = exemplar_crops(images[:1], field, [0], [0], info["nf_extent"], MEAN, STD)[0]  # field from (-2, -2)
    np.testing.assert_allclose(corner[:2], np.broadcast_to(MEAN, (2, 5, 3)), atol=1e-6)  # mean colour outside
    np.testing.assert_allclose(corner[2:, 2:], nf_rgb(images[:1, :, :3, :3], MEAN, STD)[0], atol=1e-6)
    for channel in range(top.channels):
        crops = exemplar_crops(
            images[top.image[channel]], field, top.y[channel], top.x[channel], info["nf_extent"], MEAN, STD
        )
        assert crops.shape == (top.n, 5, 5, 3) and crops.min() >= 0 and crops.max() <= 1
        mean_of_crops = np.einsum("n,nhwc->hwc", top.weights()[channel].numpy(), crops)
        np.testing.assert_allclose(mean_of_crops, nf[channel], atol=1e-5)  # the NF is what the crops average

    # the stage, from the files the workflow writes: image table, exemplars, nf.npz
    frame = image_table({"objects": manifest_path})
    preprocessing = {"resize": 32, "crop": 32, "mean": list(MEAN), "std": list(STD)}
    assert torch.equal(model_inputs(frame.iloc[[4, 1]], preprocessing), images[[4, 1]])  # the view the NF used
    exemplars_path, images_path, nf_path = (
        tmp_path / "exemplars.parquet",
        tmp_path / "images.parquet",
        tmp_path / "nf.npz",
    )
    exemplar_frame({"1": top}).to_parquet(exemplars_path)
    frame.to_parquet(images_path)
    np.savez_compressed(nf_path, nf=nf.astype(np.float16))
    drawn = draw_unit_figures(
        model_name="pixels",
        units=[("1", 1), ("1", 0)],
        exemplars_path=exemplars_path,
        images_path=images_path,
        nf_paths={"1": nf_path},
        infos={"1": info},
        preprocessing=preprocessing,
        count=4,
        out_dir=tmp_path,
    )
    assert drawn[("1", 0)] == {"file": "pixels__1__0.png", "exemplars": 6, "shown": 4}
    with Image.open(tmp_path / "pixels__1__1.png") as png:
        assert png.width > 300 and png.height > 150
        assert np.asarray(png.convert("L")).std() > 10  # drawn pixels, not a blank canvas

    twice = [
        {"model": "m", "layer": "1", "channel": 0, "facts": {"nefesi: highest color index of its layer": 0.9, "x": 1}},
        {"model": "m", "layer": "1", "channel": 2, "facts": {"nefesi: highest color index of its layer": 0.1}},
        {"model": "m", "layer": "1", "channel": 0, "facts": {"nefesi: highest class index of its layer": 0.5, "x": 1}},
    ]
    merged = merge_units(twice)
    assert [unit["channel"] for unit in merged] == [0, 2]
    assert list(merged[0]["facts"]) == [
        "nefesi: highest color index of its layer",
        "nefesi: highest class index of its layer",
        "x",
    ]
