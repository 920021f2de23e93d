"""The nefesi finding card (how the mean selectivity indexes change from the first to the last analysed layer), the
section body's figure order, captions and alt texts, and the figures' sizes. Constructed index tables (seeded):
no network, no images."""

from __future__ import annotations

import os
import re

import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from unitscope.report import plotting
from unitscope.report.sections import ANSWER_CHARS
from unitscope.studies.nefesi import figures, section
from unitscope.studies.nefesi.plan import REPORT_DIR, NefesiPlan

HISTOGRAMS = "figures/nefesi/{model}/histograms.png"
INDEXES = ("color", "orientation", "symmetry", "class")


def index_table(channels: int, centres: dict[str, float], seed: int, spread: float = 0.05) -> pd.DataFrame:
    """A layer's index table: each index drawn around its centre (NaN centre: no values, as on grayscale input)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"channel": np.arange(channels), "dead": np.zeros(channels, dtype=bool)})
    for name in INDEXES:
        centre = centres.get(name, 0.5)
        table[f"{name}_index"] = np.clip(rng.normal(centre, spread, channels), 0, 1)
    table["population_code"] = rng.integers(1, 4, channels)
    table["top_class_share"] = rng.uniform(0.3, 0.9, channels)
    table["class_M"], table["class_K"] = 2, 3
    table["top_class"] = rng.choice(["cat", "dog", "a very long imagenet class name"], channels)
    table["dominant_color"] = "grey"
    table["preferred_angle"] = rng.uniform(0, 180, channels)
    table["top_activation"] = rng.uniform(1, 5, channels)
    return table


def layer_info(model: str, layer: str, channels: int) -> dict:
    """The parts of layer.json the section reads."""
    return {
        "model": model,
        "layer": layer,
        "channels": channels,
        "top_n": 3,
        "images": 20,
        "classes": 8,
        "receptive_field": {"size": [15, 15]},
        "probe_window": [15, 15],
        "forwards": 100,
        "seconds": 1.0,
        "identity_max_abs_error": 0.0,
        "exemplar_crops": 3 * channels,
        "whole_image_exemplars": 0,
    }


def model_results(
    model: str, layers: dict[str, dict[str, float]], channels: int = 24, spread: float = 0.05
) -> section.ModelResults:
    """ModelResults of `model` whose layers ({layer: index centres}, shallow to deep) have `channels` channels."""
    tables = {
        layer: index_table(channels, centres, seed, spread) for seed, (layer, centres) in enumerate(layers.items())
    }
    infos = {layer: layer_info(model, layer, channels) for layer in layers}
    summaries = {layer: section.layer_summary(tables[layer], infos[layer], 0.1) for layer in layers}
    deep = list(layers)[-1]
    tree = {"layer": deep, "channel": 0, "chosen": "highest class index", "tree": {"children": []}}
    return section.ModelResults(model, list(layers), tables, infos, summaries, tree, [])


def card(*results: section.ModelResults) -> dict:
    return section.finding_of(list(results), [HISTOGRAMS.format(model=r.name) for r in results])


SAME = {"color": 0.3, "orientation": 0.5, "symmetry": 0.5, "class": 0.2}


def test_a_change_beyond_the_intervals_and_none_give_different_answers():
    changed = model_results("net", {"conv1": SAME, "conv5": {**SAME, "orientation": 0.8, "symmetry": 0.3}})
    positive = card(changed)
    assert not positive["null"]
    assert "orientation index rises from" in positive["answer"] and "symmetry index falls from" in positive["answer"]
    assert "while the color and class indexes do not change beyond theirs" in positive["answer"]
    null = card(model_results("net", {"conv1": SAME, "conv5": SAME}))
    assert null["null"] and null["answer"] != positive["answer"]
    assert "none of the mean selectivity indexes (color, orientation, symmetry, class) changes" in null["answer"]
    for answer in (positive["answer"], null["answer"]):
        assert answer.startswith("In net from conv1 to conv5") and answer.endswith(".") and ". " not in answer


def test_numbers_carry_intervals_and_n_and_the_largest_changes_come_first():
    results = model_results("net", {"conv1": SAME, "conv3": SAME, "conv5": {**SAME, "orientation": 0.8}}, 24)
    found = card(results)
    numbers = found["numbers"]
    assert len(numbers) == 3 and "orientation index in conv5" in numbers[0]["label"]
    last = results.summaries["conv5"]
    assert numbers[0]["value"] == f"{last['orientation_index_mean']:.2f}"
    low, high = last["orientation_index_ci95"]
    assert numbers[0]["interval"] == f"[{low:.2f}, {high:.2f}]" and low < last["orientation_index_mean"] < high
    for number in numbers:
        assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d\]", number["interval"])
        assert "95% interval" in number["label"] and re.search(r"in conv1 \d\.\d\d \[", number["label"])
        assert number["n"] == "N = 24 channels of conv5, 24 of conv1"


def test_intervals_that_overlap_are_no_change_even_when_the_means_differ():
    """Few, spread-out channels: the means differ but their intervals overlap, so the answer is null."""
    wide = model_results("net", {"a": SAME, "b": {**SAME, "class": 0.3}}, channels=6, spread=0.2)
    first, last = wide.summaries["a"], wide.summaries["b"]
    assert first["class_index_mean"] != last["class_index_mean"]
    assert last["class_index_ci95"][0] <= first["class_index_ci95"][1]
    assert card(wide)["null"]


def test_grayscale_model_says_its_color_index_is_missing():
    gray = model_results("gray", {"c1": {**SAME, "color": np.nan}, "c2": {**SAME, "color": np.nan, "class": 0.9}})
    found = card(gray)
    assert "(color not available)" in found["answer"] and "class index rises" in found["answer"]
    assert all("color" not in number["label"] for number in found["numbers"])


def test_several_models_in_one_sentence_and_the_first_alone_when_they_do_not_fit():
    a = model_results("net_a", {"l1": SAME, "l2": {**SAME, "orientation": 0.8}})
    b = model_results("net_b", {"l1": SAME, "l2": SAME})
    both = card(a, b)
    assert "net_a" in both["answer"] and "; in net_b (l1 to l2) no mean index changes" in both["answer"]
    assert not both["null"] and both["figure"]["src"] == HISTOGRAMS.format(model="net_a")
    deep = model_results("resnet56_cifar", {"l1": SAME, "l3": {**SAME, "orientation": 0.8, "symmetry": 0.3}})
    wide = model_results("mobilenet_v2_imagenet", {"features.1": SAME, "features.4": SAME})
    brief = card(deep, wide)["answer"]  # with their means the two would not fit: both in brief
    assert brief.startswith("In resnet56_cifar (l1 to l3) mean orientation rises and symmetry falls beyond their 95%")
    assert brief.endswith(
        "; in mobilenet_v2_imagenet (features.1 to features.4) no mean index changes beyond its 95% interval."
    )
    long = [model_results(f"a_model_with_a_rather_long_name_{i}", {"l1": SAME, "l2": SAME}) for i in range(4)]
    first = card(*long)
    assert first["answer"].count("a_model_with_a_rather_long_name") == 1
    assert first["answer"].endswith("(first of 4 models in the section).") and len(first["answer"]) <= ANSWER_CHARS


def test_a_model_with_one_layer_reads_as_no_change():
    found = card(model_results("net", {"conv1": SAME}))
    assert found["null"] and found["answer"].startswith("In net only conv1 is analysed")
    assert "no change between layers can be measured" in found["answer"]
    assert found["numbers"][0]["n"] == "N = 24 channels of conv1" and "in conv1 0." not in found["numbers"][0]["label"]


def test_the_card_figure_is_the_histograms_figure_the_study_writes(default_config):
    plan = NefesiPlan(default_config)
    written = {os.path.relpath(path, REPORT_DIR) for path in plan.figures()}
    for model, entry in plan.section_models().items():
        results = model_results(model, {layer: SAME for layer in entry["layers"]})
        figure = section.finding_of([results], [entry["figures"]["histograms"]])["figure"]
        assert figure["src"] in written and figure["src"].endswith(f"{model}/histograms.png")
        assert figure["caption"].startswith("Look at the red band") and entry["layers"][-1] in figure["caption"]
        assert figure["alt"].startswith("A grid of histograms") and figure["alt"] != figure["caption"]


def test_body_shows_each_figure_before_its_table_with_look_captions_and_alt_texts():
    results = model_results("net", {"conv1": SAME, "conv5": SAME})
    shown = {
        "histograms": "figures/nefesi/net/histograms.png",
        "hierarchy": "figures/nefesi/net/hierarchy.png",
        "grids": {layer: f"figures/nefesi/net/{layer}_nf.png" for layer in results.layers},
        "tops": {layer: f"figures/nefesi/net/{layer}_top.png" for layer in results.layers},
        "decompositions": [],
    }
    settings = {
        "top_n": 3,
        "rotation_step": 15,
        "class_coverage": 1.0,
        "population_threshold": 0.1,
        "color_selective_threshold": 0.1,
        "order_by": "color",
    }
    body = section.section_body([section.model_context(results, shown, [], settings)], settings)
    assert body.index("histograms.png") < body.index("<table")  # the figure before the layer table
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S)
    alts = re.findall(r'alt="([^"]*)"', body)
    assert len(captions) == len(alts) == 6  # histograms, hierarchy, NF grid and top channels of 2 layers
    assert all(caption.startswith("Look") for caption in captions)
    assert all(alt and not caption.startswith(alt) for alt, caption in zip(alts, captions, strict=True))
    assert not re.search(r"95% CI|\[95%", body)


@pytest.fixture
def drawn(monkeypatch):
    """Each figure the study draws, as (width in px at the report's DPI, smallest font size in pt)."""
    sizes = []

    def measure(fig, path):
        """The width save_figure's bbox_inches="tight" gives (one draw: a PNG would take two, and longer)."""
        fig.set_dpi(plotting.DPI)
        fig.canvas.draw()
        pad = 2 * matplotlib.rcParams["savefig.pad_inches"]
        width = (fig.get_tightbbox(fig.canvas.get_renderer()).width + pad) * plotting.DPI
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        sizes.append((round(width), min(t.get_fontsize() for t in texts)))
        matplotlib.pyplot.close(fig)

    monkeypatch.setattr(figures, "save_figure", measure)
    return sizes


class Field:
    """A 7-px receptive field centred on (y, x)."""

    def box(self, y, x):
        return y - 3, x - 3, y + 4, x + 4


def test_every_figure_fits_the_text_column_with_readable_fonts(drawn):
    rng = np.random.default_rng(0)
    big = index_table(60, SAME, 0)  # 10 columns of NFs: the most the grid puts side by side
    small = index_table(16, SAME, 1)
    nf = rng.uniform(0, 1, (60, 7, 7, 3))
    info = {**layer_info("a_model_named_at_some_length", "features.18.conv.2", 60), "receptive_field": {"size": [7, 7]}}
    figures.draw_layer_figures(big, nf, info, order_by="color", top_channels=8, out_grid="g", out_top="t")
    figures.draw_histograms("net", {"features.1": small, "features.4": big}, "h")
    leaf = {"layer": "features.1", "channel": 1, "weight": 0.5, "children": []}
    middle = {"layer": "features.3", "channel": 2, "weight": 0.7, "children": [leaf] * 3}
    tree = {"layer": "features.4", "channel": 3, "weight": None, "children": [middle] * 3}  # 9 leaves
    nfs = {layer: nf for layer in ("features.1", "features.3", "features.4")}
    record = {"layer": "features.4", "channel": 3, "chosen": "highest class index", "tree": tree}
    figures.draw_hierarchy("a_model_named_at_some_length", record, 3, nfs, "y")
    kept = [{"channel": c, "y": 5 + 4 * c, "x": 6 + 3 * c, "relative": 0.9} for c in range(4)]
    decomposition = {"model": "net", "layer": "l1", "dataset": "objects", "image_id": "objects/test/truck/0146.jpg"}
    figures.draw_decomposition(
        rng.uniform(0, 1, (32, 32, 3)), kept, nf, Field(), ((0, 7), (0, 7)), {**decomposition, "class": "truck"},
        max_overlap=0.3, path="d",
    )  # fmt: skip
    crops = rng.uniform(0, 1, (8, 7, 7, 3))
    shown = pd.DataFrame({"rank": range(8), "activation": rng.uniform(1, 5, 8)})
    labels = figures.unit_labels(shown, pd.Series(rng.uniform(0, 1, 8)), pd.Series(["a very long class name"] * 8))
    figures.unit_figure(nf[0], crops, labels, figures.unit_title("net", "l1", 0, info, 8, 8), "u")
    assert len(drawn) == 6
    for width, font in drawn:
        assert width <= 960 and font >= 9, drawn
