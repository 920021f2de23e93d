"""The atlas's exemplar evidence on real data: the ResNet-20 CIFAR checkpoint with one unit of layer3 planted dead, 40
CIFAR-10 and 10 Intel scene images, the layer's top-10 found in one pass, then each shard's Neuron Features and crops
(2 shards of 32 units, and 1 of 64), checked against nefesi's own code and against the model itself."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from wfutil import tiny_config

from unitscope.config import validate_config
from unitscope.data.manifest import run_manifest
from unitscope.extract import run_extraction
from unitscope.models.facts import compute_facts
from unitscope.models.registry import build_model, load_model
from unitscope.runtime import RunSettings, inference_copy
from unitscope.settings import ModelRef
from unitscope.studies.atlas import exemplars, stages
from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.atlas.plan import AtlasPlan, ExemplarsSettings
from unitscope.studies.nefesi.images import exemplar_crops, image_table, layer_field, model_inputs, nf_rgb
from unitscope.studies.nefesi.probes import probe_layer, tensor_batches
from unitscope.studies.nefesi.topn import collect_top_n

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

DEAD = 5  # layer3's planted dead unit
DATASETS = ("objects", "scenes")
SIZES = {"objects": 40, "scenes": 10}
TOP_N, SHOWN = 10, 4
RUN = RunSettings(device="cpu", batch_size=64, num_workers=0)
SHARDS = ("0-31", "32-63")


def planted_spec(data_dir, path) -> dict:
    """ResNet-20 with layer3's unit DEAD dead (layer3.2.bn2 scale 0, bias -1e4: the ReLU after the skip outputs 0)."""
    spec = tiny_config(data_dir)["models"]["resnet20_cifar"]
    model = copy.deepcopy(build_model("resnet20_cifar", spec, data_dir=data_dir, torch_home=None))
    with torch.no_grad():
        model.layer3[2].bn2.weight[DEAD] = 0.0
        model.layer3[2].bn2.bias[DEAD] = -1e4
    torch.save({"state_dict": model.state_dict()}, path)
    return {key: value for key, value in spec.items() if key not in ("sha256", "eval")} | {"checkpoint": str(path)}


def exemplar_config(data_dir, tmp, units_per_shard: int) -> dict:
    config = tiny_config(data_dir)
    config["resources_dir"] = str(tmp / "resources")
    for dataset, size in SIZES.items():
        config["datasets"][dataset]["size"] = size
    config["models"] = {"planted": planted_spec(data_dir, tmp / "planted.th")}
    config["extraction"]["targets"] = []
    config["atlas"] = {
        "enabled": True,
        "targets": [{"model": "planted", "layer": "layer3", "datasets": list(DATASETS)}],
        "evidence": {"categories": False, "lesion": False},
        "units_per_shard": units_per_shard,
        "top_n": TOP_N,
        "exemplars_shown": SHOWN,
    }
    return validate_config(config)


def in_process_facts(config, name):
    return compute_facts(name, config["models"][name])


def draw_manifests(config, data_dir, tmp) -> list[str]:
    """The manifest of each of DATASETS, drawn as the workflow draws them."""
    manifests = []
    for dataset in DATASETS:
        manifests.append(str(tmp / f"manifests/{dataset}.parquet"))
        run_manifest(
            dataset, config["datasets"][dataset], seed=0, data_dir=data_dir, resources_dir=tmp, out_path=manifests[-1]
        )
    return manifests


def layer_stores(model: ModelRef, manifests: list[str], layer: str, out) -> list[str]:
    """Each dataset's store of `layer` from the extraction pass, as the workflow makes them (one pass per dataset)."""
    stores = []
    for dataset, manifest in zip(DATASETS, manifests, strict=True):
        made = run_extraction(
            model, dataset_name=dataset, manifest_path=manifest, layers={layer: False}, out_dir=out / dataset, run=RUN
        )
        stores.append(str(made[layer]))
    return stores


def shard_outputs(atlas: AtlasPlan, shard: str, files: dict, out, **changes):
    settings = dataclasses.replace(atlas.exemplars_settings("planted", "layer3", shard), **changes)
    paths = {"out_images": out / f"{shard}/exemplars.npz", "out_table": out / f"{shard}/exemplars.parquet"}
    stages.run_exemplars(settings, **files, **paths)
    with np.load(paths["out_images"]) as arrays:
        return {key: arrays[key] for key in arrays.files}, pd.read_parquet(paths["out_table"]), paths


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    """Several image blocks and crop blocks per shard, as on a large layer."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exemplars, "IMAGES_PER_CHUNK", 8)
        patch.setattr(exemplars, "CROPS_PER_BLOCK", 16)
        yield


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory, small_blocks):
    tmp = tmp_path_factory.mktemp("exemplars")
    config = exemplar_config(data_dir, tmp, 32)
    model = ModelRef.from_config(config, "planted")
    manifests = draw_manifests(config, data_dir, tmp)
    atlas = AtlasPlan.from_config(config, facts=in_process_facts)
    table, geometry = tmp / "top_n.parquet", tmp / "top_n.json"
    stages.run_top_n(
        atlas.top_n_settings("planted", "layer3"),
        model,
        stores=layer_stores(model, manifests, "layer3", tmp / "stores"),
        manifests=manifests,
        out_table=table,
        out_geometry=geometry,
    )
    files = {"table": table, "geometry": geometry, "manifests": manifests}
    two = [shard_outputs(atlas, shard, files, tmp / "two") for shard in SHARDS]
    config_one = copy.deepcopy(config)
    config_one["atlas"]["units_per_shard"] = 64
    one = shard_outputs(AtlasPlan.from_config(config_one, facts=in_process_facts), "0-63", files, tmp / "one")
    return {"atlas": atlas, "model": model, "files": files, "two": two, "one": one, "tmp": tmp}


def model_view(built):
    """Every image as the model sees it (the image table's order) and the unfolded model's layer3 maps of them."""
    images = image_table(dict(zip(DATASETS, built["files"]["manifests"], strict=True)))
    inputs = model_inputs(images, built["model"].spec["preprocessing"])
    network, maps = load_model(built["model"]), {}
    with torch.inference_mode():
        handle = network.layer3.register_forward_hook(lambda _m, _i, out: maps.setdefault("layer3", out.clone()))
        network(inputs)
        handle.remove()
    return images, inputs, maps["layer3"]


def float_features(built, start: int, stop: int) -> torch.Tensor:
    """The Neuron Features (normalised, before they are stored as uint8) of units [start, stop), as a shard does."""
    images = image_table(dict(zip(DATASETS, built["files"]["manifests"], strict=True)))
    geometry = json.loads(built["files"]["geometry"].read_text())
    channels = np.arange(start, stop)
    top = exemplars.shard_top_n(pd.read_parquet(built["files"]["table"]), images, channels, "top_n.parquet")
    decode = lambda rows: model_inputs(images.iloc[rows], geometry["preprocessing"])  # noqa: E731
    return exemplars.neuron_features(top, decode, geometry, shown=SHOWN)[0]


def test_each_exemplar_is_its_image_maximum_and_no_image_is_missed(built):
    """The top-N table, against the plain (unfolded) model re-run on every image: each exemplar's activation is the
    map's value at its (y, x) and that image's maximum for the unit, and the unit's best exemplar is its maximum over
    every image (so the pass missed none)."""
    images, _, maps = model_view(built)
    table = pd.read_parquet(built["files"]["table"])
    assert table.columns.tolist() == [
        "channel",
        "rank",
        "dataset",
        "image_id",
        "activation",
        "y",
        "x",
        "map_h",
        "map_w",
    ]
    assert table["channel"].tolist() == np.repeat(np.arange(64), TOP_N).tolist()
    assert table["rank"].tolist() == np.tile(np.arange(TOP_N), 64).tolist()
    row = pd.MultiIndex.from_frame(images[["dataset", "image_id"]]).get_indexer(
        pd.MultiIndex.from_frame(table[["dataset", "image_id"]])
    )
    assert (row >= 0).all() and (table[["map_h", "map_w"]] == 8).all().all()
    channel, y, x = (torch.tensor(table[c].to_numpy()) for c in ("channel", "y", "x"))
    at = maps[torch.as_tensor(row), channel, y, x].numpy()
    peak = maps.flatten(2).amax(dim=2)  # [images, units]
    np.testing.assert_allclose(table["activation"], at, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(at, peak[torch.as_tensor(row), channel].numpy(), rtol=1e-4, atol=1e-4)
    best = table[table["rank"] == 0].sort_values("channel")["activation"].to_numpy()
    np.testing.assert_allclose(best, peak.amax(dim=0).numpy(), rtol=1e-4, atol=1e-4)
    assert (table.groupby("channel")["activation"].diff().dropna() <= 0).all()  # best first


def test_neuron_features_equal_what_nefesi_computes(built):
    """nefesi's own pipeline on the same images (its top-N pass on the folded model, then its probes, whose Neuron
    Features are the activation-weighted crops): the same exemplars (the atlas's come from the extraction pass's
    stored peaks, on the unfolded model: the same images and locations, activations equal to float rounding), and
    the same NF up to float summation order."""
    _, inputs, _ = model_view(built)
    network = inference_copy(load_model(built["model"]))
    batches = [(inputs[i : i + 64], torch.arange(i, min(i + 64, len(inputs)))) for i in range(0, len(inputs), 64)]
    top = collect_top_n(network, batches, ["layer3"], TOP_N, progress=False)["layer3"]
    preprocessing = built["model"].spec["preprocessing"]
    mean, std = preprocessing["mean"], preprocessing["std"]
    probes = probe_layer(
        network, "layer3", top, tensor_batches(inputs), image_size=(32, 32), mean=mean, std=std,
        rotation_step=180, progress=False, batch_size=512,
    )  # fmt: skip
    table = pd.read_parquet(built["files"]["table"])
    assert np.array_equal(table["y"].to_numpy(), top.y.reshape(-1).numpy())
    assert np.array_equal(table["x"].to_numpy(), top.x.reshape(-1).numpy())
    images = image_table(dict(zip(DATASETS, built["files"]["manifests"], strict=True)))
    assert table["image_id"].tolist() == images["image_id"].iloc[top.image.reshape(-1).numpy()].tolist()
    np.testing.assert_allclose(table["activation"], top.values.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(float_features(built, 0, 64), probes.nf, rtol=0, atol=1e-5)
    arrays = built["one"][0]
    expected = np.rint(nf_rgb(probes.nf, mean, std) * 255)
    assert arrays["nf"].shape == expected.shape == (64, 60, 60, 3)  # the field's visible 60 x 60 px: not shrunk
    difference = np.abs(arrays["nf"].astype(int) - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999
    assert (arrays["nf"][DEAD] == np.rint(np.array(mean) * 255)).all()  # no positive exemplar: the mean colour


def test_shard_files_follow_the_contract(built):
    arrays, summary, _ = built["two"][1]
    units = 32
    assert set(arrays) == {"channels", "nf", "crops", "activation", "image_id", "dataset"}
    assert arrays["channels"].dtype == np.int64 and arrays["channels"].tolist() == list(range(32, 64))
    assert arrays["nf"].dtype == np.uint8 and arrays["nf"].shape == (units, 60, 60, 3)
    assert arrays["crops"].dtype == np.uint8 and arrays["crops"].shape == (units, SHOWN, 60, 60, 3)
    assert arrays["activation"].dtype == np.float32 and arrays["activation"].shape == (units, SHOWN)
    for key in ("image_id", "dataset"):
        assert arrays[key].dtype.kind == "U" and arrays[key].shape == (units, SHOWN)
    assert set(arrays["dataset"].ravel()) <= set(DATASETS)
    table = pd.read_parquet(built["files"]["table"]).query("channel >= 32 and rank < @SHOWN")
    assert arrays["image_id"].ravel().tolist() == table["image_id"].tolist()
    assert arrays["activation"].ravel().tolist() == table["activation"].tolist()
    assert summary.columns.tolist() == [
        "channel", "top_activation", "n_exemplars", "exemplar_share.objects", "exemplar_share.scenes"
    ]  # fmt: skip
    assert summary["top_activation"].tolist() == arrays["activation"][:, 0].tolist()


def test_crops_are_the_fields_around_the_argmax(built):
    """Each shown crop is nefesi's crop of the unit's field at the exemplar's location in its image."""
    images, inputs, _ = model_view(built)
    geometry = json.loads(built["files"]["geometry"].read_text())
    arrays = built["two"][0][0]
    table = pd.read_parquet(built["files"]["table"]).query("rank < @SHOWN and channel < 32")
    row = pd.MultiIndex.from_frame(images[["dataset", "image_id"]]).get_indexer(
        pd.MultiIndex.from_frame(table[["dataset", "image_id"]])
    )
    preprocessing = built["model"].spec["preprocessing"]
    crops = exemplar_crops(
        inputs[torch.as_tensor(row)], layer_field(geometry), table["y"], table["x"], geometry["nf_extent"],
        preprocessing["mean"], preprocessing["std"],
    )  # fmt: skip
    assert np.array_equal(arrays["crops"].reshape(-1, 60, 60, 3), np.rint(crops * 255).astype(np.uint8))
    assert len(np.unique(arrays["crops"].reshape(32 * SHOWN, -1), axis=0)) > 32  # not all the same picture


def test_two_shards_equal_one_to_the_bit_and_a_rerun_is_byte_identical(built):
    (a, table_a, paths_a), (b, table_b, _) = built["two"]
    one, table_one, _ = built["one"]
    for key in one:
        both = np.concatenate([a[key], b[key]])
        assert both.dtype == one[key].dtype and both.tobytes() == one[key].tobytes(), key
    pd.testing.assert_frame_equal(pd.concat([table_a, table_b], ignore_index=True), table_one, check_exact=True)
    whole, halves = float_features(built, 0, 64), [float_features(built, 0, 32), float_features(built, 32, 64)]
    assert torch.cat(halves).numpy().tobytes() == whole.numpy().tobytes()  # the same sums, not merely close
    _, _, again = shard_outputs(built["atlas"], "0-31", built["files"], built["tmp"] / "again")
    assert again["out_images"].read_bytes() == paths_a["out_images"].read_bytes()


def test_dataset_shares_sum_to_one_and_count_positive_exemplars(built):
    summary = pd.concat([built["two"][0][1], built["two"][1][1]], ignore_index=True)
    table = pd.read_parquet(built["files"]["table"])
    shares = summary[[f"exemplar_share.{d}" for d in DATASETS]]
    live = summary["n_exemplars"] > 0
    np.testing.assert_allclose(shares[live].sum(axis=1), 1.0, rtol=1e-12)
    positive = table[table["activation"] > 0]
    counts = positive.groupby("channel").size().reindex(range(64), fill_value=0)
    assert summary["n_exemplars"].tolist() == counts.tolist()
    scenes = positive[positive["dataset"] == "scenes"].groupby("channel").size().reindex(range(64), fill_value=0)
    np.testing.assert_allclose(summary.loc[live, "exemplar_share.scenes"], (scenes / counts)[live])
    assert summary.loc[DEAD, "n_exemplars"] == 0 and shares.loc[DEAD].isna().all() and live.sum() == 63
    assert 0 < (summary.loc[live, "exemplar_share.scenes"] > 0).sum() < 63  # both datasets win some units


def test_large_fields_are_shrunk_by_area_averaging(built):
    small, _, _ = shard_outputs(built["atlas"], "0-31", built["files"], built["tmp"] / "small", pixels=24)
    full = built["two"][0][0]
    assert small["nf"].shape == (32, 24, 24, 3) and small["crops"].shape == (32, SHOWN, 24, 24, 3)
    assert small["image_id"].tolist() == full["image_id"].tolist()
    shrunk = F.interpolate(torch.as_tensor(full["crops"][:, 0], dtype=torch.float64).permute(0, 3, 1, 2), (24, 24),
                           mode="area").permute(0, 2, 3, 1).numpy()  # fmt: skip
    assert np.abs(small["crops"][:, 0] - shrunk).max() <= 1.0  # the same picture, 60 -> 24 px (rounding apart)


def test_the_gather_names_the_exemplar_columns(built):
    shards = [paths["out_table"] for _, _, paths in built["two"]]
    table = stages.run_gather(
        built["atlas"].gather_settings("planted", "layer3"),
        evidence={"exemplars": shards},
        out_table=built["tmp"] / "units.parquet",
    )
    columns = ["exemplars.top_activation", "exemplars.n", "exemplars.share.objects", "exemplars.share.scenes"]
    assert [c for c in table if c.startswith("exemplars.")] == columns
    assert table["exemplars.n"].tolist() == pd.concat([pd.read_parquet(p) for p in shards])["n_exemplars"].tolist()


def test_a_shard_past_the_layer_is_one_line(built, tmp_path):
    settings = ExemplarsSettings("planted", "layer3", DATASETS, 32, 96, SHOWN, None)
    with pytest.raises(AtlasError, match=r"has no exemplars of units \[64, 65, 66, 67, 68\]") as caught:
        stages.run_exemplars(
            settings, **built["files"], out_images=tmp_path / "x.npz", out_table=tmp_path / "x.parquet"
        )
    assert "\n" not in str(caught.value) and not (tmp_path / "x.npz").exists()
