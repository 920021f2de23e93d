"""The atlas's stages on real data: the ResNet-20 CIFAR checkpoint with one unit of layer3 planted dead (its batch-norm
scale zero and bias far below zero, so the ReLU after it outputs 0 everywhere), 40 CIFAR-10 and 10 Intel scene images,
extracted by the extraction stage, the evidence computed in 2 shards of 32 units and in 1 of 64, then gathered."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from wfutil import tiny_config

from unitscope.config import validate_config
from unitscope.data.manifest import ManifestDataset, read_manifest, run_manifest
from unitscope.extract import run_extraction
from unitscope.interventions.conditions import ablation_fill
from unitscope.interventions.tail import build_tail, layer_maps
from unitscope.models.facts import compute_facts
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import build_model
from unitscope.runtime import RunSettings
from unitscope.settings import ModelRef
from unitscope.stats import bootstrap_interval, derived_rng
from unitscope.studies.atlas import stages
from unitscope.studies.atlas.categories import bootstrap_purpose
from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.atlas.lesion import lesion_outputs
from unitscope.studies.atlas.plan import AtlasPlan, CategoriesSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

DEAD = 5  # the planted dead unit of layer3
DATASETS = ("objects", "scenes")
SIZES = {"objects": 40, "scenes": 10}
RUN = RunSettings(device="cpu", batch_size=64, num_workers=0)


def planted_checkpoint(data_dir, path):
    """ResNet-20 with layer3's unit DEAD dead: layer3.2.bn2 scale 0, bias -1e4 (the skip adds at most a few units)."""
    config = tiny_config(data_dir)
    spec = config["models"]["resnet20_cifar"]
    model = copy.deepcopy(build_model("resnet20_cifar", spec, data_dir=data_dir, torch_home=None))
    with torch.no_grad():
        model.layer3[2].bn2.weight[DEAD] = 0.0
        model.layer3[2].bn2.bias[DEAD] = -1e4
    torch.save({"state_dict": model.state_dict()}, path)
    return {key: value for key, value in spec.items() if key != "sha256"} | {"checkpoint": str(path)}


def atlas_config(data_dir, tmp, units_per_shard):
    config = tiny_config(data_dir)
    config["resources_dir"] = str(tmp / "resources")
    config["datasets"]["objects"]["size"], config["datasets"]["scenes"]["size"] = SIZES["objects"], SIZES["scenes"]
    config["models"] = {"planted": planted_checkpoint(data_dir, tmp / "planted.th")}
    config["models"]["planted"]["eval"] = {"dataset": "objects"}
    config["extraction"]["targets"] = []
    config["atlas"] = {
        "enabled": True,
        "targets": [{"model": "planted", "layer": "layer3", "datasets": list(DATASETS)}],
        "units_per_shard": units_per_shard,
        "n_bootstrap": 200,
    }
    return validate_config(config)


def in_process_facts(config, name):
    """The model's facts as `model_facts` gets them, computed here (torch is loaded) rather than in a subprocess."""
    return compute_facts(name, config["models"][name])


def run_shards(atlas: AtlasPlan, model: ModelRef, files: dict, out) -> pd.DataFrame:
    """Every shard's categories and lesion, then the gather: the layer's table."""
    target = atlas.target("planted", "layer3")
    for shard in target.shard_names():
        stages.run_categories(
            atlas.categories_settings("planted", "layer3", shard),
            **files,
            out_table=out / f"{shard}/categories.parquet",
        )
        stages.run_lesion(
            atlas.lesion_settings("planted", "layer3", shard),
            model,
            **files,
            out_table=out / f"{shard}/lesion.parquet",
            run=RUN,
        )
    evidence = {kind: [out / f"{s}/{kind}.parquet" for s in target.shard_names()] for kind in ("categories", "lesion")}
    return stages.run_gather(
        atlas.gather_settings("planted", "layer3"), evidence=evidence, out_table=out / "units.parquet"
    )


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    """(gathered table of 2 shards, of 1 shard, the stores' files, the model, the config)."""
    tmp = tmp_path_factory.mktemp("atlas")
    config = atlas_config(data_dir, tmp, 32)
    model = ModelRef.from_config(config, "planted")
    files = {"stores": [], "manifests": []}
    for dataset in DATASETS:
        manifest = tmp / f"manifests/{dataset}.parquet"
        run_manifest(
            dataset, config["datasets"][dataset], seed=0, data_dir=data_dir, resources_dir=tmp, out_path=manifest
        )
        stores = run_extraction(
            model,
            dataset_name=dataset,
            manifest_path=manifest,
            layers={"layer3": False},
            out_dir=tmp / f"activations/{dataset}",
            run=RUN,
        )
        files["stores"].append(str(stores["layer3"]))
        files["manifests"].append(str(manifest))
    two = run_shards(AtlasPlan.from_config(config, facts=in_process_facts), model, files, tmp / "two")
    config_one = copy.deepcopy(config)
    config_one["atlas"]["units_per_shard"] = 64
    one = run_shards(AtlasPlan.from_config(config_one, facts=in_process_facts), model, files, tmp / "one")
    return two, one, files, model, tmp


def test_one_row_per_unit_with_every_evidence_column(built):
    table = built[0]
    assert len(table) == 64 and table["channel"].tolist() == list(range(64))
    assert table["unit"].tolist() == [f"planted/layer3/{c}" for c in range(64)]
    for dataset in DATASETS:
        assert {f"act.{dataset}.mean", f"act.{dataset}.low", f"kl.{dataset}", f"flip.{dataset}"} <= set(table)
    labels = read_manifest(built[2]["manifests"][0])["label"].astype(int)
    per_class = {f"acc_change.objects[{label}]" for label in labels.unique()}
    assert per_class <= set(table) and "acc_change.objects" in table  # objects: the model's eval set, labelled
    assert not any(column.startswith("acc_change.scenes") for column in table)  # scenes' labels are not classes
    assert (table["act.objects.low"] <= table["act.objects.mean"]).all()
    assert (table["act.objects.mean"] <= table["act.objects.high"]).all()


def test_shards_concatenate_to_the_unsharded_table(built):
    two, one = built[0], built[1]
    pd.testing.assert_frame_equal(two, one, check_exact=True)
    tables = [pd.read_parquet(built[4] / run / "units.parquet") for run in ("two", "one")]
    for column in tables[0]:
        values = [table[column].to_numpy() for table in tables]
        if values[0].dtype.kind in "fiub":
            assert values[0].tobytes() == values[1].tobytes(), column  # the same bits, not merely close
        else:
            assert values[0].tolist() == values[1].tolist(), column


def test_the_dead_unit_changes_nothing_and_the_others_do(built):
    table = built[0].set_index("channel")
    effects = [c for c in table if c.startswith(("kl.", "flip.", "acc_change."))]
    assert (table.loc[DEAD, effects] == 0).all()  # exactly: its mean is 0, so the mean ablation is no change
    assert (table.loc[DEAD, [c for c in table if c.startswith("act.")]] == 0).all()
    others = table.drop(index=DEAD)
    assert (others["kl.objects"] > 0).sum() >= 60 and (others["kl.scenes"] > 0).sum() >= 60


def test_category_means_equal_a_direct_computation(built):
    """Each unit's mean and interval per dataset and per label, from the store's means with numpy."""
    table, files = built[0], built[2]
    for dataset, store, manifest in zip(DATASETS, files["stores"], files["manifests"], strict=True):
        means = zarr.open_group(store, mode="r")["means"][:].astype(np.float64)
        labels = (
            read_manifest(manifest)
            .set_index("image_id")
            .loc[zarr.open_group(store, mode="r")["image_id"][:].tolist(), "label"]
        )
        groups = {dataset: np.ones(len(means), bool)} | {
            f"{dataset}[{label}]": (labels == label).to_numpy() for label in labels.unique()
        }
        for group, rows in groups.items():
            for channel in (0, DEAD, 17, 63):
                values = means[rows, channel]
                low, high = bootstrap_interval(values, derived_rng(0, bootstrap_purpose(group)), resamples=200)
                row = table.iloc[channel]
                # the same numbers to the bit: per unit the same resamples, reduced in the same order
                assert (row[f"act.{group}.mean"], row[f"act.{group}.low"], row[f"act.{group}.high"]) == (
                    values.mean(),
                    low,
                    high,
                )


def test_the_lesion_equals_a_hooked_full_forward_pass(built):
    """KL and top-1 flips of two units' lesions, from the whole model with a hook replacing the unit's map by its mean
    (the tail path is not used)."""
    table, files, model_ref = built[0], built[2], built[3]
    network = build_model(model_ref.name, model_ref.spec, data_dir=model_ref.data_dir, torch_home=None)
    transform = build_transform(model_ref.spec["preprocessing"])
    batches = {}
    for dataset, manifest in zip(DATASETS, files["manifests"], strict=True):
        data = ManifestDataset(read_manifest(manifest), transform)
        batches[dataset] = torch.stack([data[i][0] for i in range(len(data))])
    images = torch.cat(list(batches.values()))
    maps = {}
    with torch.inference_mode():
        handle = network.layer3.register_forward_hook(lambda _m, _i, out: maps.setdefault("x", out.clone()))
        intact = network(images)
        handle.remove()
    fill = maps["x"].mean(dim=(0, 2, 3))  # each channel's mean over every image and position
    for channel in (3, 40):

        def lesion(_module, _inputs, out, channel=channel):
            out = out.clone()
            out[:, channel] = fill[channel]
            return out

        with torch.inference_mode():
            handle = network.layer3.register_forward_hook(lesion)
            lesioned = network(images)
            handle.remove()
        log_p, log_q = torch.log_softmax(intact, -1), torch.log_softmax(lesioned, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).numpy()
        first = 0
        for dataset, batch in batches.items():
            rows = slice(first, first + len(batch))
            first += len(batch)
            assert table.loc[channel, f"kl.{dataset}"] == pytest.approx(kl[rows].mean(), rel=1e-3, abs=1e-7)
            flips = (lesioned[rows].argmax(-1) != intact[rows].argmax(-1)).float().mean().item()
            assert table.loc[channel, f"flip.{dataset}"] == pytest.approx(flips)


def test_a_shard_past_the_layer_is_one_line(built, tmp_path):
    settings = CategoriesSettings("planted", "layer3", DATASETS, ("object", "scene"), 32, 96, 200, 0)
    with pytest.raises(AtlasError, match=r"has 64 channels; the atlas asks for units up to 95"):
        stages.run_categories(settings, **built[2], out_table=tmp_path / "x.parquet")


def test_shards_through_a_maps_tail_agree_to_the_bit(built):
    """layer2, whose tail re-runs layer3 on the maps (not the stored means): the 32 units' lesions in two halves give
    the same bits as all at once (observed on CPU; chunks of conditions x images differ between the two)."""
    model_ref, files = built[3], built[2]
    network = build_model(model_ref.name, model_ref.spec, data_dir=model_ref.data_dir, torch_home=None)
    tail = build_tail(network, "layer2", "planted")
    cache, _ = layer_maps(network, "layer2", {"objects": files["manifests"][0]}, model_ref.spec["preprocessing"])
    fill = ablation_fill("mean", cache.mean(dim=(2, 3)))
    whole = lesion_outputs(tail, cache, fill, np.arange(32))
    halves = [lesion_outputs(tail, cache, fill, np.arange(start, start + 16)) for start in (0, 16)]
    assert not tail.pool_first and not tail.rerun
    assert np.concatenate([half.kl for half in halves]).tobytes() == whole.kl.tobytes()
    assert np.array_equal(np.concatenate([half.top for half in halves]), whole.top)
    assert (whole.kl.mean(axis=1) > 0).all()  # every lesion changes the output
