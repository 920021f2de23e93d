"""Faces study end to end: the workflow on a tiny config (12 faces, 6 scenes, 20 objects), then re-run planning."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from wfutil import ATLAS_PAGES, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_run(tiny_studies_run):
    return tiny_studies_run


def test_section_tables_and_summary(finished_run):
    workdir, config = finished_run
    results = workdir / "results"
    conditions = pd.read_parquet(results / "faces" / "conditions.parquet")
    draws = config["faces"]["interventions"]
    assert len(conditions) == 1 + 2 + 2 * draws["n_random"] + 2 * draws["n_matched"] + 64  # + each channel alone
    assert conditions["n_faces"].iloc[0] == 12 and conditions["n_nonfaces"].iloc[0] == 26
    sets = conditions[~conditions["family"].isin(["intact", "single"])]
    assert (sets["set_size"] == 64).all()  # ceil(1280 * 5%)
    single = conditions[conditions["family"] == "single"]
    assert (single["set_size"] == 1).all() and (single["kl_faces"] >= 0).all()
    controls = pd.read_parquet(results / "faces" / "controls.parquet")
    assert set(controls["control"]) == {"random", "matched"} and controls["p_value"].between(0, 1).all()
    probes = pd.read_parquet(results / "faces" / "probes.parquet")
    assert list(probes["layer"]) == ["features.13", "features.18"] and probes["n_images"].eq(38).all()
    coefficients = pd.read_parquet(results / "faces" / "probe_coefficients.parquet")
    assert len(coefficients) == 96 + 1280

    section = json.loads((results / "faces" / "section.json").read_text())
    assert "64" in section["conclusion"] and "%" in section["conclusion"]
    assert len(section["units"]) == 64 and section["units"][0]["facts"]["face rank"] == 1
    facts = section["units"][0]["facts"]
    channel = section["units"][0]["channel"]
    alone = single.loc[single["channels"].map(lambda c: list(c) == [channel])].iloc[0]
    assert facts["lesioned alone: output KL on faces (nats)"] == round(float(alone["kl_faces"]), 4)
    summary = json.loads((results / "summary.json").read_text())["faces"]
    assert summary["layer"] == "features.18" and summary["selection"]["top_percentile"] == 64
    assert set(summary["verdict"]) >= {"necessary", "sufficient_absolute", "sufficient_vs_controls", "specific"}
    assert summary["interventions"]["intact"]["kl_faces"] == 0
    assert summary["single_lesions"]["n"] == 64 and summary["single_lesions"]["kl_faces_max_channel"] in set(
        summary["selection"]["channels"]
    )

    html = (results / "report" / "index.html").read_text()
    assert 'id="faces"' in html and "Face-selective units" in html
    images = set(re.findall(r'<img src="(figures/faces/[^"]+)"', html))
    assert len(images) == 7  # six in the section plus the verdicts' row, which the landing page's card shows too
    assert html.count('<img src="figures/faces/verdicts.png"') == 2
    for image in images:
        assert (results / "report" / image).stat().st_size > 5000
    logs = {p.name for p in (workdir / "logs" / "faces").glob("*.log")}
    assert logs == {
        f"{name}.log"
        for name in (
            "selection",
            "pca",
            "interventions",
            "interventions_figure",
            "probes",
            "categories",
            "heatmaps",
            "section",
        )
    }
    assert not list(results.rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_rerun_plans_exactly_what_changed(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set()

    changed = json.loads(json.dumps(config))
    changed["faces"]["interventions"]["alpha"] = 0.01  # a reporting threshold: the section only
    write_config(workdir, changed)
    assert planned_jobs(workdir) == {("faces_section", ""), *ATLAS_PAGES, ("report", "")}

    changed = json.loads(json.dumps(config))
    changed["faces"]["interventions"]["n_random"] += 1
    write_config(workdir, changed)
    assert planned_jobs(workdir) == {
        ("faces_interventions", ""),
        ("faces_interventions_figure", ""),
        ("faces_section", ""),
        ("lesions_agreement", ""),  # the lesions study sets face selectivity against each channel's own lesion
        ("lesions_section", ""),
        *ATLAS_PAGES,
        ("report", ""),
    }

    changed = json.loads(json.dumps(config))
    changed["faces"]["selection"] = {"percentile": 10}
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "faces_selection",
        "faces_interventions",
        "faces_interventions_figure",
        "faces_categories",
        "faces_heatmaps",
        "faces_section",
        "lesions_agreement",
        "lesions_section",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }
    write_config(workdir, config)


def test_unknown_face_dataset_is_a_one_line_error(finished_run, tmp_path):
    workdir, config = finished_run
    broken = json.loads(json.dumps(config))
    broken["faces"]["nonface_datasets"] = ["scenes", "cars"]
    write_config(workdir, broken)
    try:
        result = snakemake(workdir, "-n", "report", check=False)
    finally:
        write_config(workdir, config)
    assert result.returncode != 0
    assert "config key faces.nonface_datasets: unknown dataset 'cars'" in result.stdout + result.stderr
