"""End to end: the lesions study's class units in the shared all-studies run (ResNet-20 layer2 over the tiny objects
set, nefesi's exemplars of the same layer), its claims on the landing page beside the faces study's, and re-runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from wfutil import ATLAS_PAGES, copy_workflow, planned_jobs, snakemake, study_config, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_run(tiny_studies_run):
    return tiny_studies_run


def test_tables_section_and_summary(finished_run):
    workdir, config = finished_run
    folder = workdir / "results/lesions/class_units"
    units = pd.read_parquet(folder / "units.parquet")
    assert len(units) == 32 * 10 and units["selectivity"].between(0, 1 + 1e-6).all()  # float32 weights
    shares = units.groupby("channel")["selectivity"].sum()
    assert ((shares.round(6) == 1) | (shares == 0)).all()  # a unit's class shares sum to 1 (0: a dead unit)
    conditions = pd.read_parquet(folder / "conditions.parquet")
    spec = config["lesions"]["class_units"]
    per_set = 2 * (1 + spec["n_random"] + spec["n_matched"])  # both modes: the set and its controls
    assert len(conditions) == 1 + 10 * len(spec["sizes"]) * 2 * per_set
    assert (conditions["set_size"] == conditions["k"].where(conditions["family"] != "intact", 0)).all()
    pooled = pd.read_parquet(folder / "pooled.parquet")
    assert set(pooled["kind"]) == {"selective", "important"} and pooled["p_value"].between(0, 1).all()
    info = json.loads((folder / "info.json").read_text())
    assert info["n_ranking"] + info["n_evaluation"] == info["n_images"] == 20
    assert "exact tail" in info["tail"]  # layer2 of ResNet-20 is followed by layer3: the maps go through it
    section = json.loads((workdir / "results/lesions/section.json").read_text())
    summary = json.loads((workdir / "results/summary.json").read_text())
    lesions = summary["lesions"]
    assert lesions["class_units"]["n_units"] == 32
    # a claim per lesioned class set size and kind, per layer with a colour set, per concept tested
    expected = 2 * len(spec["sizes"]) + len(lesions["colour_units"]) // 2 + len(lesions["concept_units"])
    assert section["finding"]["question"] and len(section["claims"]) == expected
    studies = {claim["study"] for claim in summary["claims"]}
    assert studies == {"faces", "lesions"}
    assert (workdir / "logs/lesions/class_units.log").read_text()


def test_colour_and_concept_units(finished_run):
    """Colour units on the actmax CNN (conv1, conv3) and the concept detectors of ResNet-20 layer3."""
    workdir, config = finished_run
    colour = pd.read_parquet(workdir / "results/lesions/colour_units/compared.parquet")
    spec = config["lesions"]["colour_units"]
    assert set(colour["layer"]) <= set(config["actmax"]["units"]["layers"]) and len(colour)
    assert set(colour["measure"]) == {"biased", "unbiased", "conflicting", "gap"}
    assert (colour["set_size"] <= spec["max_units"]).all() and (colour["n_images"] == spec["max_images"]).all()
    assert (colour["change_low"] <= colour["change"] + 1e-12).all() and colour["p_value"].between(0, 1).all()
    conditions = pd.read_parquet(workdir / "results/lesions/colour_units/conditions.parquet")
    for row in conditions[conditions["family"] == "random"].itertuples():
        chosen = conditions[(conditions["family"] == "set") & (conditions["layer"] == row.layer)]
        [labelled] = chosen[chosen["kind"] == row.kind]["channels"]
        assert len(row.channels) == len(labelled) and not set(row.channels) & set(labelled)
    concepts = pd.read_parquet(workdir / "results/lesions/concept_units/compared.parquet")
    units = pd.read_parquet(workdir / "results/dissection/resnet20_cifar/units.parquet")
    detected = units[(units["layer"] == "layer3") & units["detector"]]["concept"].value_counts()
    assert set(concepts["concept"]) == set(detected[detected >= 3].index)
    assert (concepts["kl_high"] >= 0).all() and set(concepts["control"]) <= {"random", "matched"}
    for _, rows in concepts.groupby("control"):  # q: Benjamini-Hochberg over the concepts of the family
        assert (rows["n_tested"] == rows["p_kl_difference"].notna().sum()).all()
        assert (rows["q_value"] >= rows["p_kl_difference"] - 1e-12).all() and rows["q_value"].max() <= 1
    assert (colour["q_value"] >= colour["p_value"] - 1e-12).all()
    assert (colour["n_tested"] == colour.groupby(["kind", "measure"])["layer"].transform("nunique")).all()


def test_the_actmax_colour_score_meets_nefesi_and_dissection_on_shared_units(finished_run):
    """ResNet-20 layer1 (the atlas optimises all 16 units; nefesi and the dissection label them too): a rho over 16
    units against each, the colour scores the atlas shard's; layer3 (a registry target, channels 0 and 5; the
    dissection alone): N = 2, no rho."""
    workdir, _ = finished_run
    methods = pd.read_parquet(workdir / "results/lesions/agreement.parquet")
    actmax = methods[methods["label"].str.startswith("actmax colour score")].set_index(["layer", "evidence"])
    layer1 = actmax.loc["layer1"]
    assert set(layer1.index) == {"nefesi colour index", "dissection IoU of the unit's best colour concept"}
    assert (layer1["n_units"] == 16).all() and layer1["rho"].between(-1, 1).all()
    assert (layer1["low"] <= layer1["rho"] + 1e-12).all() and (layer1["rho"] <= layer1["high"] + 1e-12).all()
    [layer3] = actmax.loc["layer3"].to_dict("records")
    assert layer3["n_units"] == 2 and np.isnan(layer3["rho"])
    html = (workdir / "results/report/index.html").read_text()
    assert "actmax colour score" in html


def test_the_landing_page_states_every_claim_with_its_evidence(finished_run):
    workdir, _ = finished_run
    html = (workdir / "results/report/index.html").read_text()
    claims = json.loads((workdir / "results/summary.json").read_text())["claims"]
    assert '<h2 id="claims">Claims and their evidence</h2>' in html and 'href="#claims"' in html
    start = html.index('id="claims"')
    table = html[start : html.index("</table>", start)]
    for claim in claims:
        assert claim["claim"].replace("'", "&#39;") in table
    assert table.count("not shown (null result)") == sum(not claim["shown"] for claim in claims)


def test_the_figures_fit_the_text_column_and_the_section_shows_them(finished_run):
    from PIL import Image

    folder = finished_run[0] / "results/report/figures/lesions"
    for name in ("class_units", "colour_units", "concept_units"):
        with Image.open(folder / f"{name}.png") as png:
            assert 500 < png.width <= 960 and png.height > 200
    body = json.loads((finished_run[0] / "results/lesions/section.json").read_text())["body_html"]
    assert 'src="figures/lesions/colour_units.png"' in body


def test_rerun_plans_only_what_a_setting_changes(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set()
    try:
        assert_reruns(workdir, config)
    finally:  # the other modules of the all-studies run read it after this one
        write_config(workdir, config)


def assert_reruns(workdir, config) -> None:
    changed = json.loads(json.dumps(config))
    changed["lesions"]["alpha"] = 0.01
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {"lesions_section", *(r for r, _ in ATLAS_PAGES), "report"}
    changed = json.loads(json.dumps(config))
    changed["lesions"]["class_units"]["n_random"] = 5
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "lesions_class_units",
        "lesions_class_figure",
        "lesions_agreement",  # the class units' own agreement row
        "lesions_section",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }
    changed = json.loads(json.dumps(config))
    changed["lesions"]["colour_units"]["n_random"] = 5
    changed["lesions"]["concept_units"]["fraction"] = 0.5
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "lesions_colour_units",
        "lesions_colour_figure",
        "lesions_concept_units",
        "lesions_concept_figure",
        "lesions_section",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }


def test_a_layer_nefesi_does_not_analyse_is_a_one_line_error(tmp_path):
    from conftest import DATA_DIR

    workdir = copy_workflow(tmp_path)
    config = study_config("lesions", DATA_DIR)
    config["lesions"]["class_units"]["layer"] = "layer3"
    write_config(workdir, config)
    result = snakemake(workdir, "-n", "report", check=False)
    assert result.returncode != 0
    assert "lesions.class_units.layer: nefesi does not analyse resnet20_cifar 'layer3'" in result.stdout + result.stderr


def test_report_in_a_browser_links_the_lesioned_units_to_their_pages(browser, finished_run):
    from browser import check_study_in_browser

    check_study_in_browser(browser, finished_run[0], "lesions")
