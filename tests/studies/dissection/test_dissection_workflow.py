"""End to end: the dissection study on a handful of CamVid frames in a temporary copy of the workflow."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from wfutil import ATLAS_PAGES, copy_workflow, planned_jobs, snakemake, study_config, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_run(tiny_studies_run):
    return tiny_studies_run


def test_section_summary_tables_and_figures(finished_run):
    workdir, _ = finished_run
    section = json.loads((workdir / "results/dissection/section.json").read_text())
    assert section["study"] == "dissection" and "6 camvid images" in section["conclusion"]
    summary = json.loads((workdir / "results/summary.json").read_text())["dissection"]
    assert summary["images"] == 6 and summary["concepts"] == {"object": 11, "color": 11}
    assert summary["mask_shape"] == [60, 80]
    layer = summary["layers"]["mobilenet_v2_imagenet/features.18"]
    assert layer["units"] == 1280 and 0 <= layer["detectors"] <= 1280
    assert layer["detectors_ci95"][0] <= layer["detectors_ci95"][1]
    assert set(summary["rotation"]["alphas"]) == {"0", "0.5", "1"}
    assert summary["rotation"]["alphas"]["0"]["detectors"]["sd"] == 0  # alpha 0 is the same layer for every seed
    units = pd.read_parquet(workdir / "results/dissection/resnet20_cifar/units.parquet")
    assert sorted(units["layer"].unique()) == ["layer1", "layer3"] and len(units) == 16 + 64
    assert units["iou"].between(0, 1).all() and (units["runner_up_iou"] <= units["iou"]).all()
    rotation = pd.read_parquet(workdir / "results/dissection/rotation.parquet")
    assert len(rotation) == 3 * 2 and (rotation["units"] == 64).all()
    html = (workdir / "results/report/index.html").read_text()
    assert "Network dissection" in html
    figures = workdir / "results/report/figures/dissection"
    for name in [
        "depth.png",
        "rotation.png",
        "units/resnet20_cifar/layer3.png",
        "units/mobilenet_v2_imagenet/features.18.png",
    ]:
        assert (figures / name).stat().st_size > 5000, name
    assert (workdir / "logs/dissection/dissect/resnet20_cifar.log").read_text()
    assert not list((workdir / "results").rglob(".*.tmp-*")) and not list((workdir / "results").rglob(".cache-*"))


def test_every_listed_unit_has_its_figure_on_its_unit_page(finished_run):
    import numpy as np
    from PIL import Image

    workdir, config = finished_run
    section = json.loads((workdir / "results/dissection/section.json").read_text())
    report = workdir / "results/report"
    listed = {}
    for unit in section["units"]:
        model, layer, channel = unit["model"], unit["layer"], unit["channel"]
        listed.setdefault((model, layer), set()).add(f"{model}__{layer}__{channel}.png")
        [image] = unit["images"]
        assert image["src"] == f"figures/dissection/units/{model}/{layer}/{model}__{layer}__{channel}.png"
        path = report / image["src"]
        assert path.stat().st_size > 5000, path
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 400 and png.height > 150
            pixels = np.asarray(png.convert("RGB"), dtype=float)
        assert pixels.std() > 20, f"{path} is nearly blank"
        # the unit mask's outline (yellow #ffdd00) is drawn on at least one of its top images
        yellow = (pixels[..., 0] > 220) & (pixels[..., 1] > 190) & (pixels[..., 2] < 80)
        assert yellow.sum() > 20, f"{path}: no unit mask outlined"
        caption = image["caption"]
        top_k = config["dissection"]["top_images"]
        assert f"unit {channel}: its {top_k} top activating images of N = 6" in caption
        assert unit["facts"]["dissection concept"] in caption and "quantile" in caption
        [iou] = re.findall(r"IoU (\d\.\d{3})", caption)
        assert float(iou) == pytest.approx(unit["facts"]["dissection IoU"], abs=6e-4)
        page = (report / "units" / f"{model}__{layer}__{channel}.html").read_text()
        assert f'<img src="../{image["src"]}"' in page
    assert listed, "the tiny run lists no detector unit"
    # each layer's folder holds exactly the figures of the units the section lists for it
    for target in config["dissection"]["targets"]:
        for layer in target["layers"]:
            model = target["model"]
            folder = report / "figures/dissection/units" / model / layer
            assert {p.name for p in folder.glob("*.png")} == listed.get((model, layer), set()), folder


def test_rerun_plans_only_what_a_setting_changes(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set()
    try:
        assert_reruns(workdir, config)
    finally:  # the other modules of the all-studies run read it after this one
        write_config(workdir, config)


def assert_reruns(workdir, config) -> None:
    changed = json.loads(json.dumps(config))
    changed["dissection"]["batch_size"] = 3
    write_config(workdir, changed)
    assert planned_jobs(workdir) == set(), "batch size changes no dissection result"
    changed = json.loads(json.dumps(config))
    changed["dissection"]["rotation"]["alphas"] = [0, 1.0]
    write_config(workdir, changed)
    assert {rule for rule, _ in planned_jobs(workdir)} == {
        "dissection_rotation",
        "dissection_section",
        *(rule for rule, _ in ATLAS_PAGES),
        "report",
    }
    changed = json.loads(json.dumps(config))
    changed["dissection"]["iou_threshold"] = 0.05
    write_config(workdir, changed)
    plan = {rule for rule, _ in planned_jobs(workdir)}
    assert {"dissection_dissect", "dissection_rotation", "dissection_section"} <= plan


def test_unknown_model_is_a_one_line_error(tmp_path):
    from conftest import DATA_DIR

    workdir = copy_workflow(tmp_path)
    config = study_config("dissection", DATA_DIR)
    config["dissection"]["targets"][0]["model"] = "resnet56_cifar"  # not in the tiny registry
    write_config(workdir, config)
    result = snakemake(workdir, "-n", "report", check=False)
    assert result.returncode != 0
    assert "dissection.targets[0].model: unknown model 'resnet56_cifar'" in result.stdout + result.stderr


def test_report_in_a_browser_links_the_dissection_units_to_their_pages(browser, finished_run):
    from browser import check_study_in_browser

    check_study_in_browser(browser, finished_run[0], "dissection")
