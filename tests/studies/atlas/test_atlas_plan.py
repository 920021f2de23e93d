"""The atlas's parse-time plan: shards cover every unit once, channel counts come from the models' real facts (the
layer survey), and a typo'd model, layer or dataset is one line naming the key, with the closest name."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from wfutil import tiny_config

from unitscope.config import ConfigError, validate_config
from unitscope.models.facts import compute_facts, model_facts
from unitscope.studies.atlas.plan import (
    AtlasConfigError,
    AtlasPlan,
    ExemplarsSettings,
    GatherSettings,
    LesionSettings,
    TopNSettings,
    shard_name,
    unit_shards,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
    """The tiny config (ResNet-20, MobileNetV2) with the atlas on ResNet-20 layer3, 32 units per shard; the models'
    facts cached under a temporary resources_dir (one real survey each, in a subprocess, as at parse time)."""
    config = tiny_config(data_dir)
    config["resources_dir"] = str(tmp_path_factory.mktemp("resources"))
    config["atlas"] = {
        "enabled": True,
        "targets": [{"model": "resnet20_cifar", "layer": "layer3", "datasets": ["objects", "scenes"]}],
        "units_per_shard": 32,
    }
    return validate_config(config)


def with_target(config: dict, **changes) -> dict:
    config = copy.deepcopy(config)
    config["atlas"]["targets"][0].update(changes)
    return config


@pytest.mark.parametrize(("n_channels", "per_shard"), [(64, 32), (64, 64), (64, 100), (10, 3), (1280, 64), (1, 1)])
def test_shards_cover_every_unit_exactly_once(n_channels, per_shard):
    shards = unit_shards(n_channels, per_shard)
    units = np.concatenate([np.arange(start, stop) for start, stop in shards])
    assert units.tolist() == list(range(n_channels))
    assert all(0 < stop - start <= per_shard for start, stop in shards)
    assert len(shards) == -(-n_channels // per_shard)
    assert len({shard_name(*shard) for shard in shards}) == len(shards)


def test_channel_counts_and_shards_come_from_the_model_facts(base):
    atlas = AtlasPlan.from_config(base)
    target = atlas.target("resnet20_cifar", "layer3")
    layer = next(row for row in model_facts(base, "resnet20_cifar")["layers"] if row["name"] == "layer3")
    assert target.channels == layer["channels"] == 64
    assert target.shard_names() == ["0-31", "32-63"] and target.shard_range("32-63") == (32, 64)
    assert target.labelled == ("objects",)  # ResNet-20's eval set; the scenes' labels are not its classes
    assert target.categories == ("object", "scene")
    settings = atlas.lesion_settings("resnet20_cifar", "layer3", "32-63")
    assert (settings.start, settings.stop, settings.ablation) == (32, 64, "mean")
    assert LesionSettings.from_params(settings.as_params()) == settings
    assert atlas.shard_files("resnet20_cifar", "layer3", "lesion") == [
        f"results/atlas/resnet20_cifar/layer3/shards/{s}/lesion.parquet" for s in ("0-31", "32-63")
    ]
    # the index jobs: one per layer by default (a crop that several units share is probed once), or their own shards
    assert target.shard_names("indexes") == ["0-63"] and target.shard_range("0-63", "indexes") == (0, 64)
    assert atlas.indexes_settings("resnet20_cifar", "layer3", "0-63").stop == 64
    assert atlas.shard_files("resnet20_cifar", "layer3", "indexes") == [
        "results/atlas/resnet20_cifar/layer3/shards/0-63/indexes.parquet"
    ]
    with pytest.raises(AtlasConfigError, match="has no shard '0-31' \\(its shards: 0-63\\)"):
        atlas.indexes_settings("resnet20_cifar", "layer3", "0-31")
    split = AtlasPlan.from_config({**base, "atlas": {**base["atlas"], "index_units_per_shard": 48}})
    assert split.target("resnet20_cifar", "layer3").shard_names("indexes") == ["0-47", "48-63"]
    mobilenet = with_target(base, model="mobilenet_v2_imagenet", layer="features.18", datasets=["faces"])
    in_process = lambda config, name: compute_facts(name, config["models"][name])  # noqa: E731 - what the survey runs
    wide = AtlasPlan.from_config(mobilenet, facts=in_process).target("mobilenet_v2_imagenet", "features.18")
    assert wide.channels == 1280 and len(wide.shards) == 40 and wide.labelled == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"layer": "layr3"},
            r"^config key atlas\.targets\[0\]\.layer: model resnet20_cifar has no layer 'layr3'; "
            r"did you mean 'layer3'\?",
        ),
        ({"layer": "linear"}, r"^config key atlas\.targets\[0\]\.layer: resnet20_cifar 'linear' outputs \[10\], not "),
        (
            {"model": "resnet_20_cifar"},
            r"^config key atlas\.targets\[0\]\.model: unknown model 'resnet_20_cifar'; "
            r"did you mean 'resnet20_cifar'\?$",
        ),
        (
            {"datasets": ["object"]},
            r"^config key atlas\.targets\[0\]\.datasets: unknown dataset 'object'; "
            r"did you mean 'objects'\?$",
        ),
        ({"labelled": ["faces"]}, r"^config key atlas\.targets\[0\]\.labelled: 'faces' is not among the target's "),
    ],
)
def test_a_bad_target_is_one_line_naming_the_key(base, changes, message):
    with pytest.raises(AtlasConfigError, match=message) as caught:
        AtlasPlan.from_config(with_target(base, **changes))
    assert "\n" not in str(caught.value)


def test_a_repeated_or_missing_target_and_an_unknown_key(base):
    twice = copy.deepcopy(base)
    twice["atlas"]["targets"].append(dict(twice["atlas"]["targets"][0]))
    with pytest.raises(AtlasConfigError, match=r"atlas\.targets\[1\]: resnet20_cifar 'layer3' is already"):
        AtlasPlan.from_config(twice)
    empty = copy.deepcopy(base)
    empty["atlas"]["targets"] = []
    with pytest.raises(AtlasConfigError, match=r"atlas\.targets: empty"):
        AtlasPlan.from_config(empty)
    typo = copy.deepcopy(base)
    typo["atlas"]["units_per_shrad"] = 8
    with pytest.raises(ConfigError, match=r"atlas: unknown key 'units_per_shrad'; did you mean 'units_per_shard'\?"):
        validate_config(typo)
    with pytest.raises(AtlasConfigError, match=r"has no shard '0-9'"):
        AtlasPlan.from_config(base).lesion_settings("resnet20_cifar", "layer3", "0-9")


def test_the_gather_joins_nefesi_and_the_dissection_only_where_they_analyse_the_layer(base):
    config = copy.deepcopy(base)
    config["nefesi"] = {
        "enabled": True,
        "targets": [{"model": "resnet20_cifar", "datasets": ["objects"], "layers": ["layer3"]}],
    }
    config["dissection"] = {"enabled": False, "targets": [{"model": "resnet20_cifar", "layers": ["layer3"]}]}
    config = validate_config(config)
    atlas = AtlasPlan.from_config(config)
    gather = atlas.gather_settings("resnet20_cifar", "layer3")
    assert gather.nefesi and not gather.dissection and gather.shards == ("0-31", "32-63")
    assert GatherSettings.from_params(gather.as_params()) == gather
    assert atlas.nefesi_table("resnet20_cifar", "layer3") == ["results/nefesi/resnet20_cifar/layer3/indexes.parquet"]
    assert atlas.dissection_table("resnet20_cifar", "layer3") == []
    assert atlas.evidence() == ("categories", "lesion", "exemplars")  # the defaults: every kind
    config["atlas"]["evidence"]["lesion"] = False
    assert AtlasPlan.from_config(config).evidence() == ("categories", "exemplars")


def test_exemplars_run_one_top_n_per_layer_and_one_job_per_shard(base):
    atlas = AtlasPlan.from_config(base)
    top_n = atlas.top_n_settings("resnet20_cifar", "layer3")
    assert (top_n.datasets, top_n.top_n) == (("objects", "scenes"), 50)  # the schema's default
    assert TopNSettings.from_params(top_n.as_params()) == top_n
    shard = atlas.exemplars_settings("resnet20_cifar", "layer3", "32-63")
    assert (shard.start, shard.stop, shard.shown, shard.pixels) == (32, 64, 8, 128)
    assert ExemplarsSettings.from_params(shard.as_params()) == shard
    assert atlas.exemplar_images("resnet20_cifar", "layer3") == [
        f"results/atlas/resnet20_cifar/layer3/shards/{s}/exemplars.npz" for s in ("0-31", "32-63")
    ]
    assert atlas.evidence_files("resnet20_cifar", "layer3")["exemplars"] == [
        f"results/atlas/resnet20_cifar/layer3/shards/{s}/exemplars.parquet" for s in ("0-31", "32-63")
    ]
    off = copy.deepcopy(base)
    off["atlas"]["evidence"]["exemplars"] = False
    assert "exemplars" not in AtlasPlan.from_config(off).evidence()
    assert AtlasPlan.from_config(off).exemplar_images("resnet20_cifar", "layer3") == []
    many = copy.deepcopy(base)
    many["atlas"]["exemplars_shown"] = 60
    with pytest.raises(
        AtlasConfigError, match=r"^config key atlas\.exemplars_shown: 60 crops shown of atlas\.top_n = 50"
    ):
        AtlasPlan.from_config(many)


def test_actmax_is_per_target_and_its_layer_must_have_the_layers_channels(base):
    """evidence.actmax is off by default; a target switches it on for itself only, with the atlas.actmax settings
    per shard; actmax_layer must be a module with the layer's channels (layer3.2.bn2: 64, like layer3)."""
    plan = AtlasPlan.from_config(validate_config(copy.deepcopy(base)))
    assert "actmax" not in plan.evidence_kinds("resnet20_cifar", "layer3")
    assert plan.actmax_images("resnet20_cifar", "layer3") == []
    with pytest.raises(AtlasConfigError, match="no actmax evidence"):
        plan.actmax_settings("resnet20_cifar", "layer3", "0-31")

    config = with_target(base, actmax=True, actmax_layer="layer3.2.bn2")
    config["atlas"]["actmax"] = {"seeds": 3, "steps": 7}
    config["atlas"]["targets"].append({"model": "resnet20_cifar", "layer": "layer2", "datasets": ["objects"]})
    plan = AtlasPlan.from_config(validate_config(config))
    assert plan.evidence_kinds("resnet20_cifar", "layer3")[-1] == "actmax"
    assert "actmax" not in plan.evidence_kinds("resnet20_cifar", "layer2")
    assert plan.evidence_files("resnet20_cifar", "layer3")["actmax"] == [
        "results/atlas/resnet20_cifar/layer3/shards/0-31/actmax.parquet",
        "results/atlas/resnet20_cifar/layer3/shards/32-63/actmax.parquet",
    ]
    settings = plan.actmax_settings("resnet20_cifar", "layer3", "32-63")
    assert (settings.start, settings.stop, settings.seeds, settings.steps) == (32, 64, 3, 7)
    assert settings.optimize_at == "layer3.2.bn2" and settings.parameterization == "auto"
    assert plan.gather_settings("resnet20_cifar", "layer3").actmax

    wrong_channels = r"atlas.targets\[0\].actmax_layer: resnet20_cifar .layer2.2.bn2. has 32"
    with pytest.raises(AtlasConfigError, match=wrong_channels):
        AtlasPlan.from_config(validate_config(with_target(base, actmax=True, actmax_layer="layer2.2.bn2")))
    with pytest.raises(AtlasConfigError, match=r"actmax_layer: model resnet20_cifar has no layer 'layer3.2.bn9'"):
        AtlasPlan.from_config(validate_config(with_target(base, actmax_layer="layer3.2.bn9")))
