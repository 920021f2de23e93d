"""The atlas's index evidence on real data: the ResNet-20 CIFAR checkpoint with one unit of layer3 planted dead, 40
CIFAR-10 and 10 Intel scene images, the layer's top-10 from the atlas's one pass; each shard's nefesi indexes checked
against nefesi's own stage code run on the whole layer at once, and against the class index computed by hand."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from test_atlas_exemplars import (
    DATASETS,
    DEAD,
    RUN,
    TOP_N,
    draw_manifests,
    exemplar_config,
    in_process_facts,
    layer_stores,
)

from unitscope.config import validate_config
from unitscope.models.registry import load_model
from unitscope.runtime import inference_copy
from unitscope.settings import ModelRef
from unitscope.studies.atlas import exemplars, stages
from unitscope.studies.atlas.gather import NEFESI_COLUMNS, layer_table
from unitscope.studies.atlas.indexes import probe_transforms
from unitscope.studies.atlas.plan import AtlasPlan
from unitscope.studies.nefesi.images import image_table
from unitscope.studies.nefesi.indexes import selectivity_table
from unitscope.studies.nefesi.probes import manifest_batches, probe_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

ROTATION_STEP = 90  # 3 rotations: the same code path as nefesi's 15 degrees, a fraction of the forwards
LABEL_NAMES = {"objects": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
INDEXES = ("color_index", "orientation_index", "symmetry_index", "class_index")


def index_config(data_dir, tmp, kinds=None) -> dict:
    config = exemplar_config(data_dir, tmp, 32)
    config["atlas"]["index_units_per_shard"] = 32  # two index jobs (the default: one per layer)
    config["atlas"]["evidence"] = {"categories": False, "lesion": False, "exemplars": False, "indexes": True}
    config["nefesi"]["rotation_step"] = ROTATION_STEP
    for dataset, names in LABEL_NAMES.items():
        config["datasets"][dataset]["label_names"] = names
    if kinds is not None:
        config["atlas"]["indexes"] = list(kinds)
    return validate_config(config)


def shard_table(atlas: AtlasPlan, shard: str, files: dict, out) -> pd.DataFrame:
    path = out / shard / "indexes.parquet"
    stages.run_indexes(
        atlas.indexes_settings("planted", "layer3", shard), files["model"], table=files["table"],
        manifests=files["manifests"], out_table=path, run=RUN,
    )  # fmt: skip
    return pd.read_parquet(path)


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("indexes")
    config = index_config(data_dir, tmp)
    manifests = draw_manifests(config, data_dir, tmp)
    atlas = AtlasPlan.from_config(config, facts=in_process_facts)
    model = ModelRef.from_config(config, "planted")
    table = tmp / "top_n.parquet"
    stages.run_top_n(
        atlas.top_n_settings("planted", "layer3"), model, manifests=manifests, out_table=table,
        stores=layer_stores(model, manifests, "layer3", tmp / "stores"), out_geometry=tmp / "top_n.json",
    )  # fmt: skip
    files = {"model": model, "table": table, "manifests": manifests}
    shards = [shard_table(atlas, shard, files, tmp / "all") for shard in ("0-31", "32-63")]
    return {"config": config, "atlas": atlas, "files": files, "shards": shards, "tmp": tmp}


def nefesi_reference(built) -> pd.DataFrame:
    """nefesi's own code on the whole layer at once (all 64 channels, every transform), on the same exemplars."""
    files, definitions = built["files"], built["atlas"].index_definitions
    images = image_table(dict(zip(DATASETS, files["manifests"], strict=True)), label_names=LABEL_NAMES)
    top = exemplars.shard_top_n(pd.read_parquet(files["table"]), images, np.arange(64), files["table"])
    preprocessing = files["model"].spec["preprocessing"]
    mean, std = preprocessing["mean"], preprocessing["std"]
    from unitscope.models.preprocessing import build_transform

    probes = probe_layer(
        inference_copy(load_model(files["model"])), "layer3", top,
        manifest_batches(images, build_transform(preprocessing)), image_size=(32, 32), mean=mean, std=std,
        rotation_step=ROTATION_STEP, progress=False,
    )  # fmt: skip
    codes, names = pd.factorize(images["class"], sort=True)
    return selectivity_table(
        top, probes, codes, [str(n) for n in names], mean=mean, std=std,
        class_coverage=definitions["class_coverage"], population_threshold=definitions["population_threshold"],
        color_name_share=definitions["color_name_share"], class_index_scale=definitions["class_index_scale"],
    )  # fmt: skip


def test_shards_equal_nefesis_whole_layer_run(built):
    """Each unit's four indexes, computed in its shard (probes of 32 units, read at their own channels), equal nefesi's
    computation over the whole layer: the shard reads the right channel of every probe."""
    shards = pd.concat(built["shards"], ignore_index=True)
    reference = nefesi_reference(built)
    assert shards["channel"].tolist() == list(range(64))
    # the Neuron Feature's columns: the atlas's index jobs cut no NF (its exemplar stage does), so none
    assert shards["dominant_color"].isna().all() and shards["preferred_angle"].isna().all()
    for column in set(NEFESI_COLUMNS) - {"dominant_color", "preferred_angle"}:
        left, right = shards[column].to_numpy(), reference[column].to_numpy()
        if left.dtype.kind == "f":
            np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=column)
        else:
            assert left.tolist() == right.tolist(), column
    alive = ~shards["dead"]
    assert shards["dead"].tolist() == [c == DEAD for c in range(64)]
    assert shards.loc[alive, list(INDEXES)].notna().all().all()
    assert shards.loc[~alive, ["color_index", "orientation_index", "symmetry_index"]].isna().all().all()
    assert shards.loc[alive, "color_index"].std() > 0.01  # the indexes differ between units


def test_one_index_job_per_layer_by_default_equals_the_shards_and_probes_each_shared_crop_once(built, monkeypatch):
    """atlas.index_units_per_shard null (the default): one job for the layer's 64 units gives the two shards' rows,
    with fewer probes than the shards together (an exemplar crop two units share is probed once, not once per
    shard)."""
    from unitscope.studies.nefesi import probes as probes_module

    config = copy.deepcopy(built["config"])
    config["atlas"]["index_units_per_shard"] = None
    whole = AtlasPlan.from_config(config, facts=in_process_facts)
    assert whole.shard_files("planted", "layer3", "indexes")[0].endswith("/shards/0-63/indexes.parquet")
    counted = []
    original = probes_module.ProbeSet.of.__func__

    def counting(cls, top, geometry):
        probe_set = original(cls, top, geometry)
        counted.append(len(probe_set.keys))
        return probe_set

    monkeypatch.setattr(probes_module.ProbeSet, "of", classmethod(counting))
    layer = shard_table(whole, "0-63", built["files"], built["tmp"] / "whole")
    pd.testing.assert_frame_equal(layer, pd.concat(built["shards"], ignore_index=True), check_exact=False, rtol=1e-6)
    for shard in ("0-31", "32-63"):  # the shards again, counted
        shard_table(built["atlas"], shard, built["files"], built["tmp"] / "counted")
    [together, first, second] = counted
    assert 0 < together < first + second  # layer3's units see the whole 32-px image: shards share exemplar images


def test_the_class_index_alone_runs_no_network_and_equals_the_probed_one(built, monkeypatch):
    config = copy.deepcopy(built["config"])
    config["atlas"]["indexes"] = ["class"]
    atlas = AtlasPlan.from_config(validate_config(config), facts=in_process_facts)
    monkeypatch.setattr(stages, "_probe_network", lambda *_: pytest.fail("the class index built the network"))
    alone = shard_table(atlas, "0-31", built["files"], built["tmp"] / "class")
    probed = built["shards"][0]
    for column in ("class_index", "top_class", "top_class_share", "population_code", "dead", "top_activation"):
        assert alone[column].tolist() == pytest.approx(probed[column].tolist(), nan_ok=True), column
    assert not {"color_index", "orientation_index", "symmetry_index"} & set(alone.columns)


def test_class_index_by_hand(built):
    """Unit 0's class index from its top-N rows by hand: weights a / sum a, M classes to cover them, (K - M)/(K - 1)."""
    rows = pd.read_parquet(built["files"]["table"]).query("channel == 0").sort_values("rank")
    names = dict(enumerate(LABEL_NAMES["objects"]))
    manifests = dict(zip(DATASETS, built["files"]["manifests"], strict=True))
    labels = {
        (d, str(i)): (f"{d}:{names.get(int(label), label)}" if d == "objects" else f"{d}:{label}")
        for d, path in manifests.items()
        for i, label in pd.read_parquet(path)[["image_id", "label"]].itertuples(index=False)
    }
    weights = rows["activation"].clip(lower=0) / rows["activation"].clip(lower=0).sum()
    classes = [labels[(d, str(i))] for d, i in zip(rows["dataset"], rows["image_id"], strict=True)]
    shares = pd.Series(weights.to_numpy()).groupby(classes).sum().sort_values(ascending=False)
    m = int(np.searchsorted(np.cumsum(shares.to_numpy()), 1.0 - 1e-6) + 1)
    k = min(TOP_N, len(set(labels.values())))
    unit = built["shards"][0].iloc[0]
    assert unit["class_index"] == pytest.approx((k - m) / (k - 1))
    assert unit["top_class"] == shares.index[0]
    assert unit["top_class_share"] == pytest.approx(shares.iloc[0])


def test_a_subset_of_indexes_probes_only_its_transforms(built, monkeypatch):
    config = copy.deepcopy(built["config"])
    config["atlas"]["targets"][0]["indexes"] = ["colour"]  # the target's own list overrides atlas.indexes
    atlas = AtlasPlan.from_config(validate_config(config), facts=in_process_facts)
    assert atlas.indexes_settings("planted", "layer3", "0-31").kinds == ("colour",)
    assert [t.name for t in probe_transforms(["colour"], ROTATION_STEP, "luminance")] == ["identity", "gray"]
    colour = shard_table(atlas, "0-31", built["files"], built["tmp"] / "colour")
    np.testing.assert_allclose(colour["color_index"], built["shards"][0]["color_index"], rtol=1e-5, equal_nan=True)
    assert colour[["orientation_index", "symmetry_index", "class_index"]].isna().all().all()


def test_the_plan_joins_nefesis_table_instead_where_nefesi_analyses_the_layer(built):
    config = copy.deepcopy(built["config"])
    atlas = built["atlas"]
    assert "indexes" in atlas.evidence_kinds("planted", "layer3")
    nefesi_target = {"model": "planted", "datasets": ["objects"], "layers": ["layer3"]}
    config["nefesi"] |= {"enabled": True, "targets": [nefesi_target]}
    joined = AtlasPlan.from_config(validate_config(config), facts=in_process_facts)
    assert "indexes" not in joined.evidence_kinds("planted", "layer3")
    assert joined.nefesi_table("planted", "layer3") == ["results/nefesi/planted/layer3/indexes.parquet"]
    config["atlas"]["evidence"]["indexes"] = False
    config["nefesi"]["enabled"] = False
    off = AtlasPlan.from_config(validate_config(config), facts=in_process_facts)
    assert "indexes" not in off.evidence_kinds("planted", "layer3")


def test_the_gather_names_the_index_columns_as_nefesis(built):
    paths = [built["tmp"] / "all" / shard / "indexes.parquet" for shard in ("0-31", "32-63")]
    table = layer_table("planted", "layer3", 64, evidence={"indexes": paths})
    assert {f"nefesi.{column}" for column in NEFESI_COLUMNS} <= set(table.columns)
    assert table["nefesi.color_index"].tolist() == pytest.approx(
        pd.concat(built["shards"])["color_index"].tolist(), nan_ok=True
    )


def test_a_transform_list_must_start_with_the_identity(built):
    files = built["files"]
    images = image_table(dict(zip(DATASETS, files["manifests"], strict=True)))
    top = exemplars.shard_top_n(pd.read_parquet(files["table"]), images, np.arange(2), files["table"])
    gray = probe_transforms(["colour"], ROTATION_STEP, "luminance")[1:]
    with pytest.raises(ValueError, match="start with the identity"):
        probe_layer(
            torch.nn.Identity(), "layer3", top, None, image_size=(32, 32), mean=[0, 0, 0], std=[1, 1, 1],
            transform_list=gray,
        )  # fmt: skip


def test_settings_change_with_the_nefesi_definitions(built):
    """Changing a definition the indexes rest on (nefesi.rotation_step) changes the shard's params (a re-run)."""
    config = copy.deepcopy(built["config"])
    config["nefesi"]["rotation_step"] = 45
    changed = AtlasPlan.from_config(validate_config(config), facts=in_process_facts)
    before = built["atlas"].indexes_settings("planted", "layer3", "0-31")
    after = changed.indexes_settings("planted", "layer3", "0-31")
    assert before.as_params() != after.as_params()
    assert (before.definitions["rotation_step"], after.definitions["rotation_step"]) == (ROTATION_STEP, 45)
