"""The faces study's landing-page card (section.finding_of) and the report's reading rules for its section:
answers worded by the verdicts (a null result reads as one), numbers with intervals and N, a card figure the
workflow draws, figures before tables with captions and alt text, figures that fit the text column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.report.render import ci
from unitscope.stats import wilson_interval
from unitscope.studies.faces import figures
from unitscope.studies.faces.categories import category_table, selectivity_table
from unitscope.studies.faces.controls import control_table
from unitscope.studies.faces.inputs import CategoryMeans
from unitscope.studies.faces.pca import pca_table
from unitscope.studies.faces.plan import SectionSettings
from unitscope.studies.faces.section import claims, finding_of, verdicts
from unitscope.studies.faces.selection import selected_channels, selection_table
from unitscope.studies.faces.stages import run_interventions_figure, run_section

REPO = Path(__file__).resolve().parents[3]
SETTINGS = SectionSettings(
    rule="top_percentile", percentile=5, fdr=0.05, alpha=0.05, pca_levels=(0.8, 0.95), face_dataset="faces"
)
INTERVAL = re.compile(r"^\[-?\d+\.\d+%?, -?\d+\.\d+%?\]$")
COLUMN_PX = 960


def conditions_table(
    *,
    lesion_fixed: float = 0.945,
    keep_retrained: float = 0.70,
    lesion_ratio: float = 1.2,
    control_lesion_fixed: float = 0.94,
    control_keep_retrained: float = 0.80,
    n_draws: int = 40,
    channels: tuple[int, ...] = (0, 1, 2),
) -> pd.DataFrame:
    """A conditions table as the intervention stage writes it (200 faces, 200 non-faces, 200 held out), with
    chosen readouts for the selected set; each control draw a distinct channel set, its readouts spread over
    0.01 (accuracies) or 0.5 (KL ratio) above the given level."""
    rng = np.random.default_rng(0)
    size = len(channels)
    rows = [
        {"condition": "intact", "family": "intact", "mode": "none", "set_size": 0, "n_ablated": 0, "channels": []},
        {"condition": "lesion", "family": "selected", "mode": "lesion", "channels": list(channels)},
        {"condition": "keep_only", "family": "selected", "mode": "keep_only", "channels": list(channels)},
    ]
    for family in ("random", "matched"):
        for draw in range(n_draws):
            for mode in ("lesion", "keep_only"):
                picked = [10 + draw, 100 + draw, 200 + draw] if family == "random" else [20 + draw, 300 + draw, 7]
                rows.append(
                    {"condition": f"{family}_{mode}_{draw:03d}", "family": family, "mode": mode, "channels": picked}
                )
    table = pd.DataFrame(rows)
    n = len(table)
    controls = table["family"].isin(["random", "matched"])
    lesion, keep = table["mode"] == "lesion", table["mode"] == "keep_only"
    table["set_size"] = np.where(table["family"] == "intact", 0, size)
    table["n_ablated"] = np.where(table["family"] == "intact", 0, np.where(keep, 64 - size, size))
    table["fixed_accuracy"] = np.where(lesion, control_lesion_fixed + 0.01 * rng.random(n), 0.6)
    table["retrained_accuracy"] = np.where(keep, control_keep_retrained + 0.01 * rng.random(n), 0.94)
    table["kl_face_ratio"] = np.where(lesion, 1.0 + 0.5 * rng.random(n), 0.8 + 0.1 * rng.random(n))
    table["kl_nonfaces"] = 0.05 + 0.01 * rng.random(n)
    table["kl_faces"] = table["kl_face_ratio"] * table["kl_nonfaces"]
    table["pca_pc1"] = 0.3 + 0.02 * rng.random(n)
    table["pca_n95"] = 9
    by_name = {name: table["condition"] == name for name in ("intact", "lesion", "keep_only")}
    table.loc[by_name["intact"], ["fixed_accuracy", "retrained_accuracy", "kl_faces", "kl_nonfaces"]] = [
        0.95,
        0.95,
        0.0,
        0.0,
    ]
    table.loc[by_name["intact"], "kl_face_ratio"] = np.nan
    table.loc[by_name["lesion"], ["fixed_accuracy", "kl_face_ratio"]] = [lesion_fixed, lesion_ratio]
    table.loc[by_name["lesion"], "kl_faces"] = lesion_ratio * 0.05
    table.loc[by_name["keep_only"], "retrained_accuracy"] = keep_retrained
    table["set_mean_activation"] = np.where(controls, 0.5, np.where(table["family"] == "selected", 1.0, np.nan))
    table["n_faces"], table["n_nonfaces"], table["fixed_n_test"] = 200, 200, 200
    table["model"], table["layer"], table["ablation"], table["downstream"] = "m", "l", "zero", ""
    return table


def card(conditions: pd.DataFrame, settings: SectionSettings = SETTINGS) -> dict:
    return finding_of(conditions, control_table(conditions), settings)


# ---------------------------------------------------------------------------------------------- answers


def test_positive_and_null_results_read_differently():
    positive = card(conditions_table(lesion_fixed=0.60, keep_retrained=0.95, lesion_ratio=5.0))
    null = card(conditions_table())
    assert positive["answer"] == (
        "The 3 most face-active channels of m l are face-specific by output change, necessary to tell faces "
        "from non-faces and sufficient on their own."
    )
    assert null["answer"] == (
        "The 3 most face-active channels of m l are not shown to be face-specific, not necessary "
        "to tell faces from non-faces and not sufficient on their own."
    )
    assert positive["null"] is False and null["null"] is True
    assert positive["question"] == null["question"] and positive["question"].endswith("?")
    assert "top 5%" in positive["question"]


def test_a_mixed_result_names_what_holds_then_what_does_not():
    mixed = card(conditions_table(lesion_ratio=5.0))
    assert mixed["answer"] == (
        "The 3 most face-active channels of m l are face-specific by output change but not necessary to tell "
        "faces from non-faces and not sufficient on their own."
    )
    assert mixed["null"] is False


def test_the_verdicts_are_the_claims_with_their_evidence():
    """Each verdict is a row of the landing page's claims table, shown exactly when the verdict holds."""
    conditions = conditions_table(lesion_ratio=5.0)
    controls = control_table(conditions)
    rows = claims(conditions, controls, SETTINGS)
    judged = verdicts(conditions, controls, SETTINGS.alpha)
    assert [row["shown"] for row in rows] == [judged["specific"], judged["necessary"], judged["sufficient"]]
    assert [row["shown"] for row in rows] == [True, False, False]
    specific, necessary, sufficient = rows
    assert specific["claim"] == "The 3 selected channels of l change the output more on faces than on non-faces"
    assert specific["effect"] == "KL ratio faces / non-faces 5.00" and specific["n"] == "200 faces, 200 non-faces"
    assert specific["p"] == "random 0.024, matched 0.024" and specific["controls"].startswith("random 1.2")
    assert (
        necessary["effect"] == f"face / non-face accuracy 94.5% (intact {ci(judged['intact_fixed_ci'], percent=True)})"
    )
    assert sufficient["intervention"] == "keep only (zero) of the set, m" and sufficient["n"] == "400 held-out images"


def test_an_effect_the_controls_match_is_no_more_than_theirs():
    """Lesion below the intact interval and keep-only within it, but control sets do as well."""
    conditions = conditions_table(
        lesion_fixed=0.60, keep_retrained=0.95, control_lesion_fixed=0.55, control_keep_retrained=0.95
    )
    judged = verdicts(conditions, control_table(conditions), 0.05)
    assert judged["necessary_absolute"] and not judged["necessary"]
    assert judged["sufficient_absolute"] and not judged["sufficient"]
    answer = card(conditions)
    assert "no more necessary than same-size controls to tell faces from non-faces" in answer["answer"]
    assert "no better alone than same-size controls" in answer["answer"]
    assert answer["null"] is True


def test_too_few_control_draws_are_said():
    """Five draws per control: no p-value below 1/6, so even an extreme set cannot be called anything."""
    few = card(conditions_table(lesion_fixed=0.60, keep_retrained=0.95, lesion_ratio=5.0, n_draws=5))
    assert few["answer"].endswith("(too few control draws for p < 0.05).")
    assert "not shown to be face-specific" in few["answer"] and few["null"] is True
    assert "too few" not in card(conditions_table())["answer"]


def test_the_contrast_rule_and_an_empty_selection_are_worded():
    contrast = SectionSettings(**{**SETTINGS.__dict__, "rule": "contrast"})
    answer = card(conditions_table(lesion_ratio=5.0), contrast)
    assert answer["answer"].startswith("The 3 face-preferring channels (contrast rule) of m l are face-specific")
    assert "BH q < 0.05" in answer["question"]
    empty = conditions_table()
    empty.loc[empty["family"] != "intact", "set_size"] = 0
    nothing = card(empty)
    assert nothing["answer"].startswith("No channel of m l passes the top-percentile rule") and nothing["null"]


# ---------------------------------------------------------------------------------------------- numbers, figure


def test_numbers_carry_intervals_and_n():
    conditions = conditions_table(lesion_fixed=0.60, keep_retrained=0.95, lesion_ratio=5.0)
    ratio, lesioned, kept = card(conditions)["numbers"]
    for number in (ratio, lesioned, kept):
        assert INTERVAL.match(number["interval"]), number
        assert number["n"].startswith("N = ") and "95%" in number["label"]
    assert (lesioned["value"], kept["value"]) == ("60.0%", "95.0%")
    assert lesioned["interval"] == ci(wilson_interval(190, 200), percent=True)  # the intact network's, 95%
    assert kept["interval"] == ci(wilson_interval(380, 400), percent=True)
    assert lesioned["n"] == "N = 200 held-out images" and kept["n"].startswith("N = 400 images")
    assert (
        ratio["value"] == "5.00" and "p = 0.024 against 40 random, 0.024 against 40 activation-matched" in (ratio["n"])
    )
    controls = control_table(conditions)
    null = controls[(controls["mode"] == "lesion") & (controls["metric"] == "kl_face_ratio")]
    assert ratio["interval"] in {ci([r.null_low, r.null_high]) for r in null.itertuples()}


def test_the_card_figure_is_drawn_by_the_workflow_and_fits_the_column(tmp_path):
    conditions = conditions_table(lesion_ratio=5.0)
    controls = control_table(conditions)
    figure = card(conditions)["figure"]
    rules = (REPO / "rules" / "faces.smk").read_text()
    assert 'FACES_FIGURES = "results/report/figures/faces"' in rules
    assert figure["src"].startswith("figures/faces/")
    assert f'f"{{FACES_FIGURES}}/{Path(figure["src"]).name}"' in rules  # a declared output of a faces rule
    assert figure["caption"].startswith("Look at") and len(figure["alt"]) > 100
    assert "fixed-readout accuracy" in figure["alt"] and "faces / non-faces KL ratio" in figure["alt"]
    conditions.to_parquet(tmp_path / "conditions.parquet")
    controls.to_parquet(tmp_path / "controls.parquet")
    run_interventions_figure(
        conditions=tmp_path / "conditions.parquet",
        controls=tmp_path / "controls.parquet",
        out_figure=tmp_path / "interventions.png",
        out_verdicts=tmp_path / figure["src"],
    )
    assert Image.open(tmp_path / figure["src"]).width <= COLUMN_PX


# ---------------------------------------------------------------------------------------------- section, figures


def category_means(n_channels: int = 64, seed: int = 0) -> CategoryMeans:
    """Random channel means of 30 faces, 20 scenes and 20 objects, the first four channels face-driven."""
    rng = np.random.default_rng(seed)
    names = np.array(["faces"] * 30 + ["scenes"] * 20 + ["objects"] * 20)
    means = rng.random((len(names), n_channels)).astype(np.float32)
    means[names == "faces", :4] += 2.0
    return CategoryMeans(means, names, np.arange(len(names)).astype(str), "faces", ("scenes", "objects"))


def section_tables(tmp_path) -> dict[str, Path]:
    """Every table the section stage reads, written as Parquet under tmp_path."""
    data = category_means()
    selection = selection_table(data, percentile=5, fdr=0.05)
    for name in ("faces", "scenes", "objects"):
        selection[f"n_{name}"] = int((data.dataset == name).sum())
    chosen = selected_channels(selection, "top_percentile")
    probes = pd.DataFrame(
        {
            "layer": ["l0", "l"],
            "n_channels": [32, 64],
            "accuracy": [0.8, 0.97],
            "ci_low": [0.69, 0.9],
            "ci_high": [0.88, 0.99],
            "fold_accuracy_sd": [0.05, 0.02],
            "fold_accuracies": [[0.75, 0.85], [0.95, 0.99]],
            "n_images": [70, 70],
            "n_faces": [30, 30],
            "chance": [20 / 35, 20 / 35],
        }
    )
    heatmaps = pd.DataFrame(
        [
            {"dataset": d, "image_id": f"{d}{i}", "image_index": 2 * k + i, "channel": int(c), "mean": 0.5}
            for k, d in enumerate(("faces", "scenes", "objects"))
            for i in range(2)
            for c in chosen[:2]
        ]
    ).assign(map_height=7, map_width=7)
    tables = {
        "selection": selection,
        "pca": pca_table(data.of("faces")),
        "conditions": conditions_table(lesion_ratio=5.0, channels=tuple(int(c) for c in chosen)),
        "probes": probes,
        "categories": category_table(data, chosen, np.random.default_rng(1), 50),
        "selectivity": selectivity_table(data, chosen),
        "heatmaps": heatmaps,
    }
    tables["controls"] = control_table(tables["conditions"])
    paths = {}
    for name, table in tables.items():
        paths[name] = tmp_path / f"{name}.parquet"
        table.to_parquet(paths[name])
    return paths


def test_the_section_carries_the_card_and_shows_figures_before_tables(tmp_path):
    paths = section_tables(tmp_path)
    section = run_section(SETTINGS, **{k: str(v) for k, v in paths.items()}, out_path=tmp_path / "section.json")
    written = json.loads((tmp_path / "section.json").read_text())
    assert written["finding"] == section["finding"]
    assert written["finding"]["answer"].startswith("The 4 most face-active channels of m l are face-specific")
    assert written["finding"]["figure"]["src"] in section["body_html"]
    body = section["body_html"]
    parts = re.split(r"<h3>", body)[1:]
    assert len(parts) == 6
    for part in parts:
        if "<figure" in part and "<table" in part:
            assert part.index("<figure") < part.index("<table"), part[:80]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", body, re.S)
    alts = re.findall(r'<img src="[^"]+" alt="([^"]*)"', body)
    assert len(captions) == len(alts) == 7  # the verdicts figure opens the interventions
    for caption, alt in zip(captions, alts, strict=True):
        assert caption.startswith("Look"), caption
        assert alt and not caption.startswith(alt), alt  # an explicit alt, not the caption's start
    for text in (body, section["conclusion"]):  # intervals are "[low, high]", 95% said in a header or sentence
        assert not re.search(r"\[95% \d|95% CI|\d–\d", text), re.search(r".{60}(\[95% \d|95% CI|\d–\d).{20}", text)


def figure_fonts(monkeypatch) -> dict[str, float]:
    """Record, for each figure saved by the faces figures, the size of its smallest text (points)."""
    smallest, save = {}, figures.save

    def recording(fig, path):
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
        smallest[Path(path).name] = min(sizes)
        save(fig, path)

    monkeypatch.setattr(figures, "save", recording)
    return smallest


@pytest.mark.parametrize("n_examples", [2, 5])
def test_every_figure_fits_the_text_column_with_readable_text(tmp_path, monkeypatch, n_examples):
    smallest = figure_fonts(monkeypatch)
    paths = section_tables(tmp_path)
    tables = {name: pd.read_parquet(path) for name, path in paths.items()}
    figures.selection_figure(
        tables["selection"], face_dataset="faces", layer="l", percentile=5, fdr=0.05, path=tmp_path / "selection.png"
    )
    figures.pca_figure(tables["pca"], levels=[0.8, 0.95], layer="l", path=tmp_path / "pca.png")
    figures.interventions_figure(tables["conditions"], tables["controls"], tmp_path / "interventions.png")
    figures.verdicts_figure(tables["conditions"], tables["controls"], tmp_path / "verdicts.png")
    figures.probes_figure(pd.concat([tables["probes"]] * 4, ignore_index=True), tmp_path / "probes.png")
    figures.categories_figure(tables["categories"], tables["selectivity"], tmp_path / "categories.png")
    n_images, channels = 3 * n_examples, [0, 1]
    heatmaps = pd.DataFrame(
        [{"dataset": "faces", "image_index": i, "channel": c, "mean": 0.5} for i in range(n_images) for c in channels]
    )
    rng = np.random.default_rng(0)
    figures.heatmap_figure(
        rng.random((n_images, 16, 16, 3)), rng.random((n_images, 2, 16, 16)), heatmaps, channels, tmp_path / "h.png"
    )
    assert len(smallest) == 7
    for name, size in smallest.items():
        assert size >= 9, (name, size)  # points
        assert Image.open(tmp_path / name).width <= COLUMN_PX, name
