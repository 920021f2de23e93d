"""Lesions study, colour units: on real MNIST digits coloured by the actmax study's Biased Colored-MNIST code, through
a ColoredMnistCNN trained here for a few seconds (3,000 training images, one epoch, saved as a local checkpoint and
loaded back): a planted red unit that alone carries class 0's colour shortcut is judged colour-coding by the probe,
and its lesion lowers biased accuracy and never lowers conflicting accuracy; lesioning nothing changes nothing; the
cached tail gives the model's own predictions and lesions; random controls have the set's size and leave out its
units; `colour_sets` follows the stated rule."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from unitscope.interventions.errors import InterventionError
from unitscope.interventions.tail import build_tail, hooked_condition
from unitscope.report.plotting import TEXT_COLUMN_PX
from unitscope.studies.actmax.color_shape import color_shape_probe
from unitscope.studies.actmax.colored_mnist import (
    CLASS_COLORS,
    EVAL_SETS,
    build_colored_mnist,
    load_mnist_sources,
    load_trained_model,
    predict,
    train_model,
)
from unitscope.studies.lesions import colour_units as co
from unitscope.studies.lesions.figures import colour_units_figure
from unitscope.studies.lesions.inputs import LesionsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

RED, STRENGTH = 0, 1000.0  # class 0's colour is pure red; the planted unit moves class 0's logit by +-1000


@pytest.fixture(scope="module")
def data(data_dir):
    return build_colored_mnist(load_mnist_sources(data_dir / "mnist"), rho=0.99, seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A few seconds of training (narrow layers), saved as a checkpoint and loaded the way the stage loads it."""
    model, info = train_model(data, widths=(8, 16, 16), epochs=1, train_images=3000, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("colour_model")
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(info))
    return load_trained_model(folder / "model.pt", folder / "model.json")


@pytest.fixture(scope="module")
def evaluation(data):
    return co.evaluation_images(data, max_images=600, seed=0)


class AppendChannel(nn.Module):
    """The planted layer: conv3's maps and one more channel holding a per-image value at every position."""

    def forward(self, maps: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        return torch.cat([maps, unit[:, None, None, None].expand(-1, 1, *maps.shape[2:])], dim=1)


class PlantedRed(nn.Module):
    """The trained CNN with a 17th channel after conv3 (layer `planted`): 1 when some pixel is strongly red (the
    red excess R - max(G, B) above 0.5, which no other class colour reaches), else 0. It feeds only class 0's logit,
    weight +2M and bias -M: a red digit gets class 0's logit +M (so it is predicted 0), any other digit, or a red one
    with the unit lesioned (0), gets -M (never predicted 0). The colour shortcut for class 0 lives in this unit."""

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "pool"):
            setattr(self, name, getattr(net, name))
        self.planted = AppendChannel()
        width = net.classifier.in_features
        self.classifier = nn.Linear(width + 1, 10)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:, :width] = net.classifier.weight
            self.classifier.weight[RED, width] = 2 * STRENGTH
            self.classifier.bias.copy_(net.classifier.bias)
            self.classifier.bias[RED] -= STRENGTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.conv3(self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))))
        excess = torch.relu(x[:, 0] - torch.maximum(x[:, 1], x[:, 2]) - 0.5).amax(dim=(1, 2))
        unit = torch.clamp(excess * 1e3, max=1.0)
        return self.classifier(self.pool(self.relu3(self.planted(maps, unit))).flatten(1))


def test_a_planted_colour_unit_is_judged_colour_and_its_lesion_weakens_the_shortcut(
    trained, data, evaluation, tmp_path
):
    assert CLASS_COLORS[RED].tolist() == [1.0, 0.0, 0.0]
    model = PlantedRed(copy.deepcopy(trained)).eval().requires_grad_(False)
    planted = 16
    probe = color_shape_probe(model, data.digits["biased"], data.labels["biased"], ["planted"], groups=10, seed=0)
    assert probe.loc[probe["channel"] == planted, "color_index"].item() == pytest.approx(1.0)
    full = co.colour_sets(probe, ["planted"])
    assert full[0]["kind"] == "colour" and full[0]["channels"][0] == planted  # judged colour-coding, first
    sets = co.colour_sets(probe, ["planted"], max_units=1)
    assert [s["channels"].tolist() for s in sets][0] == [planted] and len(sets[1]["channels"]) == 1

    lesions = co.lesion_layer(model, "planted", sets, evaluation, n_random=20, seed=0)
    intact, lesioned = 0, 1  # rows: intact, then the colour set's lesion
    assert lesions.conditions.table.loc[lesioned, "condition"] == "colour_lesion"
    red = {name: evaluation.colors[name] == RED for name in EVAL_SETS}
    zero = evaluation.labels == RED
    biased = lesions.correct["biased"]
    # red zeros: right with the unit, never right without it; digits that are not red do not change
    assert biased[intact, red["biased"] & zero].all() and not biased[lesioned, red["biased"] & zero].any()
    assert (biased[lesioned, ~red["biased"]] == biased[intact, ~red["biased"]]).all()
    # conflicting colours: no zero is red, so the lesion can only undo red non-zeros' forced 0
    conflicting = lesions.correct["conflicting"]
    assert not (red["conflicting"] & zero).any() and (conflicting[lesioned] >= conflicting[intact]).all()

    scored = co.score_conditions(lesions)
    bound = ((red["biased"] & zero).sum() - (red["biased"] & ~zero).sum()) / evaluation.n_images
    assert bound > 0.05 and scored.loc[lesioned, "change_biased"] <= -bound + 1e-12
    assert scored.loc[lesioned, "change_conflicting"] > 0 and scored.loc[lesioned, "change_gap"] < -bound + 1e-12

    compared = co.compare_sets(scored, lesions, n_bootstrap=300, seed=0)
    row = compared.set_index(["kind", "measure"]).loc["colour"]
    assert row.loc["biased", "change"] == pytest.approx(scored.loc[lesioned, "change_biased"])
    assert row.loc["biased", "change_high"] < 0 and row.loc["conflicting", "change_low"] >= 0
    assert row.loc["gap", "change_high"] < 0 and row.loc["gap", "direction"] == "lower"
    assert row.loc["conflicting", "direction"] == "higher" and row.loc["biased", "direction"] == "lower"
    assert (row["n_draws"] == 20).all() and (row["n_distinct"] <= 16).all() and (row["channels"].map(len) == 1).all()
    assert 0 < row.loc["biased", "p_value"] <= 1 and row.loc["biased", "null_low"] <= row.loc["biased", "null_high"]
    adjusted = co.adjust_over_layers(compared)  # one layer tested: q = p
    assert (adjusted["q_value"] == adjusted["p_value"]).all() and (adjusted["n_tested"] == 1).all()
    colour_units_figure(adjusted, tmp_path / "colour.png")
    with Image.open(tmp_path / "colour.png") as png:  # fits the report's text column
        assert 500 < png.width <= TEXT_COLUMN_PX and png.height > 200
    summary = co.shortcut_summary(compared)
    assert summary.set_index("kind").loc["colour", "gap_change"] == pytest.approx(row.loc["gap", "change"])


def test_lesioning_nothing_changes_nothing_and_controls_leave_out_the_set(trained, evaluation, data):
    again = co.evaluation_images(data, max_images=600, seed=0)
    assert np.array_equal(again.index, evaluation.index) and np.all(np.diff(evaluation.index) > 0)
    assert not np.array_equal(co.evaluation_images(data, max_images=600, seed=1).index, evaluation.index)
    shape_set = np.array([0, 3, 5])
    sets = [
        {"layer": "conv2", "kind": "colour", "channels": np.zeros(0, dtype=np.int64)},
        {"layer": "conv2", "kind": "shape", "channels": shape_set},
    ]
    lesions = co.lesion_layer(trained, "conv2", sets, evaluation, n_random=6, seed=0)
    table = lesions.conditions.table
    for name in EVAL_SETS:  # the cached tail's intact run is the model's own prediction
        predicted = predict(trained, evaluation.images[name]).numpy()
        assert np.array_equal(lesions.correct[name][0], predicted == evaluation.labels)
        assert np.array_equal(lesions.correct[name][1], lesions.correct[name][0])  # the empty lesion
    shape_row = table.index[table["condition"] == "shape_lesion"].item()
    tail = build_tail(trained, "conv2", "colored_mnist_cnn")
    images = evaluation.images["biased"]
    ablate = lesions.conditions.ablate[shape_row]  # the reference: one full run, a hook zeroing the set at conv2
    _, logits = hooked_condition(trained, tail, images, ablate, torch.zeros(len(ablate)))
    hooked_correct = logits.argmax(1).numpy() == evaluation.labels
    assert np.array_equal(lesions.correct["biased"][shape_row], hooked_correct)
    assert not np.array_equal(hooked_correct, lesions.correct["biased"][0])  # the lesion does change predictions
    randoms = table[(table["family"] == "random") & (table["kind"] == "shape")].index
    assert len(randoms) == 6
    for row in randoms:
        drawn = lesions.conditions.sets[row]
        assert len(set(drawn.tolist())) == 3 and not np.isin(drawn, shape_set).any()
    compared = co.compare_sets(co.score_conditions(lesions), lesions, n_bootstrap=200, seed=0)
    empty = compared[compared["kind"] == "colour"]
    assert (empty[["change", "change_low", "change_high", "null_mean"]] == 0).all().all()
    assert set(empty["measure"]) == set(co.MEASURES) and (empty["n_images"] == 600).all()
    with pytest.raises(InterventionError, match="lesions.colour_units.ablation"):
        co.lesion_layer(trained, "conv2", sets, evaluation, n_random=1, seed=0, ablation="median")


def _probe(layer: str, indexes) -> pd.DataFrame:
    return pd.DataFrame({"layer": layer, "kind": "channel", "channel": np.arange(len(indexes)), "color_index": indexes})


def test_colour_sets_follow_the_stated_rule():
    neuron = pd.DataFrame([{"layer": "a", "kind": "neuron", "channel": 1, "color_index": 0.99}])
    probe = pd.concat(
        [
            _probe("a", [0.9, 0.5, 0.7, np.nan, 0.1, 0.7, 0.3, 0.2]),
            _probe("b", [0.5, 0.2, 0.4]),  # no unit above 0.5: no set at all
            _probe("c", [0.8, 0.9, 0.6, 0.4]),  # three colour units, one left for the shape set
            _probe("d", [0.9, 0.8, 0.7, 0.6, 0.55]),  # every unit codes colour: the shape set is the least colour
            neuron,
        ]
    )
    sets = co.colour_sets(probe, ["a", "b", "c"])
    got = {(s["layer"], s["kind"]): s["channels"].tolist() for s in sets}
    assert got == {
        ("a", "colour"): [0, 2, 5],
        ("a", "shape"): [4, 7, 6],
        ("c", "colour"): [1, 0, 2],
        ("c", "shape"): [3],
    }
    assert all(s["channels"].dtype == np.int64 and s["threshold"] == 0.5 for s in sets)
    capped = co.colour_sets(probe, ["a", "d"], max_units=2)
    assert [s["channels"].tolist() for s in capped] == [[0, 2], [4, 7], [0, 1], [4, 3]]
    assert capped[3]["color_index"].tolist() == [0.55, 0.6]
    summary = co.layer_summary(probe, ["a", "b", "c"], sets).set_index("layer")
    assert summary["n_colour"].tolist() == [3, 0, 3] and summary["lesioned"].tolist() == [True, False, True]
    assert summary.loc["a", "n_responsive"] == 7 and summary.loc["b", "shape_size"] == 0
    assert summary.loc["c", "colour_mean_index"] == pytest.approx(0.766666, abs=1e-5)
    assert summary.loc["c", "shape_max_index"] == 0.4 and np.isnan(summary.loc["b", "shape_mean_index"])
    built = co.build_conditions([s for s in sets if s["layer"] == "c"], "c", 4, n_random=5, seed=0)
    counts = built.table.groupby(["family", "kind"]).size().to_dict()
    assert counts == {("intact", ""): 1, ("set", "colour"): 1, ("set", "shape"): 1, ("random", "shape"): 5}
    with pytest.raises(LesionsError, match=r"no channel rows for layer 'conv9' \(layers: a, b, c, d\)"):
        co.colour_sets(probe, ["conv9"])
    with pytest.raises(LesionsError, match="missing columns color_index"):
        co.colour_sets(probe.drop(columns="color_index"), ["a"])
