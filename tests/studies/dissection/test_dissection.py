"""Network dissection: thresholds, exact IoU tallies (fast path = direct way), labels, intervals, rotations, and the
section's choice of units with their per-unit figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from unitscope.data.concepts import Annotation, CamVidConcepts
from unitscope.studies.dissection.caches import LabelCache, combine_layers
from unitscope.studies.dissection.dissect import (
    ROUNDING_MARGIN,
    Bands,
    BilinearGrid,
    bootstrap_layer,
    concept_lookup,
    label_batch,
    label_units,
    layer_numbers,
    layer_summary,
    tally_batch,
    tally_direct,
    unit_thresholds,
    upsample,
)
from unitscope.studies.dissection.layer_dissection import dissect_layer
from unitscope.studies.dissection.rotation import FractionalRotation, random_rotation, rotate_maps
from unitscope.studies.dissection.section import unit_image_caption
from unitscope.studies.dissection.units import check_unit_images, study_units, unit_image_name

FIELDS = ("intersection", "unit_area", "label_area", "unit_pixels")


def assert_same(a, b):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("intersection", "area", "label_area"):
        np.testing.assert_array_equal(getattr(a.per_image, name), getattr(b.per_image, name), err_msg=name)


def both_ways(maps, thresholds, labels, n_codes):
    """The fast tally equals the direct way. The fast one runs with torch's default device set to "meta": the tallies
    run on the stage's device (CUDA when there is one), so a tensor made without naming its device would land on the
    default and fail at its first use beside the CPU inputs."""
    maps, thresholds = torch.as_tensor(maps, dtype=torch.float32), torch.as_tensor(thresholds, dtype=torch.float32)
    with torch.device("meta"):
        grid = BilinearGrid.build(maps.shape[2:], labels.shape)
        fast = tally_batch(maps, thresholds, labels, n_codes, grid)
    assert_same(fast, tally_direct(maps, thresholds, labels, n_codes))
    return fast


# ------------------------------------------------------------------------------------------------
# IoU on masks whose answer is known


def square(shape, rows, cols):
    mask = np.zeros(shape, dtype=np.float32)
    mask[rows, cols] = 1
    return mask


def test_iou_disjoint_nested_identical_and_unannotated_images_excluded():
    shape, n_codes = (8, 8), 3
    categories = ["object", "color"]
    code_category = np.array([-1, 0, 1])  # code 1: an object concept, code 2: a color concept
    concept = np.zeros(shape, np.int32)
    concept[2:6, 2:6] = 1  # 16 pixels of concept 1 in every image
    plain = Annotation(concept[None], categories=frozenset(categories))
    no_objects = Annotation(np.zeros((1, *shape), np.int32), categories=frozenset(["color"]))
    labels = label_batch([plain, plain, no_objects], categories, shape)
    units = np.stack(
        [
            square(shape, slice(2, 6), slice(2, 6)),  # identical to the concept
            square(shape, slice(3, 5), slice(3, 5)),  # nested: 4 of its 16 pixels
            square(shape, slice(6, 8), slice(6, 8)),  # disjoint
            square(shape, slice(0, 8), slice(0, 8)),  # everything
        ]
    )
    maps = np.stack([units, units, units])  # the third image has no object annotation
    tally = both_ways(maps, np.full(4, 0.5), labels, n_codes)  # same resolution: upsampling is the identity
    iou = tally.iou(code_category)[:, 1]
    np.testing.assert_allclose(iou, [1.0, 4 / 16, 0.0, 16 / 64])  # the third image adds nothing to the union
    assert tally.unit_pixels.tolist() == [48, 12, 12, 192]  # every image counts in the mask's own size
    assert tally.unit_area[:, 0].tolist() == [32, 8, 8, 128] and tally.unit_area[:, 1].tolist() == [48, 12, 12, 192]
    assert tally.label_area[1] == 32 and tally.images == 3


def test_image_level_concepts_cover_the_whole_image():
    shape = (4, 4)
    scene = Annotation(np.zeros((0, *shape), np.int32), scalars=(1,), categories=frozenset(["scene"]))
    other = Annotation(np.zeros((0, *shape), np.int32), scalars=(2,), categories=frozenset(["scene"]))
    labels = label_batch([scene, other], ["scene"], shape)
    maps = np.stack([square(shape, slice(0, 2), slice(0, 4))[None], square(shape, slice(0, 1), slice(0, 4))[None]])
    tally = both_ways(maps, [0.5], labels, 3)
    # unit: 8 pixels in the scene-1 image, 4 in the other; scene 1 covers 16 pixels
    np.testing.assert_allclose(tally.iou(np.array([-1, 0, 0]))[0], [0, 8 / (12 + 16 - 8), 4 / (12 + 16 - 4)])


# ------------------------------------------------------------------------------------------------
# thresholds


def test_thresholds_match_numpys_exact_quantile_in_blocks():
    maps = np.random.default_rng(0).gamma(2.0, size=(7, 5, 3, 4)).astype(np.float32)
    maps[:, 4] = 6.0  # constant at ReLU6's ceiling: threshold = its maximum (a constant unit's mask stays empty)
    expected = np.quantile(maps.transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64), 0.99, axis=1)
    np.testing.assert_allclose(unit_thresholds(maps, 0.01, chunk_values=100), expected.astype(np.float32))
    with pytest.raises(ValueError, match=r"dissection.quantile must be in \(0, 1\)"):
        unit_thresholds(maps, 1.5)


# ------------------------------------------------------------------------------------------------
# the fast tally is the direct way, count for count


def test_bands_reproduce_torch_upsampling_within_the_margin():
    for h, w, H, W in [(8, 10, 360, 480), (5, 7, 45, 61), (58, 78, 90, 120), (9, 11, 4, 6)]:
        grid = BilinearGrid.build((h, w), (H, W))
        x = torch.randn(3, h, w) * 4
        reference = upsample(x, (H, W))
        for bands, axis in ((grid.rows, 0), (grid.cols, 1)):
            assert int(bands.length.sum()) == (H, W)[axis]  # bands tile each axis exactly
            assert isinstance(bands, Bands)
        row_w, col_w = _expand(grid.rows, H), _expand(grid.cols, W)
        a = grid.rows.source.repeat_interleave(grid.rows.length)
        c = grid.cols.source.repeat_interleave(grid.cols.length)
        a1, c1 = (a + 1).clamp(max=h - 1), (c + 1).clamp(max=w - 1)
        top = x[:, a][:, :, c] * col_w[0][None, None, :] + x[:, a][:, :, c1] * col_w[1][None, None, :]
        bottom = x[:, a1][:, :, c] * col_w[0][None, None, :] + x[:, a1][:, :, c1] * col_w[1][None, None, :]
        rebuilt = top * row_w[0][None, :, None] + bottom * row_w[1][None, :, None]
        corners = torch.stack([x[:, a][:, :, c], x[:, a][:, :, c1], x[:, a1][:, :, c], x[:, a1][:, :, c1]]).abs()
        assert ((rebuilt - reference).abs() <= ROUNDING_MARGIN / 4 * corners.amax(0)).all()


def _expand(bands, n):
    """Per output index along an axis: (w0, w1) from the band tables."""
    w0 = torch.cat([bands.w0[i, :length] for i, length in enumerate(bands.length.tolist())])
    w1 = torch.cat([bands.w1[i, :length] for i, length in enumerate(bands.length.tolist())])
    assert len(w0) == n
    return w0, w1


def test_fast_tally_equals_direct_on_random_maps_with_ties_and_odd_sizes():
    rng = np.random.default_rng(1)
    categories = ["object", "color"]
    for (h, w), shape in [((6, 8), (45, 61)), ((9, 12), (9, 12)), ((11, 13), (7, 9)), ((3, 4), (50, 67))]:
        annotations = [
            Annotation(rng.integers(0, 6, size=(2, *shape)).astype(np.int32), categories=frozenset(categories))
            for _ in range(3)
        ]
        labels = label_batch(annotations, categories, shape)
        maps = np.maximum(rng.normal(size=(3, 7, h, w)), 0).astype(np.float32)
        maps[:, 0] = np.minimum(maps[:, 0], 1.0)  # clipped: many values tie with the threshold
        maps[:, 1] = -maps[:, 1]  # a negative unit
        thresholds = unit_thresholds(maps, 0.1)
        thresholds[0] = 1.0
        both_ways(maps, thresholds, labels, 6)


@pytest.fixture(scope="module")
def camvid_frames(data_dir):
    return CamVidConcepts(data_dir / "segmentation_camvid", size=4, seed=3)


@pytest.fixture(scope="module")
def resnet_maps(data_dir, camvid_frames):
    """Real activations: ResNet-20 layer2 and layer3 on 4 CamVid frames (no crop, as the stage does)."""
    from unitscope.config import load_config
    from unitscope.hooks import ActivationRecorder
    from unitscope.models.registry import build_model
    from unitscope.studies.dissection.caches import dissection_transform

    config = load_config(__import__("conftest").REPO / "config" / "config.yaml")
    spec = config["models"]["resnet20_cifar"]
    model = build_model("resnet20_cifar", spec, data_dir=data_dir, torch_home=None)
    transform = dissection_transform(spec["preprocessing"])
    x = torch.stack([transform(camvid_frames.image(i)) for i in range(len(camvid_frames))])
    with ActivationRecorder(model, ["layer2", "layer3"], keep_maps=True, maps_dtype=torch.float32) as rec:
        rec(x)
    return {layer: rec.maps[layer].numpy() for layer in ("layer2", "layer3")}


def test_fast_tally_equals_direct_on_real_frames_and_activations(camvid_frames, resnet_maps, tmp_path):
    shape = (90, 120)
    annotations = [camvid_frames.annotation(i, shape) for i in range(len(camvid_frames))]
    labels = label_batch(annotations, camvid_frames.categories, shape)
    for maps in resnet_maps.values():
        both_ways(maps, unit_thresholds(maps, 0.005), labels, camvid_frames.n_codes)
    rotated = rotate_maps(
        torch.from_numpy(resnet_maps["layer3"]), torch.from_numpy(random_rotation(64, np.random.default_rng(0))).float()
    )
    tally = both_ways(rotated, unit_thresholds(rotated.numpy(), 0.005), labels, camvid_frames.n_codes)
    # the same through the stage's label cache, with pixels' code combinations looked up once
    combined, counts = combine_layers(labels.pixels.numpy(), camvid_frames.n_codes, tmp_path / "c.npy")
    assert counts.shape[0] <= 12 * 11 and (counts.sum(1) == 2).all()
    cache = LabelCache(labels.pixels.numpy(), labels.scalars.numpy(), labels.annotated.numpy(), shape, combined, counts)
    staged = dissect_layer(
        rotated.numpy(), unit_thresholds(rotated.numpy(), 0.005), cache, camvid_frames.n_codes, batch_size=3
    )
    assert_same(staged, tally)


def test_every_tensor_of_a_tally_follows_the_maps_device(camvid_frames, resnet_maps, tmp_path):
    """The tallies run on the stage's device (CUDA when there is one): nothing in them may be made on torch's default
    device. With the default set to "meta", a tensor made without naming its device lands there and fails at its
    first use beside the CPU inputs; the staged tally (combined labels, saturated units) must still equal the plain
    run, on real frames and ResNet-20 maps."""
    shape = (90, 120)
    annotations = [camvid_frames.annotation(i, shape) for i in range(len(camvid_frames))]
    labels = label_batch(annotations, camvid_frames.categories, shape)
    combined, counts = combine_layers(labels.pixels.numpy(), camvid_frames.n_codes, tmp_path / "c.npy")
    cache = LabelCache(labels.pixels.numpy(), labels.scalars.numpy(), labels.annotated.numpy(), shape, combined, counts)
    maps = resnet_maps["layer3"]
    thresholds = unit_thresholds(maps, 0.005)
    saturated = np.arange(maps.shape[1]) % 3 == 0
    run = {"batch_size": 3, "saturated": saturated, "device": torch.device("cpu")}
    plain = dissect_layer(maps, thresholds, cache, camvid_frames.n_codes, **run)
    with torch.device("meta"):
        assert torch.empty(1).device.type == "meta"  # what a tensor made without a device would be
        followed = dissect_layer(maps, thresholds, cache, camvid_frames.n_codes, **run)
    assert plain.intersection.sum() > 0
    assert_same(followed, plain)


def test_planted_unit_is_labelled_with_its_concept(camvid_frames, resnet_maps):
    """A unit whose activation is the road mask (at half resolution) is a road detector with IoU near 1."""
    shape = (90, 120)
    annotations = [camvid_frames.annotation(i, shape) for i in range(len(camvid_frames))]
    labels = label_batch(annotations, camvid_frames.categories, shape)
    road = camvid_frames.concepts.set_index("name").loc["road", "code"]
    road_mask = torch.from_numpy(np.stack([a.pixels[0] == road for a in annotations]).astype(np.float32))
    planted = F.avg_pool2d(road_mask[:, None], 2)  # [N, 1, 45, 60]
    planted += 1e-4 * torch.rand(planted.shape, generator=torch.Generator().manual_seed(0))
    others = F.interpolate(torch.from_numpy(resnet_maps["layer3"]), size=(45, 60), mode="bilinear")
    maps = torch.cat([others, planted], 1).numpy()
    share = float((planted > 0.5).float().mean())
    thresholds = unit_thresholds(maps, 0.005)
    thresholds[-1] = unit_thresholds(maps[:, -1:], share)[0]
    tally = both_ways(maps, thresholds, labels, camvid_frames.n_codes)
    code_category, code_name = concept_lookup(camvid_frames)
    units = label_units(tally.iou(code_category), code_category, code_name, camvid_frames.categories, 0.04)
    planted_row = units.iloc[-1]
    assert planted_row["concept"] == "road" and planted_row["category"] == "object" and planted_row["detector"]
    assert planted_row["iou"] > 0.9
    assert (units.iloc[:-1]["iou"] < planted_row["iou"]).all()


# ------------------------------------------------------------------------------------------------
# labels, counting rules, intervals


def test_counting_rules_best_label_and_per_category_sum():
    code_category = np.array([-1, 0, 0, 1])
    code_name = np.array(["", "car", "road", "red"], dtype=object)
    iou = np.array(
        [
            [0, 0.30, 0.01, 0.05],  # car detector; also passes for red within color
            [0, 0.10, 0.02, 0.00],  # car again
            [0, 0.01, 0.03, 0.06],  # red (road below threshold)
            [0, 0.00, 0.00, 0.00],  # nothing
        ]
    )
    units = label_units(iou, code_category, code_name, ["object", "color"], 0.04)
    assert units["concept"].tolist() == ["car", "car", "red", ""]
    assert units["runner_up"].tolist()[:3] == ["red", "road", "road"]
    summary = layer_summary(units, ["object", "color"], 0.04)
    assert summary["detectors"] == 3 and summary["unique_best"] == 2
    assert summary["unique_per_category"] == 2 and summary["unique_per_category_color"] == 1
    numbers = layer_numbers(iou, code_category, ["object", "color"], 0.04)
    assert {k: float(v) for k, v in numbers.items()} == pytest.approx(
        {"detectors": 3, "unique_best": 2, "unique_per_category": 2, "mean_best_iou": (0.30 + 0.10 + 0.06) / 4}
    )
    stacked = layer_numbers(np.stack([iou, iou * 0]), code_category, ["object", "color"], 0.04)
    assert stacked["detectors"].tolist() == [3, 0]


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded(camvid_frames, resnet_maps):
    shape = (60, 80)
    labels = label_batch([camvid_frames.annotation(i, shape) for i in range(4)], camvid_frames.categories, shape)
    maps = resnet_maps["layer3"]
    tally = both_ways(maps, unit_thresholds(maps, 0.005), labels, camvid_frames.n_codes)
    code_category, _ = concept_lookup(camvid_frames)
    point = layer_numbers(tally.iou(code_category), code_category, camvid_frames.categories, 0.04)
    args = (tally.per_image, code_category, camvid_frames.categories, 0.04)
    intervals = bootstrap_layer(*args, resamples=60, seed=0)
    assert intervals == bootstrap_layer(*args, resamples=60, seed=0)
    assert set(intervals) == {"detectors", "unique_best", "unique_per_category", "mean_best_iou"}
    for name in ("detectors", "mean_best_iou"):
        low, high = intervals[name]
        assert low <= float(point[name]) <= high and low < high


# ------------------------------------------------------------------------------------------------
# rotations


@pytest.mark.parametrize("n", [2, 7, 64])
def test_random_rotation_and_its_fractional_powers(n):
    q = random_rotation(n, np.random.default_rng(n))
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-10)
    assert np.linalg.det(q) == pytest.approx(1.0)
    power = FractionalRotation.of(q).power
    np.testing.assert_allclose(power(0), np.eye(n), atol=1e-10)
    np.testing.assert_allclose(power(1), q, atol=1e-8)
    np.testing.assert_allclose(power(0.3) @ power(0.5), power(0.8), atol=1e-8)
    half = power(0.5)
    np.testing.assert_allclose(half @ half.T, np.eye(n), atol=1e-8)
    assert np.linalg.det(half) == pytest.approx(1.0)


def test_rotation_by_pi_pairs_of_minus_one_eigenvalues():
    basis = random_rotation(4, np.random.default_rng(0))
    q = basis @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ basis.T
    power = FractionalRotation.of(q).power
    np.testing.assert_allclose(power(1), q, atol=1e-8)
    np.testing.assert_allclose(power(0.5) @ power(0.5), q, atol=1e-8)
    with pytest.raises(ValueError, match="determinant \\+1"):
        FractionalRotation.of(np.diag([-1.0, 1.0, 1.0]))


def test_rotating_units_preserves_activation_norms():
    maps = torch.randn(3, 16, 5, 6)
    rotation = torch.from_numpy(FractionalRotation.of(random_rotation(16, np.random.default_rng(1))).power(0.4)).float()
    rotated = rotate_maps(maps, rotation)
    torch.testing.assert_close(rotated.norm(dim=1), maps.norm(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotated[:, :, 2, 3], maps[:, :, 2, 3] @ rotation.T)


# ------------------------------------------------------------------------------------------------
# the units the section singles out, and their per-unit figures


def units_table(model, layer, ious, threshold=0.04):
    ious = np.asarray(ious, dtype=float)
    return pd.DataFrame(
        {
            "model": model,
            "layer": layer,
            "unit": np.arange(len(ious)),
            "concept": [f"c{i}" for i in range(len(ious))],
            "category": "object",
            "iou": ious,
            "detector": ious > threshold,
        }
    )


def test_study_units_are_each_layers_top_detectors_with_ties_to_the_lower_unit():
    units = pd.concat(
        [
            units_table("m", "a", [0.05, 0.20, 0.20, 0.01, 0.30, 0.10]),
            units_table("m", "b", [0.03, 0.50]),  # one detector only
            units_table("n", "a", [0.02, 0.01]),  # none
            units_table("n", "c", [0.06, 0.07, 0.08, 0.09, 0.10]),
        ],
        ignore_index=True,
    )
    chosen = study_units(units)
    picked = {key: group["unit"].tolist() for key, group in chosen.groupby(["model", "layer"], sort=False)}
    assert picked == {("m", "b"): [1], ("m", "a"): [4, 1, 2], ("n", "c"): [4, 3, 2]}
    assert chosen["iou"].is_monotonic_decreasing and chosen["detector"].all()
    # the figure stage selects from one layer's rows: the same units as from the whole table
    for (model, layer), group in units.groupby(["model", "layer"]):
        alone = study_units(group)
        assert (
            alone["unit"].tolist() == chosen[(chosen["model"] == model) & (chosen["layer"] == layer)]["unit"].tolist()
        )
    assert study_units(units, per_layer=1)["unit"].tolist() == [1, 4, 4]
    # a non-detector never gets in, however high its IoU (a stricter threshold flags fewer units)
    strict = units_table("m", "a", [0.05, 0.20, 0.20, 0.01, 0.30, 0.10], threshold=0.15)
    assert study_units(strict)["unit"].tolist() == [4, 1, 2]
    assert study_units(strict, per_layer=5)["unit"].tolist() == [4, 1, 2]


def test_unit_image_caption_says_what_is_shown_and_on_how_many_images():
    unit = next(units_table("resnet20_cifar", "layer3", [0.0, 0.1234]).assign(concept="road").iloc[[1]].itertuples())
    caption = unit_image_caption(unit, n_images=233, top_images=4, quantile=0.005)
    assert caption.startswith("resnet20_cifar layer3 unit 1: its 4 top activating images of N = 233")
    for text in ("Yellow", "top 0.005 quantile", "cyan", "road (object)", "IoU 0.123"):
        assert text in caption, text
    # fewer images than top_images: the figure shows all of them
    assert "its 1 top activating image of N = 1 " in unit_image_caption(unit, n_images=1, top_images=4, quantile=0.01)
    assert unit_image_name("resnet20_cifar", "layer3", np.int64(7)) == "resnet20_cifar__layer3__7.png"


def test_unit_image_folders_must_hold_exactly_the_listed_units(tmp_path):
    listed = [{"model": "m", "layer": "a", "channel": 4}, {"model": "m", "layer": "a", "channel": 1}]
    folders = {"m/a": tmp_path / "a", "m/b": tmp_path / "b"}
    for folder in folders.values():
        folder.mkdir()
    for unit in listed:
        (folders["m/a"] / unit_image_name("m", "a", unit["channel"])).write_bytes(b"png")
    check_unit_images(listed, folders)  # m/b lists no unit and holds no figure
    with pytest.raises(ValueError, match="no folder of unit figures for m/c"):
        check_unit_images([*listed, {"model": "m", "layer": "c", "channel": 0}], folders)
    (folders["m/b"] / unit_image_name("m", "b", 0)).write_bytes(b"png")
    with pytest.raises(ValueError, match="do not match"):
        check_unit_images(listed, folders)
    (folders["m/b"] / unit_image_name("m", "b", 0)).unlink()
    (folders["m/a"] / unit_image_name("m", "a", 4)).unlink()
    with pytest.raises(ValueError, match="do not match"):
        check_unit_images(listed, folders)
