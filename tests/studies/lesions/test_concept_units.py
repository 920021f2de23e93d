"""Lesions study, concept detectors: on 24 real CamVid frames through the real MobileNetV2 weights, a planted unit
whose map is the car mask and whose lesion provably moves the output only where a car is is found by dissection,
and its lesion changes the output more on car-rich frames than on car-poor ones and more than every control set;
lesioning nothing changes nothing; controls have the set's size and leave out the detectors; coverage is a hand
count; the layer caches (channel means, maps, images) give the model's own outputs."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unitscope.config import load_config
from unitscope.data.concepts import Annotation, CamVidConcepts
from unitscope.hooks import ActivationRecorder
from unitscope.interventions.conditions import Conditions, ablation_fill
from unitscope.interventions.tail import build_tail, condition_outputs
from unitscope.models.registry import build_model
from unitscope.report.plotting import TEXT_COLUMN_PX
from unitscope.studies.dissection.caches import dissection_transform
from unitscope.studies.dissection.dissect import label_batch
from unitscope.studies.dissection.layer_dissection import dissect_network
from unitscope.studies.lesions import concept_units as cu
from unitscope.studies.lesions.class_units import SetDraws
from unitscope.studies.lesions.figures import concept_units_figure
from unitscope.studies.lesions.inputs import LesionsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

CAR_CLASSES = [407, 436, 468, 511, 609, 627, 656, 661, 717, 751, 817]  # ImageNet's cars (names checked below)
PLANTED_CLASS, STRENGTH = 817, 200.0  # sports car: its logit gains 200 x the frame's car share through the unit
MASK_SHAPE = (60, 80)  # coarse masks (the labels are 360 x 480)
RESIZE = 128  # frames read at a shorter side of 128 instead of MobileNetV2's 232: the same code, 3x faster
# Dissection's threshold is a unit's top quantile over its map values: 24 frames x 4 x 6 cells here, so the config's
# 0.005 keeps 3 values; 0.02 keeps 11, the size of a few cars' cells.
QUANTILE = 0.02


@pytest.fixture(scope="module")
def frames(data_dir):
    return CamVidConcepts(data_dir / "segmentation_camvid", colors=False, size=24, seed=0)


@pytest.fixture(scope="module")
def mobilenet(data_dir):
    """Real MobileNetV2 (ImageNet weights) and its preprocessing at the test's scale."""
    spec = load_config(__import__("conftest").REPO / "config" / "config.yaml")["models"]["mobilenet_v2_imagenet"]
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=data_dir, torch_home=None)
    return model, {**spec["preprocessing"], "resize": RESIZE}


@pytest.fixture(scope="module")
def images(frames, mobilenet):
    transform = dissection_transform(mobilenet[1])
    return torch.stack([transform(frames.image(i)) for i in range(len(frames))])


class CarMask(nn.Module):
    """Appends one channel to features.18's maps: the share of car pixels under each map cell of the frame. The frame
    is recognised by its maps' mean (its fingerprint, nearest of those stored)."""

    def __init__(self, fingerprints: torch.Tensor, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("fingerprints", fingerprints)
        self.register_buffer("masks", masks)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        frame = (maps.mean(dim=(1, 2, 3))[:, None] - self.fingerprints[None]).abs().argmin(dim=1)
        return torch.cat([maps, self.masks[frame][:, None]], dim=1)


class Planted(nn.Module):
    """MobileNetV2 with a 1281st unit after features.18 (`planted`) that feeds only the sports-car logit, weight +M:
    on a frame without cars the network is MobileNetV2, and a lesion of the unit (set to 0) lowers that logit by M
    times the frame's car share and changes nothing else."""

    def __init__(self, net: nn.Module, planted: CarMask):
        super().__init__()
        self.features, self.planted = net.features, planted
        linear = nn.Linear(1281, 1000)
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[:, :1280] = net.classifier[1].weight
            linear.weight[PLANTED_CLASS, 1280] = STRENGTH
            linear.bias.copy_(net.classifier[1].bias)
        self.classifier = nn.Sequential(nn.Dropout(0.2), linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.planted(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def car_shares(frames, map_shape) -> torch.Tensor:
    """[N, h, w]: the share of car pixels (CamVid label 8) under each cell of an h x w grid over the frame."""
    car = [np.asarray(Image.open(frames.root / "labels" / f"{name}.png")) == 8 for name in frames.names]
    return F.adaptive_avg_pool2d(torch.from_numpy(np.stack(car)).float()[:, None], map_shape)[:, 0]


@pytest.fixture(scope="module")
def planted(frames, mobilenet, images, tmp_path_factory):
    """The planted model, its tail at `planted`, its cache of channel means on the frames, and dissection's units."""
    net, preprocessing = mobilenet
    with ActivationRecorder(net, ["features.18"], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        with torch.inference_mode():
            fingerprints = rec(images)["features.18"].mean(dim=1)
            map_shape = tuple(rec.maps["features.18"].shape[2:])
    gaps = (fingerprints[:, None] - fingerprints[None]).abs() + torch.eye(len(fingerprints))
    assert gaps.min() > 1e-4  # the frames are told apart by their fingerprints
    model = Planted(copy.deepcopy(net), CarMask(fingerprints, car_shares(frames, map_shape))).eval()
    model.requires_grad_(False)
    tail = build_tail(model, "planted", "planted_mobilenet")
    cache, means = cu.concept_layer_cache(model, tail, frames, preprocessing, tmp_path_factory.mktemp("cache"))
    units = dissect_network(
        model, frames, ["planted"], preprocessing, model_name="planted_mobilenet", shape=MASK_SHAPE,
        quantile=QUANTILE, iou_threshold=0.04, top_k=1, seed=0, folder=tmp_path_factory.mktemp("dissection"),
    )[0].units  # fmt: skip
    return model, tail, cache, means, units


def test_the_car_classes_are_imagenets_cars():
    import torchvision

    names = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert [names[i] for i in CAR_CLASSES] == [
        "ambulance", "beach wagon", "cab", "convertible", "jeep", "limousine", "minivan", "Model T", "pickup",
        "racer", "sports car",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- sets, coverage


def test_detector_sets_keep_concepts_with_enough_detectors_best_first():
    rows = [
        ("a", 5, "car", "object", 0.10, True),
        ("a", 2, "car", "object", 0.30, True),
        ("a", 9, "car", "object", 0.20, True),
        ("a", 7, "car", "object", 0.20, True),  # ties 9 on IoU: the lower unit first
        ("a", 1, "car", "object", 0.90, False),  # not a detector: never in the set
        ("a", 3, "sky", "object", 0.50, True),
        ("a", 4, "sky", "object", 0.40, True),
        ("a", 6, "red", "color", 0.05, True),
        ("b", 0, "car", "object", 0.08, True),
        ("b", 8, "car", "object", 0.07, True),
        ("b", 2, "car", "object", 0.06, True),
    ]
    units = pd.DataFrame(rows, columns=["layer", "unit", "concept", "category", "iou", "detector"])
    sets = cu.detector_sets(units, "a")
    assert [(s["concept"], s["channels"].tolist()) for s in sets] == [("car", [2, 7, 9, 5])]
    assert sets[0]["channels"].dtype == np.int64 and sets[0]["category"] == "object"
    assert [s["channels"].tolist() for s in cu.detector_sets(units, "b")] == [[0, 8, 2]]  # layers kept apart
    loose = cu.detector_sets(units, "a", min_detectors=1)
    assert [s["concept"] for s in loose] == ["car", "sky", "red"]  # most detectors first
    assert loose[1]["channels"].tolist() == [3, 4]
    with pytest.raises(LesionsError, match=r"no layer 'c' \(layers: a, b\)"):
        cu.detector_sets(units, "c")
    with pytest.raises(LesionsError, match="missing columns detector"):
        cu.detector_sets(units.drop(columns="detector"), "a")


def test_coverage_is_the_share_of_annotated_pixels_by_hand():
    """Codes 1 car, 2 road (objects), 3 red (color), 4 street (an image-level scene); 0 is void."""
    code_category = np.array([-1, 0, 0, 1, 2])
    objects = np.zeros((4, 4), np.int32)
    objects[0, :3] = 1  # 3 car pixels
    objects[1:, :] = 0
    objects[2, :] = 2  # 4 road pixels; the other 9 are void
    colors = np.full((4, 4), 3, np.int32)
    every = frozenset(["object", "color", "scene"])
    annotations = [
        Annotation(np.stack([objects, colors]), categories=every),
        Annotation(np.stack([np.full((4, 4), 2, np.int32), colors]), categories=every),  # road only: no car
        Annotation(np.zeros((2, 4, 4), np.int32), scalars=(4,), categories=every),  # all void; the scene is street
        Annotation(np.stack([objects, colors]), categories=frozenset(["color"])),  # not annotated for objects
    ]
    labels = label_batch(annotations, ["object", "color", "scene"], (4, 4))
    car = cu.concept_coverage(labels, 1, code_category)
    np.testing.assert_array_equal(car[:2], [3 / 7, 0.0])
    assert np.isnan(car[2]) and np.isnan(car[3])  # no annotated object pixel; no object annotation
    np.testing.assert_array_equal(cu.concept_coverage(labels, 3, code_category)[[0, 1, 3]], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(cu.concept_coverage(labels, 4, code_category)[[0, 2]], [np.nan, 1.0])


def test_coverage_of_real_frames_counts_the_label_pixels(frames):
    coverage = cu.set_coverage(frames, [{"concept": "car", "category": "object"}], (360, 480), block=10)[:, 0]
    for index, name in enumerate(frames.names[:6]):
        ids = np.asarray(Image.open(frames.root / "labels" / f"{name}.png"))
        assert coverage[index] == pytest.approx((ids == 8).sum() / (ids != 11).sum())  # 8 car, 11 void
    coarse = cu.set_coverage(frames, [{"concept": "car", "category": "object"}], MASK_SHAPE)[:, 0]
    assert np.abs(coarse - coverage).max() < 0.02 and coverage.max() > 0.1 and (coverage < 0.005).sum() >= 4
    with pytest.raises(LesionsError, match=r"concept 'zebra' \(object\) is not among the concepts of camvid"):
        cu.set_coverage(frames, [{"concept": "zebra", "category": "object"}], MASK_SHAPE)


def test_high_and_low_frames_split_by_coverage():
    coverage = np.array([0.0, 0.3, 0.0, 0.0, 0.1, 0.7, 0.0, 0.5, 0.2, np.nan])
    split = cu.coverage_split(coverage, 1 / 3)  # 9 frames with coverage: thirds of 3
    assert np.flatnonzero(split.high).tolist() == [1, 5, 7] and split.high_cut == 0.3
    assert np.flatnonzero(split.low).tolist() == [0, 2, 3, 6] and split.low_cut == 0.0  # ties join the low frames
    rare = cu.coverage_split(np.array([0, 0, 0, 0, 0, 0.2]), 1 / 3)
    assert np.flatnonzero(rare.high).tolist() == [5] and rare.low.sum() == 5  # never both high and low
    with pytest.raises(LesionsError, match=r"fraction 0.6 must be in \(0, 0.5\]"):
        cu.coverage_split(coverage, 0.6)


# ---------------------------------------------------------------------------------------------- caches


def test_each_layer_cache_gives_the_models_outputs(frames, mobilenet, images, tmp_path):
    """Channel means (features.18: the global pool follows), maps (features.17: an exact tail) and images
    (features.16.conv.0: a skip crosses it, full re-runs): the intact condition reproduces the model's logits."""
    net, preprocessing = mobilenet
    with torch.inference_mode():
        expected = net(images)
    for layer, kind in (("features.18", "means"), ("features.17", "maps"), ("features.16.conv.0", "images")):
        tail = build_tail(net, layer, "mobilenet_v2")
        cache, means = cu.concept_layer_cache(net, tail, frames, preprocessing, tmp_path / layer, batch_size=10)
        shape = {"means": (24, means.shape[1]), "maps": (24, 320, 4, 6), "images": tuple(images.shape)}[kind]
        assert tuple(cache.shape) == shape and means.shape[0] == 24
        intact = torch.zeros(1, means.shape[1], dtype=torch.bool)
        _, _, logits = next(condition_outputs(tail, cache, intact, torch.zeros(means.shape[1]), with_pooled=False))
        torch.testing.assert_close(logits[0], expected, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------- the planted detector


def test_the_planted_unit_is_a_car_detector_and_its_lesion_acts_where_cars_are(frames, planted, tmp_path):
    _, tail, cache, means, units = planted
    assert tail.pool_first and cache.shape == (24, 1281)
    # dissection finds it: the planted unit is the best car detector of the layer
    car = next(s for s in cu.detector_sets(units, "planted", min_detectors=1) if s["concept"] == "car")
    assert car["channels"][0] == 1280 and len(car["channels"]) > 3
    planted_set = {"concept": "car", "category": "object", "channels": car["channels"][:1]}
    splits = [cu.coverage_split(cu.set_coverage(frames, [planted_set], MASK_SHAPE)[:, 0])]
    draws = SetDraws(n_random=30, n_matched=30, matched_candidates=20, seed=0)
    conditions = cu.build_concept_conditions([planted_set], means.mean(0).numpy(), draws, "planted")
    related = cu.related_indexes([planted_set], {"car": CAR_CLASSES}, 1000)
    readouts = cu.evaluate(tail, cache, conditions, ablation_fill("zero", means), related)
    scored = cu.score_conditions(conditions, readouts, splits)
    table = cu.compare_concepts(scored, readouts, splits, layer="planted", n_bootstrap=500, seed=0)
    assert list(table.columns) == list(cu.COMPARISON_COLUMNS) and table["control"].tolist() == ["random", "matched"]
    assert (table["n_high"] == 8).all() and (table["n_low"] == 8).all() and (table["set_size"] == 1).all()
    row = table.iloc[0]
    assert row["kl_high"] > 10 * row["kl_low"] and row["kl_difference_ci_low"] > 0 and row["kl_ratio"] > 10
    assert row["mass_change_high"] < 0 and row["mass_change_high_ci_high"] < 0 and row["intact_mass_high"] > 0
    for _, row in table.iterrows():  # stronger than every distinct control set of both families
        assert row["n_distinct"] >= 10
        smallest = 1 / (1 + row["n_distinct"])
        assert row["p_kl_high"] == row["p_kl_difference"] == row["p_mass_change_high"] == smallest
        assert row["kl_high"] > row["null_kl_high_high"] and row["mass_change_high"] < row["null_mass_change_high_low"]
    assert (table["n_tested"] == 1).all() and (table["q_value"] == table["p_kl_difference"]).all()  # one concept
    assert (table["null_kl_low_low"] <= table["null_kl_low_high"]).all()
    concept_units_figure(table.assign(model="planted"), tmp_path / "concepts.png")
    with Image.open(tmp_path / "concepts.png") as png:  # fits the report's text column
        assert 500 < png.width <= TEXT_COLUMN_PX and png.height > 150
    # provably local: no change at all on frames without a car pixel, a change on every frame with one
    kl = readouts.kl[conditions.table.index[conditions.table["family"] == "detectors"][0]]
    has_car = car_shares(frames, (1, 1))[:, 0, 0].numpy() > 0
    assert (~has_car).any() and (kl[~has_car] == 0).all() and (kl[has_car] > 0).all()


def test_lesioning_nothing_changes_nothing_and_controls_fit_the_set(frames, planted):
    _, tail, cache, means, _ = planted
    sets = [
        {"concept": "car", "category": "object", "channels": np.array([1280, 17, 940])},
        {"concept": "nothing", "category": "object", "channels": np.zeros(0, dtype=np.int64)},
    ]
    draws = SetDraws(n_random=12, n_matched=9, matched_candidates=5, seed=0)
    conditions = cu.build_concept_conditions(sets, means.mean(0).numpy(), draws, "planted")
    table = conditions.table
    assert table.loc[0, "family"] == "intact" and not conditions.ablate[0].any()
    for number, chosen in enumerate(sets):
        rows = table.index[table["set"] == number]
        assert table.loc[rows, "family"].value_counts().to_dict() == {"detectors": 1, "random": 12, "matched": 9}
        for row in rows:
            channels = conditions.sets[row]
            assert len(channels) == len(chosen["channels"]) == len(set(channels.tolist()))
            if table.loc[row, "family"] != "detectors":
                assert not np.isin(channels, chosen["channels"]).any()
    again = cu.build_concept_conditions(sets, means.mean(0).numpy(), draws, "planted")
    assert all(np.array_equal(a, b) for a, b in zip(conditions.sets, again.sets, strict=True))  # seeded
    related = cu.related_indexes(sets, {"car": CAR_CLASSES, "nothing": CAR_CLASSES}, 1000)
    readouts = cu.evaluate(tail, cache, conditions, ablation_fill("zero", means), related)
    nothing = table.index[table["set"] == 1]
    assert (readouts.kl[0] == 0).all() and (readouts.kl[nothing] == 0).all()
    np.testing.assert_array_equal(readouts.mass[nothing], np.broadcast_to(readouts.intact_mass[1], (22, 24)))
    assert np.isnan(readouts.mass[0]).all()
    # the readouts are KL(intact || lesioned) and the car classes' softmax mass, computed here another way
    fill = ablation_fill("zero", means)
    _, _, logits = next(condition_outputs(tail, cache, conditions.ablate[[0, 1]], fill, with_pooled=False))
    intact, lesioned = torch.softmax(logits[0].double(), -1), torch.log_softmax(logits[1].double(), -1)
    expected = F.kl_div(lesioned, intact, reduction="none").sum(-1)
    np.testing.assert_allclose(readouts.kl[1], expected.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(readouts.mass[1], lesioned.exp()[:, CAR_CLASSES].sum(-1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(readouts.intact_mass[0], intact[:, CAR_CLASSES].sum(-1).numpy(), rtol=1e-9)
    # two concepts tested: each family's q-values are Benjamini-Hochberg over both (by hand: the larger p stays, the
    # smaller is doubled unless that passes the larger)
    splits = [cu.coverage_split(car_shares(frames, (1, 1))[:, 0, 0].numpy())] * 2
    table_ = cu.compare_concepts(
        cu.score_conditions(conditions, readouts, splits), readouts, splits, layer="planted", n_bootstrap=100, seed=0
    )
    for _, family in table_.groupby("control"):
        low, high = sorted(family["p_kl_difference"])
        assert sorted(family["q_value"]) == pytest.approx([min(2 * low, high), high])
        assert (family["n_tested"] == 2).all()
    with pytest.raises(LesionsError, match="the first condition must be the intact network"):
        cu.evaluate(tail, cache, Conditions(table, conditions.ablate[1:], conditions.sets[1:]), fill, related)
    with pytest.raises(LesionsError, match="index 1000 is not among the model's 1000 outputs"):
        cu.related_indexes(sets, {"car": [407, 1000]}, 1000)
