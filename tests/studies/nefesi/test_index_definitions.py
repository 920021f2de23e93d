"""Each nefesi index definition pinned on tiny constructed inputs whose expected values are worked out by hand in the
comments (both class-index scales, both grays), the nefesi 1.0.4 defects unitscope must not have, and on real CIFAR
images that the default options still give the numbers of the definitions they had before the options existed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout
from unitscope.models.cifar_resnet import cifar_resnet20
from unitscope.models.preprocessing import build_transform
from unitscope.models.receptive_field import layer_receptive_field
from unitscope.runtime import inference_copy
from unitscope.studies.nefesi.errors import NefesiError
from unitscope.studies.nefesi.indexes import class_selectivity, selectivity_table
from unitscope.studies.nefesi.probes import (
    LUMA,
    Transform,
    apply_transform,
    crop_geometry,
    principal_component_grey,
    probe_layer,
    tensor_batches,
    transforms,
)
from unitscope.studies.nefesi.topn import StreamingTopN, collect_top_n

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A normalisation that round-trips pixel values exactly in float32.
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
WHITE, BLACK, RED = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0)
GREEN_AS_BRIGHT_AS_RED = (0.0, 0.299 / 0.587, 0.0)  # luminance 0.299, like RED


def picture(rows: list[list[tuple]]) -> torch.Tensor:
    """A 3 x 3 image [3, 3, 3] (channels first) from rows of RGB pixels in [0, 1]."""
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def unit_model(weights: torch.Tensor) -> nn.Sequential:
    """One unit: a 3 x 3 filter on pixel values (normalisation folded in), no padding, then ReLU. On a 3 x 3 image
    its map is 1 x 1 and its field, the crop, is the whole image, turned about the image centre."""
    conv = nn.Conv2d(3, 1, 3)
    with torch.no_grad():
        conv.weight.copy_(weights.unsqueeze(0) * torch.tensor(STD).view(1, 3, 1, 1))
        conv.bias.copy_((weights * torch.tensor(MEAN).view(3, 1, 1)).sum().view(1))
    return nn.Sequential(conv, nn.ReLU()).eval()


def unit_indexes(pixels: torch.Tensor, weights: torch.Tensor, color_grey: str = "luminance"):
    """The index table row of `unit_model(weights)` with `pixels` as its one exemplar (top-1), rotations every 90°."""
    model = unit_model(weights)
    images = normalised(pixels).unsqueeze(0)
    top = collect_top_n(model, [(images, torch.arange(1))], ["1"], 1, progress=False)["1"]
    probes = probe_layer(
        model, "1", top, tensor_batches(images), image_size=(3, 3), mean=MEAN, std=STD, rotation_step=90,
        color_grey=color_grey, progress=False,
    )  # fmt: skip
    return selectivity_table(top, probes, np.zeros(1, dtype=np.int64), ["only"], mean=MEAN, std=STD).iloc[0]


# ----------------------------------------------------------------------------------------------
# colour index: luminance gray and principal-component gray


def test_colour_index_of_a_red_checkerboard_under_both_grays():
    # Red on black in a checkerboard (5 red pixels); the unit sums the red channel: R(id) = 5.
    # luminance gray: a red pixel becomes 0.299 in every channel, so R(gray) = 5 x 0.299 and
    #   CI = 1 - 0.299 = 0.701.
    # principal-component gray: the crop has two colours, so its projection takes two values, stretched to 0 and 1;
    #   the sign makes it correlate positively with luminance (red 0.299 > black 0), so red -> 1 (white) and
    #   black -> 0: R(gray) = 5, CI = clip(1 - 1, 0, 1) = 0. (nefesi 1.0.4 may take the other sign: red -> 0, CI = 1.)
    checker = picture([[RED, BLACK, RED], [BLACK, RED, BLACK], [RED, BLACK, RED]])
    red_sum = torch.zeros(3, 3, 3)
    red_sum[0] = 1.0
    luminance = unit_indexes(checker, red_sum, "luminance")
    principal = unit_indexes(checker, red_sum, "principal_component")
    assert luminance["gray_ratio"] == pytest.approx(0.299, abs=1e-5)
    assert luminance["color_index"] == pytest.approx(0.701, abs=1e-5)
    assert principal["gray_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert principal["color_index"] == pytest.approx(0.0, abs=1e-5)


def test_principal_component_gray_of_hand_made_crops():
    inside = torch.ones(1, 3, 3, dtype=torch.bool)
    # Two colours of equal luminance (red, and a green as bright): the projection is uncorrelated with luminance, so
    # the tie rule holds: the component's first non-zero coordinate is positive. In opponent space
    # O = ((R+G+B-1.5)/1.5, R-G, (R+G-2B)/2), red - green = (0.327, 1.509, 0.245): its first coordinate is positive,
    # so the component points from green to red: red -> 1, green -> 0.
    isoluminant = picture([[RED, GREEN_AS_BRIGHT_AS_RED, RED]] * 3)
    expected = torch.tensor([[1.0, 0.0, 1.0]] * 3)
    torch.testing.assert_close(principal_component_grey(isoluminant.unsqueeze(0), inside)[0, 0], expected)
    # A flat crop has no principal direction: it keeps its luminance, 0.299·0.2 + 0.587·0.4 + 0.114·0.6 = 0.3630.
    flat = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 3, 3)
    torch.testing.assert_close(principal_component_grey(flat, inside), torch.full((1, 1, 3, 3), 0.3630))
    # Only the crop counts: a 2 x 2 crop of black and white in a window of red stays 0/1 whatever the red is.
    window = picture([[RED, RED, RED], [RED, BLACK, WHITE], [RED, WHITE, BLACK]]).unsqueeze(0)
    crop = torch.zeros(1, 3, 3, dtype=torch.bool)
    crop[0, 1:, 1:] = True
    torch.testing.assert_close(principal_component_grey(window, crop)[0, 0, 1:, 1:], torch.tensor([[0.0, 1], [1, 0]]))


def test_principal_component_gray_sign_is_fixed(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(6, 3, 5, 7, generator=generator)
    inside = torch.zeros(6, 5, 7, dtype=torch.bool)
    inside[:, 1:5, 2:6] = True
    checker = picture([[RED, BLACK, RED], [BLACK, RED, BLACK], [RED, BLACK, RED]]).unsqueeze(0)
    isoluminant = picture([[RED, GREEN_AS_BRIGHT_AS_RED, RED]] * 3).unsqueeze(0)
    full = torch.ones(1, 3, 3, dtype=torch.bool)
    cases = [(crops, inside), (checker, full), (isoluminant, full)]
    before = [principal_component_grey(c, m) for c, m in cases]
    # An inverted crop (1 - pixels) has the same principal axis and the inverted luminance: its gray is 1 - gray.
    torch.testing.assert_close(principal_component_grey(1 - crops, inside)[..., 1:5, 2:6], 1 - before[0][..., 1:5, 2:6])
    # The eigensolver may return either sign of the component (nefesi 1.0.4 keeps whichever it gets): flipping it
    # changes nothing here, for correlated and for isoluminant crops.
    eigh = torch.linalg.eigh

    def flipped(matrix):
        values, vectors = eigh(matrix)
        return torch.return_types.linalg_eigh((values, -vectors))

    monkeypatch.setattr(torch.linalg, "eigh", flipped)
    for (c, m), reference in zip(cases, before, strict=True):
        torch.testing.assert_close(principal_component_grey(c, m)[m.unsqueeze(1)], reference[m.unsqueeze(1)])


# ----------------------------------------------------------------------------------------------
# symmetry and orientation


TOP_ROW_LUMINANCE = torch.tensor(LUMA).view(3, 1, 1) * torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0]])


def test_symmetry_and_orientation_of_a_bar_and_of_a_symmetric_cross():
    # The unit sums the luminance of the top row (white: 1). Bar: top row white, the rest black: R(id) = 3.
    # Mirrors: 0° (top<->bottom) moves the bar to the bottom: 0/3; 90° (left<->right) keeps it: 3/3; 45° (axis
    # bottom-left to top-right) puts the right column, read bottom to top (black, black, white), in the top row:
    # 1/3; 135° (the main diagonal) puts the left column there (white, black, black): 1/3.
    # SI = (0 + 1/3 + 1 + 1/3) / 4 = 5/12.
    # Rotations by 90°, 180°, 270° (counter-clockwise; no 360°): the top row then holds the right column read top to
    # bottom (white, black, black): 1/3, the bottom row: 0, the left column read bottom to top: 1/3.
    # OI = 1 - (1/3 + 0 + 1/3) / 3 = 7/9. (A 360° "rotation", the crop itself with ratio 1, would make it 7/12.)
    bar = unit_indexes(picture([[WHITE] * 3, [BLACK] * 3, [BLACK] * 3]), TOP_ROW_LUMINANCE)
    assert [bar[f"ratio_mirror{a:03d}"] for a in (0, 45, 90, 135)] == pytest.approx([0, 1 / 3, 1, 1 / 3], abs=1e-5)
    assert bar["symmetry_index"] == pytest.approx(5 / 12, abs=1e-5)
    assert [bar[f"ratio_rot{a:03d}"] for a in (90, 180, 270)] == pytest.approx([1 / 3, 0, 1 / 3], abs=1e-5)
    assert bar["orientation_index"] == pytest.approx(7 / 9, abs=1e-5)
    # A white cross on black is symmetric about all four axes and under quarter turns: every ratio is 1, so SI = 1
    # and OI = 0, whatever the unit looks for.
    cross = unit_indexes(picture([[BLACK, WHITE, BLACK], [WHITE] * 3, [BLACK, WHITE, BLACK]]), TOP_ROW_LUMINANCE)
    assert cross["symmetry_index"] == pytest.approx(1.0, abs=1e-5)
    assert cross["orientation_index"] == pytest.approx(0.0, abs=1e-5)


def test_diagonal_mirror_of_a_non_square_crop_moves_pixels_to_their_reflections():
    # A 2 x 4 crop (rows 0-1, columns 0-3; centre (0.5, 1.5)) mirrored about the main diagonal (135°): output pixel
    # (r, c) takes the pixel at (c - 1, r + 1). The middle 2 x 2 block (columns 1-2) is transposed in place; the
    # other pixels' sources, e.g. (-1, 1) for (0, 0), leave the crop, so they take the mean colour (0). nefesi 1.0.4
    # transposes the whole 2 x 4 crop into 4 x 2 and scrambles it.
    window = torch.arange(1.0, 25.0).view(1, 3, 2, 4)
    out = apply_transform(window, torch.tensor([[0, 0, 2, 4]]), Transform("m", "mirror", 135.0), *_norm())
    expected = torch.zeros_like(window)
    expected[..., 1:3] = window[..., 1:3].transpose(2, 3)
    torch.testing.assert_close(out, expected)
    # and about the anti-diagonal (45°): (r, c) takes the pixel at (2 - c, 2 - r); the middle block turns over it
    out = apply_transform(window, torch.tensor([[0, 0, 2, 4]]), Transform("m", "mirror", 45.0), *_norm())
    expected[..., 1:3] = window[..., 1:3].flip(2, 3).transpose(2, 3)
    torch.testing.assert_close(out, expected)


def _norm():
    return torch.tensor(MEAN), torch.tensor(STD)


# ----------------------------------------------------------------------------------------------
# class index: the two scales


def test_class_index_scales_with_m_2_of_10_classes_and_top_100():
    # 100 exemplars of equal weight: 60 of class 3, 40 of class 7 -> f = (0.6, 0.4), M = 2 (coverage 1), top class 3,
    # population code 2 (both >= 0.1). With 10 classes in the set:
    #   classes: K = min(100, 10) = 10, CSI = (10 - 2) / (10 - 1) = 8/9 = 0.8889
    #   top_n:   N = 100,             CSI = (100 - 2) / (100 - 1) = 98/99 = 0.9899 (nefesi's)
    # 1 - 98/99 = 1/99 = (1 - 8/9) · 9/99. A channel holding only 50 exemplars (the rest empty slots): N = 50,
    #   top_n: (50 - 2) / 49 = 48/49; classes: K = min(50, 10) = 10, 8/9 again.
    classes = torch.tensor([[3] * 60 + [7] * 40, [3] * 30 + [7] * 20 + [-1] * 50])
    weights = torch.stack([torch.full((100,), 0.01), torch.cat([torch.full((50,), 0.02), torch.zeros(50)])])
    by_classes = class_selectivity(weights, classes, 10, scale="classes")
    by_top_n = class_selectivity(weights, classes, 10, scale="top_n")
    np.testing.assert_allclose(by_classes["index"], [8 / 9, 8 / 9])
    np.testing.assert_allclose(by_top_n["index"], [98 / 99, 48 / 49])
    np.testing.assert_allclose(1 - by_top_n["index"][0], (1 - by_classes["index"][0]) * 9 / 99)
    for same in ("M", "K", "population", "freq"):  # M, top class and population code do not depend on the scale
        np.testing.assert_array_equal(by_classes[same], by_top_n[same])
    np.testing.assert_array_equal(by_classes["M"], [2, 2])
    assert by_classes["freq"][0].argmax() == 3 and by_classes["freq"][0, 3] == pytest.approx(0.6)
    with pytest.raises(NefesiError, match="class_index_scale"):
        class_selectivity(weights, classes, 10, scale="nefesi")


# ----------------------------------------------------------------------------------------------
# nefesi 1.0.4's defects, absent here


def test_no_360_degree_rotation_eval_mode_and_a_sorted_top_n():
    # rotations are s, 2s, ..., 360 - s: none is 0° or 360° (the crop itself)
    for step, count in ((15, 23), (90, 3), (45, 7)):
        angles = [t.angle for t in transforms(step) if t.kind == "rotate"]
        assert len(angles) == count and all(0 < a < 360 for a in angles)
    assert [t.name for t in transforms(90, "principal_component")][:2] == ["identity", "gray_pc"]
    with pytest.raises(NefesiError, match="color_grey"):
        transforms(15, "pca")
    # activations are read in evaluation mode, even from a model handed over in training mode: no module whose output
    # depends on the mode trains, and an image's activations do not depend on the batch it comes in
    torch.manual_seed(0)
    copy = inference_copy(cifar_resnet20().train())
    assert not copy.training
    assert not any(m.training for m in copy.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)))
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(copy(batch)[:1], copy(batch[:1]), rtol=1e-4, atol=1e-4)
    # the running top-N stays sorted, and the best images survive when they arrive last
    stream = StreamingTopN(3)
    values = torch.tensor([5.0, 1, 2, 4, 3, 9, 8, 0, 7])
    for start in range(0, 9, 2):
        part = values[start : start + 2]
        stream.update(part.view(-1, 1, 1, 1), torch.arange(start, start + len(part)))
    assert stream.result().values[0].tolist() == [9.0, 8.0, 7.0]
    assert stream.result().image[0].tolist() == [5, 6, 8]


# ----------------------------------------------------------------------------------------------
# settings: each option reaches the rules whose results it changes


def test_options_reach_the_layer_and_section_settings_and_defaults_keep_the_old_ones(data_dir):
    from wfutil import study_config

    from unitscope.config import ConfigError, validate_config
    from unitscope.studies.nefesi.plan import NefesiPlan

    base = validate_config(study_config("nefesi", data_dir))
    assert (base["nefesi"]["class_index_scale"], base["nefesi"]["color_grey"]) == ("classes", "luminance")
    model = base["nefesi"]["targets"][0]["model"]
    before = NefesiPlan(base)
    for key, value in (("class_index_scale", "top_n"), ("color_grey", "principal_component")):
        config = json.loads(json.dumps(base))
        config["nefesi"][key] = value
        after = NefesiPlan(validate_config(config))
        layer = after.target(model)["layers"][0]
        assert getattr(after.layer_settings(model, layer), key) == value
        assert after.layer_settings(model, layer) != before.layer_settings(model, layer)
        assert after.section_settings.recorded()[key] == value
        assert after.top_n_settings(model) == before.top_n_settings(model)
        assert after.layer_figures_settings == before.layer_figures_settings
        config["nefesi"][key] = "something_else"
        with pytest.raises(ConfigError, match=key):
            validate_config(config)


# ----------------------------------------------------------------------------------------------
# real CIFAR images: the defaults give the numbers of the definitions as they were


CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def cifar_layer(data_dir):
    """24 real CIFAR-10 test images through a seeded ResNet-20's layer1: its top-5 and probes under both grays."""
    source = {"kind": "folder", "root": "objects_cifar10", "labels": "labels.csv", "path_column": "path"}
    manifest = build_manifest("objects", "object", folder_layout("objects", {**source, "label_column": "label"},
                                                                 data_dir), 24, 0)  # fmt: skip
    rows = manifest[manifest["included"]]
    dataset = ManifestDataset(rows, build_transform({"resize": 32, "crop": 32, "mean": CIFAR_MEAN, "std": CIFAR_STD}))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    torch.manual_seed(0)
    model = cifar_resnet20().eval()
    top = collect_top_n(model, [(images, torch.arange(len(images)))], ["layer1"], 5, progress=False)["layer1"]

    def probes(**options):
        return probe_layer(
            model, "layer1", top, tensor_batches(images), image_size=(32, 32), mean=CIFAR_MEAN, std=CIFAR_STD,
            progress=False, batch_size=512, **options,
        )  # fmt: skip

    codes = rows["label"].astype("category").cat.codes.to_numpy(np.int64)
    return {"model": model, "images": images, "top": top, "codes": codes, "default": probes(),
            "pc": probes(color_grey="principal_component")}  # fmt: skip


def table_of(layer, probes, **options):
    names = [str(k) for k in range(int(layer["codes"].max()) + 1)]
    return selectivity_table(layer["top"], probes, layer["codes"], names, mean=CIFAR_MEAN, std=CIFAR_STD, **options)


def luminance_responses(layer, channel: int) -> torch.Tensor:
    """R(gray) of a channel's exemplars computed here from scratch: each whole image with its crop region replaced
    by the luminance 0.299 R + 0.587 G + 0.114 B of its pixels, through the model, read at the exemplar."""
    model, images, top = layer["model"], layer["images"], layer["top"]
    field = layer_receptive_field(model, "layer1", (32, 32))
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    edited = []
    for image, y, x in zip(top.image[channel].tolist(), top.y[channel].tolist(), top.x[channel].tolist(), strict=True):
        (row0, col0, row1, col1), _ = crop_geometry(field, y, x, (32, 32))
        pixels = images[image] * std + mean
        grey = (pixels * torch.tensor(LUMA).view(3, 1, 1)).sum(0, keepdim=True).expand(3, -1, -1)
        pixels[:, row0:row1, col0:col1] = grey[:, row0:row1, col0:col1]
        edited.append((pixels - mean) / std)
    captured = {}
    handle = model.layer1.register_forward_hook(lambda module, inputs, output: captured.update(maps=output))
    with torch.no_grad():
        model(torch.stack(edited))
    handle.remove()
    return captured["maps"][torch.arange(top.n), channel, top.y[channel], top.x[channel]]


def test_defaults_on_cifar_give_the_numbers_of_the_old_definitions(cifar_layer):
    layer = cifar_layer
    default = table_of(layer, layer["default"])
    explicit = table_of(layer, layer["default"], class_index_scale="classes")
    assert default.equals(explicit)
    assert [t.name for t in layer["default"].transforms][:2] == ["identity", "gray"]
    # the colour index: luminance gray responses recomputed from scratch, CI = clip(1 - Σ R(gray) / Σ R(id), 0, 1)
    responses = layer["default"].responses
    for channel in (0, 7, 13):
        gray = luminance_responses(layer, channel)
        torch.testing.assert_close(responses[channel, :, 1], gray, rtol=1e-4, atol=1e-4)
        expected = min(max(1 - float(gray.double().sum() / responses[channel, :, 0].double().sum()), 0.0), 1.0)
        assert default.loc[channel, "color_index"] == pytest.approx(expected, abs=1e-4)
    # the class index: (K - M) / (K - 1) with K = min(top-N, classes)
    live = default[default["class_index"].notna()]
    assert len(live) > 0 and (live["class_K"] == min(5, len(np.unique(layer["codes"])))).all()
    np.testing.assert_allclose(live["class_index"], (live["class_K"] - live["class_M"]) / (live["class_K"] - 1))


def test_options_on_cifar_change_only_their_own_index(cifar_layer):
    layer = cifar_layer
    default = table_of(layer, layer["default"])
    nefesi_like = table_of(layer, layer["pc"], class_index_scale="top_n")
    changed = {"color_index", "gray_ratio", "class_index"}
    for column in default.columns.difference(list(changed)):
        assert default[column].equals(nefesi_like[column]), column  # rotations, mirrors, M, classes, NF: as before
    # nefesi's class scale: (N - M) / (N - 1) with N = the channel's 5 exemplars
    live = nefesi_like["class_index"].notna()
    np.testing.assert_allclose(nefesi_like.loc[live, "class_index"], (5 - nefesi_like.loc[live, "class_M"]) / 4)
    # the principal-component gray is another crop: another colour index (but the same identity responses)
    torch.testing.assert_close(layer["pc"].responses[:, :, 0], layer["default"].responses[:, :, 0])
    assert not np.allclose(default["gray_ratio"], nefesi_like["gray_ratio"])
