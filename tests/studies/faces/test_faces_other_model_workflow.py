"""The faces study on another architecture: a CIFAR ResNet with the layer and probe layers left at their defaults
(its own workflow run, so a parallel test run can give it a worker of its own)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from wfutil import copy_workflow, disable_studies, snakemake, study_config, tiny_config, write_config

pytestmark = pytest.mark.integration


def test_faces_study_on_a_cifar_resnet_at_its_default_layer(tmp_path):
    """The same rules on a CIFAR ResNet (config selects the model; layer and probe layers left at their defaults):
    layer3 is its last block, so conditions act on channel means and the downstream readout is the pooled layer."""
    from conftest import DATA_DIR

    workdir = copy_workflow(tmp_path)
    config = disable_studies(tiny_config(DATA_DIR))
    config["models"] = {"resnet20_cifar": config["models"]["resnet20_cifar"]}  # no ImageNet model: a faster run
    config["extraction"]["targets"] = []
    config["faces"] = {**study_config("faces", DATA_DIR)["faces"], "model": "resnet20_cifar", "probe_layers": None}
    write_config(workdir, config)
    snakemake(workdir, "report")
    results = workdir / "results"
    summary = json.loads((results / "summary.json").read_text())["faces"]
    assert summary["model"] == "resnet20_cifar" and summary["layer"] == "layer3"
    assert summary["selection"]["top_percentile"] == 4  # ceil(64 * 5%)
    probes = pd.read_parquet(results / "faces" / "probes.parquet")
    assert list(probes["layer"]) == ["layer1", "layer2.1", "layer2", "layer3.1", "layer3"]  # found from the graph
    assert probes["accuracy"].between(0, 1).all() and probes["n_images"].eq(38).all()
    conditions = pd.read_parquet(results / "faces" / "conditions.parquet").set_index("condition")
    assert conditions.loc["intact", "kl_faces"] == 0 and conditions.loc["lesion", "kl_faces"] > 0
    section = json.loads((results / "faces" / "section.json").read_text())
    assert {(u["model"], u["layer"]) for u in section["units"]} == {("resnet20_cifar", "layer3")}
    assert (results / "report" / "units" / f"resnet20_cifar__layer3__{section['units'][0]['channel']}.html").is_file()

    # actmax on the face channels the study selected (from_faces), optimised inside the layer (its last block)
    target = {"model": "resnet20_cifar", "layer": "layer3.2", "from_faces": 2, "seeds": 1, "steps": 5}
    write_config(workdir, {**config, "actmax": {"enabled": True, "registry_targets": [target]}})
    snakemake(workdir, "results/actmax/registry/resnet20_cifar/layer3.2.parquet")
    registry = pd.read_parquet(results / "actmax" / "registry" / "resnet20_cifar" / "layer3.2.parquet")
    assert list(registry["channel"]) == [u["channel"] for u in section["units"][:2]]
    assert set(registry["unit_layer"]) == {"layer3"}
