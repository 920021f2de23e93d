"""The dissection study's card on the landing page (section.finding_of through build_section and run_section):
its answer follows the numbers (detectors or none; a rotation that lowers the count or leaves it unchanged), its
numbers carry intervals and N, and its figure is one the section stage writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from unitscope.report.plotting import DPI
from unitscope.report.sections import ANSWER_CHARS
from unitscope.studies.dissection.outputs import write_tallies
from unitscope.studies.dissection.plan import SectionSettings
from unitscope.studies.dissection.section import build_section
from unitscope.studies.dissection.stages import run_section
from unitscope.studies.dissection.units import study_units, unit_image_name

CATEGORIES = ["object", "color"]
SETTINGS = SectionSettings(
    kind="camvid", color_concepts=True, quantile=0.005, iou_threshold=0.04, top_images=2, rotation_mask_size=None
)


def layer_row(layer: str, depth: int, units: int, detectors: int, ci: tuple[float, float]) -> dict:
    row = {"model": "net", "layer": layer, "depth": depth, "units": units, "detectors": detectors}
    row.update(unique_best=min(detectors, 2), unique_per_category=min(detectors, 2), mean_best_iou=0.05)
    row.update(empty_units=0, images=6)
    for category in CATEGORIES:
        row[f"detectors_{category}"] = detectors // 2 if category == "object" else detectors - detectors // 2
        row[f"unique_per_category_{category}"] = 1 if detectors else 0
    for name, (low, high) in [
        ("detectors", ci),
        ("unique_best", (0.0, 2.0)),
        ("unique_per_category", (0.0, 2.0)),
        ("mean_best_iou", (0.01, 0.09)),
    ]:
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
    return row


def unit_rows(layer: str, concepts: list[str | None]) -> list[dict]:
    """One unit per entry: a detector of that concept, or (None) a unit detecting nothing."""
    return [
        {
            "model": "net",
            "layer": layer,
            "unit": unit,
            "concept": concept or "sky",
            "category": "object",
            "iou": 0.1 + 0.01 * unit if concept else 0.01,
            "runner_up": "road",
            "runner_up_iou": 0.005,
            "detector": concept is not None,
        }
        for unit, concept in enumerate(concepts)
    ]


def tables(deep_concepts: list[str | None], ci: tuple[float, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model with a shallow layer "a" (one detector of 4 units) and a deep layer "b" (10 units)."""
    detectors = sum(c is not None for c in deep_concepts)
    layers = pd.DataFrame([layer_row("a", 0, 4, 1, (0.0, 2.0)), layer_row("b", 1, 10, detectors, ci)])
    units = pd.DataFrame(unit_rows("a", ["red", None, None, None]) + unit_rows("b", deep_concepts))
    return layers, units


def rotation_table(unrotated: int, rotated: list[int]) -> pd.DataFrame:
    """Layer b's detectors at alpha 0 (every seed) and at alpha 1 (one per seed)."""
    rows = []
    for seed, count in enumerate(rotated):
        for alpha, detectors in [(0.0, unrotated), (1.0, count)]:
            rows.append(
                {
                    "model": "net",
                    "layer": "b",
                    "alpha": alpha,
                    "seed": seed,
                    "units": 10,
                    "detectors": detectors,
                    "unique_best": min(detectors, 2),
                    "unique_per_category": min(detectors, 2),
                    "mean_best_iou": 0.05,
                }
            )
    return pd.DataFrame(rows)


TALLIES = {
    "categories": np.array(CATEGORIES),
    "image_ids": np.arange(6),
    "concept_categories": np.array(["object", "object", "color"]),
    "mask_shape": np.array([60, 80]),
}
FIGURES = {"depth": "figures/dissection/depth.png", "rotation": "figures/dissection/rotation.png"}
FOUR_DETECTORS = ["car", "car", "car", "fence", None, None, None, None, None, None]


def card(deep_concepts, ci, rotation, figures=FIGURES, settings=SETTINGS) -> dict:
    layers, units = tables(deep_concepts, ci)
    section = build_section(
        layers=layers, units=units, tallies=TALLIES, rotation=rotation, settings=settings, figures=figures
    )
    return section["finding"]


def test_detectors_and_a_rotation_that_lowers_their_count_read_as_a_positive_result():
    finding = card(FOUR_DETECTORS, (2.0, 6.0), rotation_table(4, [1, 2, 3]))
    assert not finding["null"]
    answer = finding["answer"]
    assert answer.startswith("In net b, 4 of 10 units (40.0%) detect a concept")
    assert "most often car (3 units)" in answer  # the interval is on the card, not in the sentence
    assert "a full random rotation of its basis lowers the mean detector count from 4.0 to 2.0" in answer
    assert "(3 seeds, range [1, 3])" in answer and answer.endswith(".") and "unchanged" not in answer
    share, concept, rotated = finding["numbers"]
    assert (share["value"], share["interval"], share["n"]) == ("40.0%", "[20.0%, 60.0%]", "N = 6 images, 10 units")
    assert "95% bootstrap interval" in share["label"]
    assert (concept["value"], concept["interval"], concept["n"]) == ("3", None, "of 4 detectors")
    assert "car" in concept["label"]
    assert (rotated["value"], rotated["interval"]) == ("2.0", "[1, 3]")
    assert "unrotated 4.0" in rotated["label"] and rotated["n"] == "N = 3 random rotations, 6 images"
    assert finding["figure"]["src"] == "figures/dissection/rotation.png"
    assert finding["figure"]["caption"].startswith("Look at the left panel")
    assert "detector units" in finding["figure"]["alt"]


def test_a_rotation_that_leaves_the_count_unchanged_reads_as_a_null_result():
    positive = card(FOUR_DETECTORS, (2.0, 6.0), rotation_table(4, [1, 2, 3]))
    finding = card(FOUR_DETECTORS, (2.0, 6.0), rotation_table(4, [3, 4, 5]))
    assert finding["null"] and finding["answer"] != positive["answer"]
    assert "leaves the mean detector count unchanged at 4.0 (3 seeds, range [3, 5])" in finding["answer"]
    assert "lowers" not in finding["answer"] and "raises" not in finding["answer"]
    assert finding["numbers"][2]["interval"] == "[3, 5]"


def test_a_rotation_that_raises_the_count_says_so():
    finding = card(FOUR_DETECTORS, (2.0, 6.0), rotation_table(4, [6, 6]))
    assert not finding["null"]
    assert "raises the mean detector count from 4.0 to 6.0" in finding["answer"]


def test_a_layer_without_detectors_reads_as_a_null_result_with_its_interval():
    finding = card([None] * 10, (0.0, 1.0), None)
    assert finding["null"]
    assert finding["answer"] == ("In net b, no unit of 10 detects a concept.")
    [share] = finding["numbers"]  # no concept to name, no rotation
    assert (share["value"], share["interval"]) == ("0.0%", "[0.0%, 10.0%]")
    assert finding["figure"]["src"] == "figures/dissection/depth.png"  # no rotation experiment: the depth figure
    assert finding["figure"]["caption"].startswith("Look at")


def test_tied_concepts_another_rotated_layer_and_coarser_masks_are_named():
    deep = ["car", "car", "fence", "fence", "tree", None, None, None, None, None]
    rotation = rotation_table(4, [2, 2]).assign(layer="a")
    settings = dataclasses.replace(SETTINGS, rotation_mask_size=45)
    finding = card(deep, (2.0, 6.0), rotation, settings=settings)
    assert "most often car and fence (2 units each)" in finding["answer"]
    assert "a full random rotation of a's basis lowers" in finding["answer"]
    other_model = card(deep, (2.0, 6.0), rotation.assign(model="other"), settings=settings)
    assert "a full random rotation of other a's basis" in other_model["answer"]
    assert "(2 seeds, range [2, 2], coarser masks)" in finding["answer"]
    assert "car and fence" in finding["numbers"][1]["label"]
    # the card reports the deepest layer of the rotated model; without a rotation figure it shows the depth figure
    assert card(deep, (2.0, 6.0), rotation, figures={"depth": FIGURES["depth"]})["figure"]["src"] == FIGURES["depth"]


def test_a_long_answer_drops_its_details_to_stay_one_short_sentence():
    layers, units = tables(FOUR_DETECTORS, (2.0, 6.0))
    long = "efficientnet_v2_large_imagenet_finetuned_on_places365"
    layers["model"], units["model"] = long, long
    names = {"a": "features.1.block.0", "b": "features.7.block.3.conv"}
    layers["layer"], units["layer"] = layers["layer"].map(names), units["layer"].map(names)
    rotation = rotation_table(4, [1, 2, 3]).assign(model=long, layer="features.7.block.3.conv")
    section = build_section(
        layers=layers, units=units, tallies=TALLIES, rotation=rotation, settings=SETTINGS, figures=FIGURES
    )
    answer = section["finding"]["answer"]
    assert len(answer) <= ANSWER_CHARS and "range" not in answer and "from 4.0 to 2.0" in answer


@pytest.mark.parametrize("with_rotation", [True, False])
def test_the_cards_figure_is_one_the_section_stage_writes_and_fits_the_text_column(tmp_path, with_rotation):
    layers, units = tables(FOUR_DETECTORS, (2.0, 6.0))
    data, report = tmp_path / "results/dissection", tmp_path / "results/report"
    data.mkdir(parents=True)
    layers.to_parquet(data / "layers.parquet")
    units.to_parquet(data / "units.parquet")
    write_tallies(data / "tallies.npz", TALLIES)
    rotation_path = None
    if with_rotation:
        rotation_path = data / "rotation.parquet"
        rotation_table(4, [1, 2, 3]).to_parquet(rotation_path)
    folders = {}
    for (model, layer), listed in study_units(units).groupby(["model", "layer"]):
        folder = folders[f"{model}/{layer}"] = report / f"figures/dissection/units/{model}/{layer}"
        folder.mkdir(parents=True)
        for unit in listed["unit"]:
            (folder / unit_image_name(model, layer, unit)).write_bytes(b"png")
    section = run_section(
        SETTINGS,
        layer_paths=[data / "layers.parquet"],
        unit_paths=[data / "units.parquet"],
        tallies_path=data / "tallies.npz",
        rotation_path=rotation_path,
        depth_figure_path=report / "figures/dissection/depth.png",
        rotation_figure_path=report / "figures/dissection/rotation.png",
        unit_figures={},
        unit_image_dirs=folders,
        out_path=data / "section.json",
    )
    figure = section["finding"]["figure"]
    assert figure["src"] == f"figures/dissection/{'rotation' if with_rotation else 'depth'}.png"
    assert (report / figure["src"]).is_file()
    assert f'<img src="{figure["src"]}"' in section["body_html"]  # the section shows it too, with the same texts
    assert f'alt="{escape(figure["alt"])}"' in section["body_html"]
    for name in ["depth.png", "rotation.png"] if with_rotation else ["depth.png"]:
        with Image.open(report / "figures/dissection" / name) as png:
            assert png.width <= 960, (name, png.width, DPI)
