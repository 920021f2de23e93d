"""Bring your own CNN, end to end: a user's own 1-channel module (40 x 56 input, found on `python_path`) and a timm
model (preprocessing from timm's own config) through the workflow with no code change: model cards, extraction,
the faces study (layer and probe depths found from the graph) and Network Dissection, into the report.
(nefesi on this module, with its colour index not applicable, and every study on ten more architectures run at
the stage level in tests/test_any_model.py and tests/studies/*/test_*_any_model.py; here the workflow's planning
and wiring are what is tested, within CI's time.)

Both have seeded random weights saved as local checkpoints (no weights for them are reachable offline): this
checks that every stage runs and reports on such models, not what their units mean. The actmax registry targets
on these models are tested at the stage level (tests/studies/actmax/test_actmax_any_model.py): the actmax study
trains its Colored-MNIST CNN first, which would double this test's time.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
from anymodels import GRAY_PREPROCESSING, save_random_weights, write_user_module
from conftest import DATA_DIR
from wfutil import copy_workflow, disable_studies, snakemake, tiny_config, write_config

from unitscope.models.sources import build_architecture

pytestmark = pytest.mark.integration


def _models(workdir) -> dict:
    user = write_user_module(workdir / "mymodels")
    gray = {"arch": "python:tinygray:tiny_gray", "python_path": ["mymodels"], "preprocessing": GRAY_PREPROCESSING}
    gray["checkpoint"] = str(save_random_weights(build_architecture("gray", {**gray, "python_path": [str(user)]}),
                                                 workdir / "gray.pth", seed=1))  # fmt: skip
    timm_entry = {"arch": "timm.mobilenetv3_small_050"}
    timm_entry["checkpoint"] = str(save_random_weights(build_architecture("t", timm_entry), workdir / "t.safetensors"))
    return {"gray": gray, "timm_mnv3": timm_entry}


@pytest.fixture(scope="module")
def own_models_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("own_models"))
    config = disable_studies(tiny_config(DATA_DIR))
    config["models"] = _models(workdir)
    config["extraction"]["targets"] = [{"model": "timm_mnv3", "datasets": ["objects"], "layers": ["blocks.2"]}]
    config["faces"] = {
        "enabled": True, "model": "gray", "interventions": {"n_random": 4, "n_matched": 4}, "probe": {"folds": 2},
        "n_bootstrap": 100, "heatmaps": {"n_examples": 1, "n_channels": 2},
    }  # fmt: skip
    config["dissection"] = {
        "enabled": True, "concepts": {"kind": "camvid", "root": "segmentation_camvid", "size": 4},
        "targets": [{"model": "gray", "layers": ["relu2"]}],
        "mask_size": 30, "top_images": 1, "figure_units": 1, "batch_size": 4,
        "rotation": {"model": "gray", "layer": "relu2", "alphas": [0, 1.0], "seeds": 1, "mask_size": 30},
    }  # fmt: skip
    write_config(workdir, config)
    snakemake(workdir, "report")
    return workdir


def test_cards_show_the_input_and_preprocessing_of_each_source(own_models_run):
    gray = json.loads((own_models_run / "results/models/gray/card.json").read_text())
    assert gray["input_shape"] == [1, 40, 56]
    card = json.loads((own_models_run / "results/models/timm_mnv3/card.json").read_text())
    assert card["input_shape"] == [3, 224, 224]  # timm's pretrained config, as no preprocessing was given
    timm_config = timm.get_pretrained_cfg("mobilenetv3_small_050")
    assert card["preprocessing"]["interpolation"] == timm_config.interpolation
    assert card["preprocessing"]["resize"] == int(224 / timm_config.crop_pct)


def test_faces_runs_at_the_layer_found_from_the_graph(own_models_run):
    results = own_models_run / "results"
    section = json.loads((results / "faces/section.json").read_text())
    assert {(u["model"], u["layer"]) for u in section["units"]} == {("gray", "relu2")}
    probes = pd.read_parquet(results / "faces/probes.parquet")
    assert list(probes["layer"]) == ["conv1", "relu1", "pool1", "conv2", "relu2"]  # five depths from the graph
    conditions = pd.read_parquet(results / "faces/conditions.parquet")
    selected = 1  # ceil(16 channels x 5%), each also lesioned alone
    assert len(conditions) == 1 + 2 + 2 * 4 + 2 * 4 + selected and conditions["n_faces"].iloc[0] == 12
    controls = pd.read_parquet(results / "faces/controls.parquet")
    assert controls["p_value"].between(0, 1).all()


def test_dissection_reports_on_the_own_model(own_models_run):
    results = own_models_run / "results"
    gray = pd.read_parquet(results / "dissection/gray/units.parquet")
    assert len(gray) == 16 and gray["iou"].between(0, 1).all()
    rotation = pd.read_parquet(results / "dissection/rotation.parquet")
    assert len(rotation) == 2 and (rotation["units"] == 16).all()
    html = (results / "report/index.html").read_text()
    assert "gray" in html and "timm_mnv3" in html
