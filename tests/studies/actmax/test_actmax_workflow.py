"""End to end: the actmax study on a tiny config (small training run, few units and steps) in a temporary copy
of the repository; then which jobs a changed setting re-plans."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from wfutil import ATLAS_PAGES, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_run(tiny_studies_run):
    return tiny_studies_run


def test_section_summary_and_artifacts(finished_run):
    workdir, _ = finished_run
    results = workdir / "results"
    summary = json.loads((results / "summary.json").read_text())["actmax"]
    assert set(summary["evaluation"]) == {"biased", "unbiased", "conflicting"}
    assert all(summary["evaluation"][s]["n"] == 5000 for s in summary["evaluation"])
    assert set(summary["color_vs_shape"]) == {"conv1", "conv3"}
    # 2 layers x 2 channels x (channel: 2 inits + neuron + topk + class_conditional: 1 init) x 3 seeds
    assert summary["runs"] == 2 * 2 * (2 + 1 + 1 + 1) * 3
    runs = pd.read_csv(results / "actmax" / "analysis" / "runs.csv")
    assert len(runs) == summary["runs"]
    assert {"layer", "channel", "objective", "l2", "tv", "seed", "final_activation"} <= set(runs.columns)
    assert np.isfinite(runs["final_activation"]).all()
    # the optimisation climbs: every run ends above where it started
    assert (runs["final_objective"] > runs["start_objective"]).mean() > 0.9
    html = (results / "report" / "index.html").read_text()
    assert "Activation maximisation" in html and "Biased Colored-MNIST" in html
    for image in re.findall(r'<img src="(figures/actmax/[^"]+)"', html):
        assert (results / "report" / image).stat().st_size > 1000
    grids = list((results / "actmax" / "images" / "conv1").rglob("*.png"))
    assert len(grids) == 2 * (2 + 1 + 1 + 1)  # one grid per channel x objective x neuron x init
    assert (workdir / "logs" / "actmax" / "optimize" / "conv3.log").stat().st_size > 0
    section = json.loads((results / "actmax" / "section.json").read_text())
    mnist_units = [u for u in section["units"] if u["model"] == "colored_mnist_cnn"]
    assert len(mnist_units) == 2 * 2 and all(len(u["images"]) == 1 for u in mnist_units)
    for unit in mnist_units:  # each chosen channel's images are on its unit page
        assert (results / "report" / unit["images"][0]["src"]).stat().st_size > 500
    registry = pd.read_parquet(results / "actmax" / "registry" / "resnet20_cifar" / "layer3.parquet")
    assert sorted(set(registry["channel"])) == [0, 5] and len(registry) == 4
    for channel in (0, 5):  # registry channels get their images on their unit pages
        page = (results / "report" / "units" / f"resnet20_cifar__layer3__{channel}.html").read_text()
        assert f'src="../figures/actmax/units/resnet20_cifar__layer3__{channel}.png"' in page
        assert (
            results / "report" / "figures" / "actmax" / "units" / f"resnet20_cifar__layer3__{channel}.png"
        ).is_file()
    assert not list(results.rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_snakemake_report_lists_actmax_figures(finished_run):
    workdir, _ = finished_run
    snakemake(workdir, "--report", "results/report.zip", "report")
    import zipfile

    from unitscope.studies.actmax.figures import FIGURES

    names = {name.rsplit("/", 1)[-1] for name in zipfile.ZipFile(workdir / "results" / "report.zip").namelist()}
    assert {f"{figure}.png" for figure in FIGURES} <= names


def test_changes_rerun_exactly_their_stages(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set()

    changed = json.loads(json.dumps(config))
    changed["actmax"]["optimization"]["steps"] = 13
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "actmax_optimize",
        "actmax_analyze",
        "actmax_report",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }, "changing actmax settings must not retrain"

    changed = json.loads(json.dumps(config))
    changed["actmax"]["dataset"] = {"rho": 0.9}
    write_config(workdir, changed)
    assert {"actmax_dataset", "actmax_train"} <= {rule for rule, _ in planned_jobs(workdir)}

    write_config(workdir, config)


def test_report_in_a_browser_links_the_actmax_units_to_their_pages(browser, finished_run):
    from browser import check_study_in_browser

    check_study_in_browser(browser, finished_run[0], "actmax")
