"""Faces study: selection, batched interventions versus hooks, readouts and controls, on real images."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from unitscope.config import validate_config
from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout, read_manifest, write_manifest
from unitscope.extract import run_extraction
from unitscope.fsutil import publish_tree
from unitscope.hooks import ActivationRecorder
from unitscope.interventions.conditions import ablation_fill, build_conditions
from unitscope.interventions.controls import matched_sets, random_sets
from unitscope.interventions.errors import InterventionError
from unitscope.interventions.tail import build_tail, condition_outputs, hooked_condition
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import build_model
from unitscope.runtime import RunSettings
from unitscope.settings import ModelRef
from unitscope.stats import empirical_p
from unitscope.studies.faces.controls import control_table
from unitscope.studies.faces.inputs import CategoryMeans, FacesError
from unitscope.studies.faces.plan import (
    FacesConfigError,
    FacesPlan,
    InterventionSettings,
    SectionSettings,
    SelectionSettings,
    intervention_layer,
    probe_layers,
)
from unitscope.studies.faces.probe import fit_logistic
from unitscope.studies.faces.readouts import Readout, layer_readouts
from unitscope.studies.faces.selection import selected_channels, selection_table, top_percentile
from unitscope.studies.faces.stages import run_interventions, run_selection

IMAGENET_PRE = {"resize": 232, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CIFAR_PRE = {**IMAGENET_PRE, "resize": 32, "crop": 32}
MOBILENET = {
    "arch": "torchvision.mobilenet_v2",
    "weights": "IMAGENET1K_V1",
    "checkpoint": "checkpoints/mobilenet_v2-b0353104.pth",
    "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "preprocessing": IMAGENET_PRE,
}
RESNET20 = {
    "arch": "cifar_resnet20",
    "checkpoint": "checkpoints/resnet20-12fca82f.th",
    "sha256": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "preprocessing": CIFAR_PRE,
}
SETS = {"faces": 80, "scenes": 40, "objects": 40}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, data_dir):
    """Small seeded draws of the real face, scene and object sets, written as manifests."""
    import yaml
    from conftest import REPO

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    folder = tmp_path_factory.mktemp("manifests")
    paths = {}
    for name, size in SETS.items():
        spec = config["datasets"][name]
        manifest = build_manifest(name, spec["category"], folder_layout(name, spec["source"], data_dir), size, 0)
        paths[name] = str(folder / f"{name}.parquet")
        write_manifest(manifest, paths[name])
    return paths


def one_store(manifest_path, dataset, layer, out, data_dir, torch_home):
    """resnet20_cifar's store of `layer` on one dataset at `out`, as the extraction rules make it."""
    ref = ModelRef(name="resnet20_cifar", spec=RESNET20, data_dir=str(data_dir), torch_home=str(torch_home))
    run = RunSettings(num_workers=0)
    stores = run_extraction(
        ref, dataset_name=dataset, manifest_path=manifest_path, layers={layer: False}, out_dir=f"{out}.pass", run=run
    )
    publish_tree(stores[layer], out)


def image_batch(manifests: dict, preprocessing: dict, per_set: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
    transform = build_transform(preprocessing)
    images, names = [], []
    for name, path in manifests.items():
        dataset = ManifestDataset(read_manifest(path), transform)
        count = len(dataset) if per_set is None else per_set[name]
        images.extend(dataset[i][0] for i in range(count))
        names.extend([name] * count)
    return torch.stack(images), np.asarray(names, dtype=object)


@pytest.fixture(scope="module")
def resnet20(data_dir):
    return build_model("resnet20_cifar", RESNET20, data_dir=data_dir, torch_home=None)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory, data_dir):
    torch_home = tmp_path_factory.mktemp("torch_home")
    return build_model("mobilenet_v2_imagenet", MOBILENET, data_dir=data_dir, torch_home=torch_home)


@pytest.fixture(scope="module")
def cifar_means(resnet20, manifests) -> CategoryMeans:
    """resnet20 layer3 channel means of 80 faces, 40 scenes and 40 objects (real images)."""
    images, names = image_batch(manifests, CIFAR_PRE)
    with ActivationRecorder(resnet20, ["layer3"]) as rec, torch.inference_mode():
        means = rec(images)["layer3"].numpy()
    return CategoryMeans(means, names, np.arange(len(names)).astype(str), "faces", ("scenes", "objects"))


# ---------------------------------------------------------------------------------------------- selection


def test_top_percentile_count_and_order(cifar_means):
    face_mean = cifar_means.of("faces").mean(axis=0)
    for percentile, count in ((5, 4), (10, 7), (50, 32), (100, 64)):  # ceil(64 * p / 100)
        chosen = top_percentile(cifar_means.of("faces"), percentile)
        assert len(chosen) == count
        assert list(chosen) == list(np.argsort(-face_mean, kind="stable")[:count])
        assert np.all(np.diff(face_mean[chosen]) <= 0)
    table = selection_table(cifar_means, percentile=5, fdr=0.05)
    assert list(selected_channels(table, "top_percentile")) == list(top_percentile(cifar_means.of("faces"), 5))
    assert table.loc[selected_channels(table, "top_percentile"), "face_rank"].tolist() == [1, 2, 3, 4]
    # ties go to the lower channel index
    assert list(top_percentile(np.array([1.0, 3.0, 3.0, 0.0]), 50)) == [1, 2]


def test_contrast_rule_requires_every_non_face_set(cifar_means):
    table = selection_table(cifar_means, percentile=5, fdr=0.05)
    picked = table[table["contrast"]]
    assert (picked[["q_scenes", "q_objects"]] < 0.05).all().all()
    assert (picked[["t_scenes", "t_objects"]] > 0).all().all()
    unpicked = table[~table["contrast"]]
    assert ((unpicked["q_scenes"] >= 0.05) | (unpicked["q_objects"] >= 0.05) | (unpicked["t_scenes"] <= 0)).all()
    order = selected_channels(table, "contrast")
    assert np.all(np.diff(table.loc[order, "d_min"]) <= 0)


# ---------------------------------------------------------------------------------------------- planted detector


def planted(cifar_means: CategoryMeans, channel: int) -> CategoryMeans:
    """Real activations with the face information removed (each channel shuffled across images) and
    one channel replaced by a perfect face detector (high for every face, 0 for every non-face)."""
    rng = np.random.default_rng(0)
    means = cifar_means.means.copy()
    for c in range(means.shape[1]):
        means[:, c] = rng.permutation(means[:, c])
    means[:, channel] = np.where(cifar_means.is_face, 2 * means.max() + rng.random(len(means)), 0.0)
    return CategoryMeans(means, cifar_means.dataset, cifar_means.image_id, "faces", ("scenes", "objects"))


def test_planted_face_detector_is_found_and_its_lesion_matters(cifar_means):
    channel = 17
    data = planted(cifar_means, channel)
    table = selection_table(data, percentile=5, fdr=0.05)
    assert selected_channels(table, "top_percentile")[0] == channel
    assert channel in selected_channels(table, "contrast")
    others = np.random.default_rng(1).choice(np.setdiff1d(np.arange(64), [channel]), size=5, replace=False)
    conditions = build_conditions(64, np.array([channel]), others[:, None], np.zeros((0, 1), dtype=int))
    readout = Readout.make(data.is_face, n_folds=5, train_fraction=0.5, C=1.0, seed=0)
    result = layer_readouts(torch.from_numpy(data.means), conditions.ablate, torch.zeros(64), readout)
    result = pd.concat([conditions.table, result], axis=1).set_index("condition")
    intact = result.loc["intact", "fixed_accuracy"]
    assert intact >= 0.9  # 80 training images, 63 uninformative channels: the L2 probe is not perfect
    assert result.loc["lesion", "fixed_accuracy"] <= 0.6  # the faces now look like non-faces
    random_lesions = result.loc[result["family"] == "random"]
    random_lesions = random_lesions[random_lesions["mode"] == "lesion"]
    assert (random_lesions["fixed_accuracy"] >= intact - 0.05).all()
    assert result.loc["keep_only", "retrained_accuracy"] == 1.0  # the detector alone suffices


# ---------------------------------------------------------------------------------------------- batched vs hooks


def some_conditions(n_channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    selected = rng.choice(n_channels, size=max(1, n_channels // 20), replace=False)
    return build_conditions(
        n_channels, selected, random_sets(n_channels, len(selected), 2, rng), random_sets(n_channels, 1, 1, rng)
    )


def layer_cache(model, tail, images):
    with ActivationRecorder(model, [tail.layer], keep_maps=True, maps_dtype=torch.float32) as rec:
        with torch.inference_mode():
            rec(images)
    maps = rec.maps[tail.layer]
    return maps.mean(dim=(2, 3)) if tail.pool_first else maps


@pytest.mark.parametrize(
    ("model_name", "layer", "pool_first"),
    [
        ("mobilenet", "features.18", True),
        ("mobilenet", "features.16", False),
        ("resnet20", "layer3", True),
        ("resnet20", "layer2", False),
        ("resnet20", "layer2.1", False),
    ],
)
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_batched_path_equals_hooks_one_condition_at_a_time(request, manifests, model_name, layer, pool_first, ablation):
    model = request.getfixturevalue(model_name)
    preprocessing = CIFAR_PRE if model_name == "resnet20" else IMAGENET_PRE
    images, _ = image_batch(manifests, preprocessing, {"faces": 3, "scenes": 2, "objects": 2})
    tail = build_tail(model, layer, model_name)
    assert tail.pool_first is pool_first
    cache = layer_cache(model, tail, images)
    means = cache if cache.dim() == 2 else cache.mean(dim=(2, 3))
    fill = ablation_fill(ablation, means)
    conditions = some_conditions(means.shape[1])
    pooled_all, logits_all = [], []
    for _, pooled, logits in condition_outputs(tail, cache, conditions.ablate, fill, chunk_bytes=200_000):
        pooled_all.append(pooled)
        logits_all.append(logits)
    pooled_all, logits_all = torch.cat(pooled_all), torch.cat(logits_all)
    for k, ablate in enumerate(conditions.ablate):
        pooled, logits = hooked_condition(model, tail, images, ablate, fill)
        torch.testing.assert_close(pooled_all[k], pooled, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(logits_all[k], logits, rtol=1e-4, atol=2e-4)
    with torch.inference_mode():
        torch.testing.assert_close(logits_all[0], model(images), rtol=1e-4, atol=2e-4)  # intact = the model


def test_zeroing_a_channel_without_downstream_weights_changes_nothing(mobilenet, manifests):
    model = copy.deepcopy(mobilenet)
    images, _ = image_batch(manifests, IMAGENET_PRE, {"faces": 2, "scenes": 1, "objects": 1})
    channel = 7
    model.classifier[1].weight[:, channel] = 0  # features.18 -> pool -> classifier: channel 7 now unread
    model.features[17].conv[0][0].weight[:, channel] = 0  # features.16 -> features.17 (no residual): unread
    for layer, compare_pooled in (("features.18", False), ("features.16", True)):
        tail = build_tail(model, layer, "mobilenet")
        cache = layer_cache(model, tail, images)
        ablate = torch.zeros(2, cache.shape[1], dtype=torch.bool)
        ablate[1, channel] = True
        assert cache[:, channel].abs().sum() > 0  # the channel is active: zeroing it is a real change
        [(_, pooled, logits)] = list(condition_outputs(tail, cache, ablate, torch.zeros(cache.shape[1])))
        torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-5)
        if compare_pooled:
            torch.testing.assert_close(pooled[1], pooled[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("model_name", "layer"), [("mobilenet", "features.18"), ("resnet20", "layer2")])
def test_mean_ablation_of_every_channel_gives_constant_activations(request, manifests, model_name, layer):
    model = request.getfixturevalue(model_name)
    preprocessing = CIFAR_PRE if model_name == "resnet20" else IMAGENET_PRE
    images, _ = image_batch(manifests, preprocessing, {"faces": 2, "scenes": 1, "objects": 1})
    tail = build_tail(model, layer, model_name)
    cache = layer_cache(model, tail, images)
    means = cache if cache.dim() == 2 else cache.mean(dim=(2, 3))
    fill = ablation_fill("mean", means)
    everything = torch.ones(1, means.shape[1], dtype=torch.bool)
    [(_, pooled, logits)] = list(condition_outputs(tail, cache, everything, fill))
    assert means.std(dim=0).max() > 0.01  # the images do differ before the ablation
    torch.testing.assert_close(pooled[0], pooled[0, :1].expand_as(pooled[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0], logits[0, :1].expand_as(logits[0]), rtol=0, atol=1e-4)
    if tail.pool_first:
        torch.testing.assert_close(pooled[0, 0], fill)


def test_a_layer_a_skip_crosses_is_re_run_whole_and_the_head_is_an_error(resnet20, mobilenet):
    tail = build_tail(resnet20, "layer2.1.conv1", "resnet20_cifar")  # the block's shortcut crosses the layer
    assert tail.rerun and "crosses the layer" in tail.path and not tail.pool_first
    with pytest.raises(InterventionError, match="classifier"):
        build_tail(mobilenet, "classifier", "mobilenet_v2_imagenet")


# ---------------------------------------------------------------------------------------------- probes, controls


def test_batched_logistic_regression_matches_scikit_learn(cifar_means):
    X = StandardScaler().fit_transform(cifar_means.means.astype(np.float64))
    y = cifar_means.is_face.astype(int)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X, y)
    keep = np.ones((3, X.shape[1]), dtype=bool)
    keep[1, :32] = False
    keep[2, 5:] = False
    fit = fit_logistic(torch.as_tensor(X), torch.as_tensor(y), C=0.5, feature_mask=torch.as_tensor(keep), tol=1e-9)
    assert bool(fit.converged.all())
    np.testing.assert_allclose(fit.weights[0].numpy(), reference.coef_[0], atol=1e-4)
    np.testing.assert_allclose(float(fit.intercept[0]), reference.intercept_[0], atol=1e-4)
    for k in (1, 2):  # held-at-zero weights = the probe fit on the kept channels only
        subset = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X[:, keep[k]], y)
        np.testing.assert_allclose(fit.weights[k].numpy()[keep[k]], subset.coef_[0], atol=1e-4)
        assert np.all(fit.weights[k].numpy()[~keep[k]] == 0)


def test_single_channel_lesions_ablate_exactly_their_channel():
    selected = np.array([5, 2, 9])
    conditions = build_conditions(12, selected, np.array([[0, 1, 3]]), np.zeros((0, 3), dtype=int), selected)
    single = conditions.table["family"] == "single"
    assert list(conditions.table.loc[single, "condition"]) == [
        "single_lesion_0005",
        "single_lesion_0002",
        "single_lesion_0009",
    ]
    masks = conditions.ablate[torch.tensor(single.to_numpy())]
    assert masks.sum(dim=1).tolist() == [1, 1, 1]
    assert masks.nonzero()[:, 1].tolist() == [5, 2, 9]
    assert len(build_conditions(12, selected, np.array([[0, 1, 3]]), np.zeros((0, 3), dtype=int)).table) == 5


def test_matched_sets_are_disjoint_from_the_selection_and_closer_than_random(cifar_means):
    channel_mean = cifar_means.means.mean(axis=0)
    selected = top_percentile(cifar_means.of("faces"), 10)
    rng = np.random.default_rng(0)
    draws = matched_sets(channel_mean, selected, 50, 5, rng)
    assert draws.shape == (50, len(selected))
    assert not np.isin(draws, selected).any()
    assert all(len(set(row)) == len(selected) for row in draws)
    randoms = random_sets(64, len(selected), 50, rng)
    target = channel_mean[selected].mean()
    assert np.abs(channel_mean[draws].mean(1) - target).mean() < np.abs(channel_mean[randoms].mean(1) - target).mean()
    with pytest.raises(InterventionError, match="unselected"):
        matched_sets(channel_mean, np.arange(40), 2, 5, rng)


def test_random_set_against_its_own_null_is_not_significant(cifar_means):
    """Each random draw, scored against the other draws, gives roughly uniform p-values."""
    n_channels = cifar_means.n_channels
    rng = np.random.default_rng(3)
    draws = random_sets(n_channels, 4, 60, rng)
    conditions = build_conditions(n_channels, draws[0], draws[1:], np.zeros((0, 4), dtype=int))
    readout = Readout.make(cifar_means.is_face, n_folds=5, train_fraction=0.5, C=1.0, seed=0)
    result = layer_readouts(torch.from_numpy(cifar_means.means), conditions.ablate, torch.zeros(n_channels), readout)
    result = pd.concat([conditions.table, result], axis=1)
    result["channels"] = [s.tolist() for s in conditions.sets]
    controls = control_table(result).set_index(["mode", "control", "metric"])
    assert controls.loc[("lesion", "random", "fixed_accuracy"), "p_value"] > 0.05
    lesions = result[(result["mode"] == "lesion")]["pca_pc1"].to_numpy()
    p_values = np.array([empirical_p(lesions[i], np.delete(lesions, i), "lower") for i in range(len(lesions))])
    assert (p_values < 0.05).mean() <= 0.15 and 0.3 < p_values.mean() < 0.7


# ---------------------------------------------------------------------------------------------- config, stage


def test_schema_defaults_and_layer_resolution(default_config):
    config = validate_config(copy.deepcopy(default_config))
    faces = config["faces"]
    assert faces["model"] == "mobilenet_v2_imagenet" and faces["selection"]["percentile"] == 5
    assert faces["interventions"]["n_random"] == 100 and faces["interventions"]["n_matched"] == 100
    assert faces["probe"]["folds"] == 5 and faces["selection"]["use"] == "top_percentile"
    assert intervention_layer(faces, config) == "features.18"
    assert probe_layers(faces, config) == ["features.1", "features.3", "features.6", "features.13", "features.18"]
    assert intervention_layer({**faces, "model": "resnet56_cifar"}, config) == "layer3"
    with pytest.raises(FacesConfigError, match="faces.model: model 'resnet18_imagenet' is disabled"):
        intervention_layer({**faces, "model": "resnet18_imagenet"}, config)


# Which rules' settings a changed key reaches (FacesPlan fields): only those re-run, with their dependants.
GRANULARITY = [
    (("faces", "interventions", "alpha"), 0.01, {"section"}),  # a reporting level
    (("faces", "interventions", "n_random"), 9, {"interventions"}),
    (("faces", "probe", "fixed_train_fraction"), 0.6, {"interventions"}),
    (("faces", "probe", "folds"), 4, {"interventions", "probes"}),
    (("faces", "selection", "percentile"), 10, {"selection", "section"}),
    (("faces", "selection", "use"), "contrast", {"interventions", "categories", "heatmaps", "section"}),
    (("faces", "pca_levels"), [0.9], {"pca", "interventions", "section"}),
    (("faces", "n_bootstrap"), 300, {"categories"}),
    (("faces", "heatmaps", "n_examples"), 3, {"heatmaps"}),
    (("faces", "layer"), "features.16", {"selection", "pca", "interventions", "categories", "heatmaps"}),
    (("seed",), 1, {"interventions", "probes", "categories", "heatmaps"}),
    (("extraction", "batch_size"), 7, set()),  # run-only
]


@pytest.mark.parametrize(("key", "value", "changed"), GRANULARITY, ids=[".".join(k) for k, _, _ in GRANULARITY])
def test_a_changed_key_reaches_only_the_rules_it_changes(data_dir, key, value, changed):
    from wfutil import study_config

    config = validate_config(study_config("faces", data_dir))
    edited = copy.deepcopy(config)
    *parents, last = key
    target = edited
    for part in parents:
        target = target[part]
    assert target[last] != value
    target[last] = value
    before, after = FacesPlan.from_config(config), FacesPlan.from_config(edited)
    rules = [field.name for field in dataclasses.fields(FacesPlan) if field.name != "model"]
    assert {rule for rule in rules if getattr(before, rule) != getattr(after, rule)} == changed
    for rule in rules:  # what a rule's params carry comes back as the same settings in its script
        settings = getattr(after, rule)
        assert type(settings).from_params(json.loads(json.dumps(settings.as_params()))) == settings


def test_intervention_stage_on_real_stores_with_maps(tmp_path, manifests, data_dir):
    """The stage at a layer followed by more blocks (maps computed once, downstream probes, KL)."""
    stores = {}
    for name, path in manifests.items():
        stores[name] = str(tmp_path / f"{name}.zarr")
        one_store(path, name, "layer2", stores[name], data_dir, tmp_path)
    datasets = tuple(stores)
    run_selection(
        SelectionSettings(layer="layer2", datasets=datasets, percentile=10, fdr=0.05),
        stores=stores,
        out_table=tmp_path / "sel.pq",
    )
    settings = InterventionSettings(
        layer="layer2",
        datasets=datasets,
        rule="top_percentile",
        ablation="zero",
        n_random=6,
        n_matched=4,
        matched_candidates=5,
        folds=3,
        C=1.0,
        fixed_train_fraction=0.5,
        pca_levels=(0.9,),
        seed=0,
    )
    model = ModelRef(name="resnet20_cifar", spec=RESNET20, data_dir=str(data_dir), torch_home=str(tmp_path))
    result, controls = run_interventions(
        settings,
        model,
        stores=stores,
        manifests=manifests,
        selection=str(tmp_path / "sel.pq"),
        out_conditions=tmp_path / "conditions.pq",
        out_controls=tmp_path / "controls.pq",
        out_pca=tmp_path / "pca.pq",
        run=RunSettings(device="cpu", num_workers=0),
    )
    assert len(result) == 1 + 2 + 2 * 6 + 2 * 4 + 4 and result["n_faces"].iloc[0] == 80  # + 4 channels alone
    sets = result[~result["family"].isin(["intact", "single"])]
    assert (sets["set_size"] == 4).all()  # ceil(32 * 10 / 100)
    single = result[result["family"] == "single"]
    assert [c[0] for c in single["channels"]] == list(result.loc[result["condition"] == "lesion", "channels"].iloc[0])
    assert (single["set_size"] == 1).all() and (single["kl_faces"] > 0).all()
    intact = result.iloc[0]
    assert intact["kl_faces"] == 0 and intact["kl_nonfaces"] == 0
    assert result["downstream_retrained_accuracy"].notna().all() and result["downstream_fixed_accuracy"].notna().all()
    keep_only = result[result["mode"] == "keep_only"]
    assert (keep_only["kl_faces"] > 0).all() and (keep_only["pca_n90"] <= 4).all()
    assert set(controls["control"]) == {"random", "matched"} and controls["p_value"].between(0, 1).all()
    assert pd.read_parquet(tmp_path / "conditions.pq").shape == result.shape
    curves = pd.read_parquet(tmp_path / "pca.pq").groupby("condition")["cumulative"].max()
    np.testing.assert_allclose(curves.loc[["intact", "lesion", "keep_only"]], 1.0, rtol=1e-6)


def test_torchvision_resnet_tail_equals_hooks(manifests):
    """torchvision's ResNet (as ResNet-18 and TopoNet): block-level and stage-level layers."""
    model = torchvision.models.resnet18(weights=None).eval()
    images, _ = image_batch(
        manifests, {**IMAGENET_PRE, "resize": 112, "crop": 112}, {"faces": 2, "scenes": 1, "objects": 1}
    )
    for layer, pool_first in (("layer3", False), ("layer4.0", False), ("layer4", True), ("maxpool", False)):
        tail = build_tail(model, layer, "resnet18")
        assert tail.pool_first is pool_first
        cache = layer_cache(model, tail, images)
        conditions = some_conditions(cache.shape[1], seed=1)
        [(_, pooled, logits)] = list(condition_outputs(tail, cache, conditions.ablate, torch.zeros(cache.shape[1])))
        for k in (0, 1, 2, 3):
            reference_pooled, reference_logits = hooked_condition(
                model, tail, images, conditions.ablate[k], torch.zeros(cache.shape[1])
            )
            torch.testing.assert_close(pooled[k], reference_pooled, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(logits[k], reference_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- report text


def synthetic_conditions(lesion_fixed: float, keep_retrained: float, n_draws: int = 40) -> pd.DataFrame:
    """A conditions table as the stage writes it, with chosen values for the selected set."""
    rng = np.random.default_rng(0)
    rows = [
        {"condition": "intact", "family": "intact", "mode": "none", "fixed_accuracy": 0.95, "retrained_accuracy": 0.95},
        {"condition": "lesion", "family": "selected", "mode": "lesion", "fixed_accuracy": lesion_fixed},
        {"condition": "keep_only", "family": "selected", "mode": "keep_only", "retrained_accuracy": keep_retrained},
    ]
    for family in ("random", "matched"):
        for draw in range(n_draws):
            for mode in ("lesion", "keep_only"):
                rows.append(
                    {
                        "condition": f"{family}_{mode}_{draw:03d}",
                        "family": family,
                        "mode": mode,
                        "fixed_accuracy": 0.94 + 0.01 * rng.random(),
                        "retrained_accuracy": 0.80 + 0.05 * rng.random(),
                        "channels": [draw, draw + 1, 100 + draw] if family == "random" else [draw, 200 + draw, 7],
                    }
                )
    table = pd.DataFrame(rows)
    table["channels"] = [c if isinstance(c, list) else [1, 2, 3] for c in table["channels"]]
    table.loc[table["condition"] == "lesion", "retrained_accuracy"] = 0.94
    table.loc[table["condition"] == "keep_only", "fixed_accuracy"] = 0.5
    for column, value in (("kl_faces", 0.2), ("kl_nonfaces", 0.1), ("kl_face_ratio", 2.0)):
        table[column] = value + 0.01 * rng.random(len(table))
    table.loc[table["family"] == "intact", ["kl_faces", "kl_nonfaces", "kl_face_ratio"]] = [0.0, 0.0, np.nan]
    table["set_size"], table["n_ablated"], table["n_faces"], table["n_nonfaces"] = 3, 3, 500, 500
    table["fixed_n_test"] = 500
    table["model"], table["layer"], table["ablation"], table["set_mean_activation"] = "m", "l", "zero", 1.0
    return table


def test_verdict_sentences_follow_the_numbers(cifar_means):
    from unitscope.studies.faces.section import conclusion_text, verdicts

    selection = selection_table(cifar_means, percentile=5, fdr=0.05)
    settings = SectionSettings(
        rule="top_percentile", percentile=5, fdr=0.05, alpha=0.05, pca_levels=(0.8, 0.9, 0.95), face_dataset="faces"
    )
    strong = synthetic_conditions(lesion_fixed=0.60, keep_retrained=0.95)
    weak = synthetic_conditions(lesion_fixed=0.945, keep_retrained=0.70)
    strong_verdict = verdicts(strong, control_table(strong), 0.05)
    weak_verdict = verdicts(weak, control_table(weak), 0.05)
    assert strong_verdict["necessary"] and strong_verdict["sufficient"]
    assert not weak_verdict["necessary_absolute"] and not weak_verdict["necessary_vs_controls"]
    assert not weak_verdict["sufficient_absolute"] and not weak_verdict["sufficient"]
    strong_text = conclusion_text(selection, strong, control_table(strong), settings)
    weak_text = conclusion_text(selection, weak, control_table(weak), settings)
    assert "from 95.0% to 60.0%" in strong_text and "necessary: below the intact 95% interval" in strong_text
    assert "from 95.0% to 94.5%" in weak_text and "not necessary (within the intact 95% interval" in weak_text
    assert "not sufficient (below the intact 95% interval" in weak_text
    assert "40 random sets" in strong_text and "p = 0.024" in strong_text  # 1 / 41
    few = synthetic_conditions(lesion_fixed=0.60, keep_retrained=0.95, n_draws=5)
    assert "no p-value can fall below 0.167" in conclusion_text(selection, few, control_table(few), settings)


def test_bad_inputs_are_one_line_errors(tmp_path, manifests, data_dir):
    from unitscope.studies.faces.inputs import load_category_means
    from unitscope.studies.faces.probe import stratified_folds

    with pytest.raises(FacesError, match=r"faces.probe.folds: 5 folds need at least 5 images per class; have 3 faces"):
        stratified_folds(np.array([1, 1, 1, 0, 0, 0, 0, 0]), 5, 0)
    store = tmp_path / "faces.zarr"
    one_store(manifests["faces"], "faces", "layer1", store, data_dir, tmp_path)
    with pytest.raises(FacesError, match=r"faces.zarr holds layer 'layer1', expected 'layer3'") as err:
        load_category_means({"faces": str(store)}, "faces", "layer3")
    assert "\n" not in str(err.value)
    with pytest.raises(FacesError, match="no activation store for the face dataset 'portraits'"):
        load_category_means({"faces": str(store)}, "portraits", "layer1")
