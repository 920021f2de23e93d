"""Ties at a saturated threshold: a unit whose threshold T_k is its largest activation (ReLU6 at 6.0) gets the mask
`>= T_k` (the strict `> T_k` is empty everywhere), every other unit keeps `> T_k` with unchanged counts; on a hand-built
layer with a hand-counted IoU, and on real MobileNetV2 features.18 maps of CamVid frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from unitscope.data.concepts import Annotation, CamVidConcepts
from unitscope.studies.dissection.dissect import (
    BilinearGrid,
    label_batch,
    layer_summary,
    mask_cutoffs,
    tally_batch,
    tally_direct,
    threshold_units,
    unit_thresholds,
    upsample,
)
from unitscope.studies.dissection.layer_dissection import dissect_layer, dissect_network, unit_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

FIELDS = ("intersection", "unit_area", "label_area", "unit_pixels")
SHAPE = (8, 8)
CATEGORIES = ["object"]
CODE_CATEGORY = np.array([-1, 0])  # code 1: the one concept
CODE_NAME = np.array(["", "thing"], dtype=object)


def both_ways(maps, thresholds, labels, saturated=None):
    """The fast tally, checked count for count against the direct way under the same rule."""
    maps, thresholds = torch.as_tensor(maps, dtype=torch.float32), torch.as_tensor(thresholds, dtype=torch.float32)
    grid = BilinearGrid.build(maps.shape[2:], labels.shape)
    fast = tally_batch(maps, thresholds, labels, 2, grid, saturated=saturated)
    direct = tally_direct(maps, thresholds, labels, 2, saturated=saturated)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(fast, name), getattr(direct, name), err_msg=name)
    return fast


def hand_built_layer(rng: np.random.Generator) -> tuple[np.ndarray, object]:
    """4 images of 8 x 8 at mask resolution (upsampling is the identity), 4 units, and a concept in rows 4-7, columns
    2-5 of every image. Unit 0 is ReLU6-like: 6.0 on rows 2-5, columns 2-5 (16 of 64 positions) and below 6 elsewhere,
    so its top-0.1 quantile is 6.0, its maximum. Unit 1: continuous values. Unit 2: 0 everywhere (constant). Unit 3:
    6.0 at one position only (its threshold is below its maximum)."""
    n_images = 4
    maps = np.zeros((n_images, 4, *SHAPE), dtype=np.float32)
    maps[:, 0] = rng.uniform(0, 5, size=(n_images, *SHAPE))
    maps[:, 0, 2:6, 2:6] = 6.0
    maps[:, 1] = rng.gamma(2.0, size=(n_images, *SHAPE))
    maps[:, 3] = rng.uniform(0, 5, size=(n_images, *SHAPE))
    maps[0, 3, 0, 0] = 6.0
    concept = np.zeros(SHAPE, np.int32)
    concept[4:8, 2:6] = 1
    labels = label_batch([Annotation(concept[None], categories=frozenset(CATEGORIES))] * n_images, CATEGORIES, SHAPE)
    return maps, labels


def test_mask_cutoffs_turn_greater_than_into_at_least_for_saturated_units_only():
    thresholds = np.array([6.0, 6.0, 0.5, 0.0], dtype=np.float32)
    saturated = np.array([True, False, False, True])
    ulp = np.float32(2.0**-21)  # float32 spacing just below 8
    values = np.float32(6.0) + ulp * np.array([-1, 0, 1], dtype=np.float32)  # 6.0 and its rounding neighbours
    cutoffs = mask_cutoffs(thresholds, saturated)
    assert cutoffs.dtype == np.float32
    assert (values > cutoffs[0]).all() and not np.float32(5.9999) > cutoffs[0]  # at 6.0 up to rounding, not below
    assert (values > cutoffs[1]).tolist() == [False, False, True]  # strict: 6.0 is not above 6.0
    assert np.float32(0.0) > cutoffs[3] and not np.float32(-1e-30) > cutoffs[3]  # saturated at 0: exactly >= 0
    assert cutoffs[2] == np.float32(0.5) and mask_cutoffs(thresholds, None) is thresholds
    as_tensor = mask_cutoffs(torch.from_numpy(thresholds), torch.from_numpy(saturated))
    np.testing.assert_array_equal(as_tensor.numpy(), cutoffs)


def test_a_saturated_unit_gets_its_mask_and_a_hand_counted_iou_and_the_others_do_not_change():
    maps, labels = hand_built_layer(np.random.default_rng(0))
    rule = threshold_units(maps, 0.1)
    assert rule.values[0] == 6.0 and rule.saturated.tolist() == [True, False, False, False]
    np.testing.assert_array_equal(rule.values, unit_thresholds(maps, 0.1))
    strict = both_ways(maps, rule.values, labels)
    ties = both_ways(maps, rule.values, labels, saturated=torch.from_numpy(rule.saturated))
    assert strict.unit_pixels[0] == 0  # nothing is above its maximum: the strict rule never fires
    assert ties.unit_pixels[0] == 4 * 16  # the 6.0 plateau of every image
    # plateau rows 2-5 and concept rows 4-7 (columns 2-5 both): 8 shared pixels, 16 + 16 - 8 in the union, per image
    iou = ties.iou(CODE_CATEGORY)
    assert iou[0, 1] == pytest.approx((4 * 8) / (4 * (16 + 16 - 8)))
    assert strict.iou(CODE_CATEGORY)[0, 1] == 0
    for name in FIELDS[:2] + FIELDS[3:]:  # the other units' counts are the strict rule's, exactly
        np.testing.assert_array_equal(getattr(ties, name)[1:], getattr(strict, name)[1:], err_msg=name)
    assert ties.unit_pixels[2] == 0 and ties.unit_pixels[3] > 0  # constant: still empty; unsaturated: unchanged
    units = unit_table(ties, (CODE_CATEGORY, CODE_NAME), CATEGORIES, 0.04, rule.values, rule.saturated)
    assert units["saturated_threshold"].tolist() == [True, False, False, False]
    assert units.loc[0, "concept"] == "thing" and units.loc[0, "detector"]
    summary = layer_summary(units, CATEGORIES, 0.04)
    assert summary["saturated_units"] == 1 and summary["saturated_detectors"] == 1 and summary["empty_units"] == 1


def test_ties_under_upsampling_fast_tally_is_the_direct_way():
    """4 x 4 maps upsampled to 30 x 30 (pixels near the cutoff are re-evaluated by torch): a unit that is 6.0 on a
    2 x 2 block of every image fires exactly where its upsampled map reaches 6.0, the fast tally is the direct way,
    and the other units keep their counts."""
    rng = np.random.default_rng(1)
    maps = np.minimum(rng.gamma(2.0, 2.0, size=(3, 5, 4, 4)), 6.0).astype(np.float32)
    maps[:, 0] = np.minimum(maps[:, 0], 5.0)
    maps[:, 0, 1:3, 1:3] = 6.0  # 4 of 16 positions: the top-0.1 quantile is 6.0
    shape = (30, 30)
    codes = rng.integers(0, 2, size=(1, *shape)).astype(np.int32)
    labels = label_batch([Annotation(codes, categories=frozenset(CATEGORIES))] * 3, CATEGORIES, shape)
    rule = threshold_units(maps, 0.1)
    assert rule.saturated[0]
    strict = both_ways(maps, rule.values, labels)
    ties = both_ways(maps, rule.values, labels, saturated=torch.from_numpy(rule.saturated))
    # the mask is where torch's upsampled map is at 6.0 up to rounding (at this geometry some of the plateau comes out
    # 6.0 +- 1 ulp); the strict rule keeps only the pixels that rounding lifted above 6.0
    upsampled = upsample(torch.from_numpy(maps[:, 0]), shape)
    at_ceiling = (upsampled >= 6.0 - 2e-6).sum().item()
    assert (upsampled >= 6.0).sum().item() < at_ceiling  # a literal >= would drop part of the plateau
    assert ties.unit_pixels[0] == at_ceiling and strict.unit_pixels[0] < at_ceiling
    kept = ~rule.saturated
    for name in ("intersection", "unit_area", "unit_pixels"):
        np.testing.assert_array_equal(getattr(ties, name)[kept], getattr(strict, name)[kept], err_msg=name)


# ------------------------------------------------------------------------------------------------
# real data


MASK_SHAPE = (45, 60)  # coarse masks: the rule, not the resolution, is under test
RESIZE = 160  # frames at a shorter side of 160 (MobileNetV2's own is 232): the same code, 2x faster
QUANTILE = 0.005


@pytest.fixture(scope="module")
def frames(data_dir):
    return CamVidConcepts(data_dir / "segmentation_camvid", size=8, seed=0)


@pytest.fixture(scope="module")
def dissected(data_dir, frames, tmp_path_factory):
    """MobileNetV2 (ImageNet weights) features.18 dissected on 8 CamVid frames, and its cached maps."""
    from unitscope.config import load_config
    from unitscope.models.registry import build_model

    spec = load_config(__import__("conftest").REPO / "config" / "config.yaml")["models"]["mobilenet_v2_imagenet"]
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=data_dir, torch_home=None)
    folder = tmp_path_factory.mktemp("dissection")
    [layer] = dissect_network(
        model, frames, ["features.18"], {**spec["preprocessing"], "resize": RESIZE}, model_name="mobilenet_v2",
        shape=MASK_SHAPE, quantile=QUANTILE, iou_threshold=0.04, top_k=1, seed=0, folder=folder,
    )  # fmt: skip
    maps = np.load(folder / "features.18.npy", mmap_mode="r")
    return layer, maps, folder


def test_relu6_units_at_their_ceiling_now_have_masks_where_their_map_reaches_it(dissected, frames):
    from unitscope.studies.dissection.caches import cache_labels

    layer, maps, folder = dissected
    units = layer.units
    values = np.array(maps)  # a writable copy (torch reads it)
    peak, low = values.max(axis=(0, 2, 3)), values.min(axis=(0, 2, 3))
    at_max = (units["threshold"].to_numpy() == peak) & (peak > low)  # counted here from the maps themselves
    assert at_max.sum() > 0  # the data has such units (21 of 1,280 on all 233 frames)
    assert (peak[at_max] == 6.0).all()  # ReLU6's ceiling
    np.testing.assert_array_equal(units["saturated_threshold"].to_numpy(), at_max)
    assert layer.row["saturated_units"] == at_max.sum() == layer.arrays["features.18/saturated"].sum()
    # each now fires wherever its upsampled map reaches 6.0 (a plateau of 6.0 cells, or a cell the mask grid lands on
    # exactly: an isolated 6.0 between interpolated columns never reaches it, so a few stay empty at this geometry)
    # (each image's maps upsampled whole, as the layer's output is: torch's kernel, and so its rounding, depends on it)
    upsampled = torch.stack([upsample(torch.from_numpy(image), MASK_SHAPE)[at_max] for image in values])
    reach = (upsampled >= 6.0 - 2e-6).sum(dim=(0, 2, 3)).numpy()  # at 6.0 up to rounding
    np.testing.assert_array_equal(units.loc[at_max, "mask_pixels"].to_numpy(), reach)
    assert (reach > 0).sum() > at_max.sum() / 2
    assert layer.row["saturated_detectors"] == int((at_max & units["detector"]).sum())
    # the strict rule gives every other unit the same counts, and those units only the few pixels that rounding lifts
    # above 6.0 at this geometry (none at the default one, 8 x 10 maps onto 360 x 480 masks)
    (folder / "strict").mkdir()
    labels = cache_labels(frames, MASK_SHAPE, folder / "strict", progress=False)
    strict = dissect_layer(maps, units["threshold"].to_numpy(), labels, frames.n_codes)
    np.testing.assert_array_equal(strict.unit_pixels[~at_max], units.loc[~at_max, "mask_pixels"].to_numpy())
    kept_intersection = layer.arrays["features.18/intersection"][~at_max]
    np.testing.assert_array_equal(strict.intersection[~at_max], kept_intersection)
    now = units.loc[at_max, "mask_pixels"].to_numpy()
    assert (strict.unit_pixels[at_max] <= now).all() and strict.unit_pixels[at_max].sum() < now.sum()


# ------------------------------------------------------------------------------------------------
# the report


def test_the_section_counts_them_per_layer_and_says_how_they_were_handled():
    from markupsafe import Markup

    from unitscope.studies.dissection.plan import SectionSettings
    from unitscope.studies.dissection.section import build_section, unit_image_caption

    units = pd.DataFrame(
        {
            "model": "net",
            "layer": ["a"] * 3 + ["b"] * 4,
            "unit": [0, 1, 2, 0, 1, 2, 3],
            "concept": ["car", "sky", "road", "car", "sign", "road", "car"],
            "category": "object",
            "iou": [0.01, 0.02, 0.03, 0.09, 0.08, 0.01, 0.05],
            "runner_up": "pole",
            "runner_up_iou": 0.001,
            "detector": [False, False, False, True, True, False, True],
            "saturated_threshold": [False, False, False, True, True, True, False],
        }
    )
    units["object_concept"], units["object_iou"] = units["concept"], units["iou"]  # one category: the best is its best
    rows = []
    for depth, (layer, of_layer) in enumerate(units.groupby("layer")):
        summary = layer_summary(of_layer, ["object"], 0.04)  # the dissection's own counts
        rows.append({"model": "net", "layer": layer, "depth": depth, **summary, "empty_units": 0, "images": 5})
    settings = SectionSettings(
        kind="camvid", color_concepts=False, quantile=0.005, iou_threshold=0.04, top_images=2, rotation_mask_size=None
    )
    tallies = {
        "categories": np.array(["object"]),
        "image_ids": np.arange(5),
        "concept_categories": np.array(["object"] * 4),
        "mask_shape": np.array([60, 80]),
    }
    section = build_section(
        layers=pd.DataFrame(rows), units=units, tallies=tallies, rotation=None, settings=settings, figures={}
    )
    layers = section["summary"]["layers"]
    assert (layers["net/a"]["saturated_units"], layers["net/a"]["saturated_detectors"]) == (0, 0)
    assert (layers["net/b"]["saturated_units"], layers["net/b"]["saturated_detectors"]) == (3, 2)
    text = " ".join(Markup(section["body_html"]).striptags().split())
    assert "Ties at a saturated threshold" in text and "at or above Tk" in text
    assert "net a: none of its 3 units; net b: 3 of 4 units, 2 of them detectors (car 1, sign 1)." in text
    assert "units with T at their maximum (mask ≥ T)" in text  # the layer table's column
    facts = {u["channel"]: u["facts"] for u in section["units"] if u["layer"] == "b"}
    assert "dissection threshold" in facts[0] and "dissection threshold" not in facts[3]
    rows = {row.unit: row for row in units[units["layer"] == "b"].itertuples()}
    saturated, plain = (unit_image_caption(rows[u], n_images=5, top_images=2, quantile=0.005) for u in (0, 3))
    assert "at or above its threshold T" in saturated and "which is also its largest activation" in saturated
    assert " above its threshold T" in plain and "at or above" not in plain and "largest" not in plain
