"""End to end: the nefesi study on a tiny config in a temporary copy of the repository, then re-run planning."""

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


def test_section_tables_figures_and_logs(finished_run):
    workdir, config = finished_run
    results = workdir / "results"
    section = json.loads((results / "nefesi" / "section.json").read_text())
    assert section["study"] == "nefesi" and "resnet20_cifar" in section["conclusion"]
    summary = json.loads((results / "summary.json").read_text())["nefesi"]["layers"]
    assert set(summary) == {"resnet20_cifar/layer1", "resnet20_cifar/layer2"}
    layer1 = summary["resnet20_cifar/layer1"]
    assert layer1["channels"] == 16 and layer1["top_n"] == 3 and layer1["images"] == 20
    for name in ("color", "orientation", "symmetry", "class"):
        assert 0 <= layer1[f"{name}_index_mean"] <= 1
    drawn = pd.read_parquet(results / "nefesi" / "resnet20_cifar" / "images.parquet")
    assert 0 <= layer1["color_selective_share"] <= 1 and layer1["classes"] == drawn["class"].nunique()
    table = pd.read_parquet(results / "nefesi" / "resnet20_cifar" / "layer2" / "indexes.parquet")
    assert len(table) == 32 and {"color_index", "orientation_index", "symmetry_index", "class_index"} <= set(table)
    assert set(table["top_class"]) <= set(config["datasets"]["objects"]["label_names"])
    info = json.loads((results / "nefesi" / "resnet20_cifar" / "layer2" / "layer.json").read_text())
    assert info["identity_max_abs_error"] < 1e-3 and info["shallower"] == "layer1"
    hierarchy = pd.read_parquet(results / "nefesi" / "resnet20_cifar" / "layer2" / "hierarchy.parquet")
    assert len(hierarchy) == 32 * 16 and hierarchy["weight"].between(0, 1 + 1e-6).all()
    html = (results / "report" / "index.html").read_text()
    # distinct images: the study's finding card on the landing page shows its histograms once more
    images = {image for image in re.findall(r'<img src="([^"]+)"', html) if "nefesi" in image}
    assert len(images) == 2 + 2 * 2 + 2  # histograms and hierarchy; NF grid and top channels per layer; 2 images
    for image in images:
        assert (results / "report" / image).stat().st_size > 1000
    logs = {p.relative_to(workdir / "logs").as_posix() for p in (workdir / "logs" / "nefesi").rglob("*.log")}
    assert {"nefesi/resnet20_cifar/top_n.log", "nefesi/resnet20_cifar/layer1/layer.log", "nefesi/section.log"} <= logs
    assert not list(results.rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_every_singled_out_unit_has_its_figure_on_its_unit_page(finished_run):
    from PIL import Image

    workdir, _ = finished_run
    results, report = workdir / "results", workdir / "results" / "report"
    units = json.loads((results / "nefesi" / "section.json").read_text())["units"]
    assert len({(u["model"], u["layer"], u["channel"]) for u in units}) == len(units) >= 2  # one entry per unit
    for layer in ("layer1", "layer2"):  # the channel with the highest value of each index is listed
        table = pd.read_parquet(results / "nefesi" / "resnet20_cifar" / layer / "indexes.parquet")
        for name in ("color", "orientation", "symmetry", "class"):
            listed = [
                u["facts"].get(f"nefesi: highest {name} index of its layer") for u in units if u["layer"] == layer
            ]
            assert round(float(table[f"{name}_index"].max()), 3) in listed
    drawn = set()
    for unit in units:
        name = f"{unit['model']}__{unit['layer']}__{unit['channel']}"
        [image] = unit["images"]
        assert image["src"] == f"figures/nefesi/units/{name}.png"
        png = report / image["src"]
        assert png.stat().st_size > 5000
        with Image.open(png) as picture:
            assert picture.width > 300 and picture.height > 150
            assert np.asarray(picture.convert("L")).std() > 10  # drawn, not blank
        caption = image["caption"]
        assert "top 3 exemplar crops" in caption and "searched over 20 images" in caption
        assert re.search(r"receptive field \d+×\d+ px", caption) and "rank 1 to 3" in caption
        page = (report / "units" / f"{name}.html").read_text()
        assert f'<img src="../figures/nefesi/units/{name}.png"' in page
        drawn.add(png.name)
    assert {p.name for p in (report / "figures" / "nefesi" / "units").glob("*.png")} == drawn  # exactly the listed


def test_rerun_plans_exactly_what_changed(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set(), "a finished run must plan no job"

    changed = json.loads(json.dumps(config))
    changed["nefesi"]["order_by"] = "class"
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "nefesi_layer_figures",
        "nefesi_section",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }

    changed = json.loads(json.dumps(config))
    changed["nefesi"]["rotation_step"] = 30
    write_config(workdir, changed)
    rules = [rule for rule, _ in planned_jobs(workdir)]
    assert "nefesi_top_n" not in rules and rules.count("nefesi_layer") == 2 and rules.count("nefesi_decomposition") == 2

    changed = json.loads(json.dumps(config))  # class names: nefesi's classes change, the image draw does not
    changed["datasets"]["objects"]["label_names"] = list("abcdefghij")
    write_config(workdir, changed)
    rules = {rule for rule, _ in planned_jobs(workdir)}
    assert "nefesi_top_n" in rules and not rules & {"manifest", "extract", "model_card"}

    changed = json.loads(json.dumps(config))
    changed["nefesi"]["targets"][0]["model"] = "resnet_missing"
    write_config(workdir, changed)
    result = snakemake(workdir, "-n", "report", check=False)
    assert result.returncode != 0
    assert "nefesi.targets[0].model: unknown model 'resnet_missing'" in result.stdout + result.stderr
    write_config(workdir, config)


def test_snakemake_report_lists_the_nefesi_figures(finished_run):
    import zipfile

    workdir, _ = finished_run
    snakemake(workdir, "--report", "results/report.zip", "report")
    names = zipfile.ZipFile(workdir / "results" / "report.zip").namelist()
    expected = {"histograms.png", "hierarchy.png", "decomposition_objects_0.png", "decomposition_objects_1.png"}
    expected |= {f"{layer}_{kind}.png" for layer in ("layer1", "layer2") for kind in ("nf", "top")}
    assert expected <= {name.rsplit("/", 1)[-1] for name in names}


def test_report_in_a_browser_links_the_nefesi_units_to_their_pages(browser, finished_run):
    from browser import check_study_in_browser

    check_study_in_browser(browser, finished_run[0], "nefesi")
