"""Lesions study, class units: on real CIFAR-10 images through the real ResNet-20 checkpoint, a planted unit whose
lesion provably removes one class's logit is found important for that class only; lesioning nothing changes
nothing; control sets have the requested size and leave out the labelled units; the agreement statistic is +-1 on
perfectly (anti-)aligned indexes; nefesi's class shares match a hand computation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout
from unitscope.hooks import ActivationRecorder
from unitscope.interventions.conditions import ConditionBuilder, ablation_fill
from unitscope.interventions.controls import random_sets
from unitscope.interventions.tail import build_tail
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import build_model
from unitscope.stats import spearman
from unitscope.studies.lesions import class_units as cu
from unitscope.studies.lesions.agreement import rank_agreement
from unitscope.studies.lesions.inputs import LesionsError, integer_labels, nefesi_shares
from unitscope.studies.lesions.plan import ClassUnitsSettings, LesionsConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

CIFAR_PRE = {"resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
RESNET20 = {
    "arch": "cifar_resnet20",
    "checkpoint": "checkpoints/resnet20-12fca82f.th",
    "sha256": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "preprocessing": CIFAR_PRE,
}
PLANTED_CLASS, STRENGTH = 3, 1000.0  # cat: its logit loses 1000 when the planted unit is lesioned


class ConstantUnit(nn.Module):
    """Appends one channel that is 1 everywhere to a layer's maps: the planted unit."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([maps, torch.ones_like(maps[:, :1])], dim=1)


class Planted(nn.Module):
    """ResNet-20 with a 65th unit after layer3 that feeds only class `target`'s logit: weight +M, bias -M, so the
    intact network computes exactly ResNet-20's logits and a lesion of the unit (set to 0) lowers that logit by M."""

    def __init__(self, net: nn.Module, target: int):
        super().__init__()
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.planted = ConstantUnit()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(65, 10)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:, :64] = net.linear.weight
            self.linear.weight[target, 64] = STRENGTH
            self.linear.bias.copy_(net.linear.bias)
            self.linear.bias[target] -= STRENGTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.linear(torch.flatten(self.avgpool(self.planted(out)), 1))


@pytest.fixture(scope="module")
def resnet20(data_dir):
    return build_model("resnet20_cifar", RESNET20, data_dir=data_dir, torch_home=None)


@pytest.fixture(scope="module")
def cifar(data_dir):
    """300 real CIFAR-10 test images (seeded draw) and their labels."""
    spec = {"root": "objects_cifar10", "labels": "labels.csv", "path_column": "path", "label_column": "label"}
    manifest = build_manifest(
        "objects", "object", folder_layout("objects", {"kind": "folder", **spec}, data_dir), 300, 0
    )
    manifest = manifest[manifest["included"]].reset_index(drop=True)
    dataset = ManifestDataset(manifest, build_transform(CIFAR_PRE))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, integer_labels(manifest["label"], "test manifest")


def layer_means(model, layer, images):
    with ActivationRecorder(model, [layer]) as rec, torch.inference_mode():
        return rec(images)[layer]


@pytest.fixture(scope="module")
def planted(resnet20, cifar):
    """The planted model, its tail at the planted layer, its channel means and the labelled images."""
    images, labels = cifar
    model = Planted(copy.deepcopy(resnet20), PLANTED_CLASS).eval().requires_grad_(False)
    tail = build_tail(model, "planted", "planted_resnet20")
    means = layer_means(model, "planted", images)
    labelled = cu.LabelledImages(labels, cu.stratified_halves(labels, 0), 10)
    return model, tail, means, labelled


def test_the_planted_model_is_resnet20_until_the_unit_is_lesioned(resnet20, planted, cifar):
    model, tail, means, _ = planted
    with torch.inference_mode():
        torch.testing.assert_close(model(cifar[0]), resnet20(cifar[0]), rtol=0, atol=2e-3)
    assert tail.pool_first and tail.affine is not None and means.shape == (300, 65)
    assert torch.allclose(means[:, 64], torch.ones(300))


def test_a_planted_unit_is_important_for_its_class_only(planted):
    _, tail, means, labelled = planted
    effects = cu.unit_effects(tail, means, ablation_fill("zero", means), labelled)
    for half in ("rank", "eval"):
        drop = effects[f"accuracy_drop_{half}"]
        # its lesion removes the class's logit: that class is never predicted, so its accuracy falls to 0...
        assert drop[64, PLANTED_CLASS] == pytest.approx(effects[f"intact_{half}"][PLANTED_CLASS])
        assert effects[f"intact_{half}"][PLANTED_CLASS] > 0.5
        # ...and no image of another class that was right becomes wrong
        others = np.delete(drop[64], PLANTED_CLASS)
        assert (others <= 1e-12).all()
    assert cu.most_important(effects, 1, PLANTED_CLASS).tolist() == [64]
    for label in set(range(10)) - {PLANTED_CLASS}:
        assert 64 not in cu.most_important(effects, 1, label)


def test_lesioning_nothing_changes_nothing(planted):
    _, tail, means, labelled = planted
    conditions = ConditionBuilder(65)
    conditions.add("intact", [], mode="none", family="intact", target=-1, k=0, kind="", draw=-1)
    conditions.add("empty", [], mode="lesion", family="labelled", target=2, k=0, kind="selective", draw=-1)
    conditions.add("cat unit", [64], mode="lesion", family="labelled", target=PLANTED_CLASS, k=1, kind="", draw=-1)
    built = conditions.build()
    correct, _ = cu.evaluate(tail, means, built.ablate, ablation_fill("zero", means), labelled.labels)
    assert (correct[1] == correct[0]).all() and (correct[2] != correct[0]).any()
    scored = cu.score_conditions(built, correct, labelled)
    assert scored.loc[1, ["accuracy_change", "other_change", "specificity"]].tolist() == [0.0, 0.0, 0.0]
    assert scored.loc[2, "accuracy"] == 0.0 and scored.loc[2, "other_change"] >= 0


def test_controls_have_the_set_size_and_leave_out_the_labelled_units(planted):
    _, _, means, labelled = planted
    shares = np.random.default_rng(0).dirichlet(np.ones(10), size=65)
    effects = {"accuracy_drop_rank": np.zeros((65, 10)), "log_prob_drop_rank": -shares}
    sets = cu.labelled_sets(shares, effects, [1, 4, 80])  # 80: more than the units, left out
    assert {s["k"] for s in sets} == {1, 4} and len(sets) == 10 * 2 * 2
    draws = cu.SetDraws(n_random=7, n_matched=5, matched_candidates=3, seed=0)
    built = cu.build_set_conditions(sets, means.mean(0).numpy(), draws)
    table = built.table
    for number, labelled_set in enumerate(sets):
        for mode in cu.MODES:
            rows = table.index[table["condition"].str.startswith(f"set{number:04d}_") & (table["mode"] == mode)]
            families = table.loc[rows, "family"].value_counts().to_dict()
            assert families == {"labelled": 1, "random": 7, "matched": 5}
            for row in rows:
                channels = built.sets[row]
                assert len(channels) == labelled_set["k"] and len(set(channels.tolist())) == labelled_set["k"]
                if table.loc[row, "family"] != "labelled":
                    assert not np.isin(channels, labelled_set["channels"]).any()
    excluded = np.arange(60)
    assert not np.isin(random_sets(65, 5, 50, np.random.default_rng(1), exclude=excluded), excluded).any()


def test_the_agreement_statistic_is_plus_minus_one_on_aligned_indexes():
    x = np.random.default_rng(0).normal(size=40)
    assert spearman(x, 3 * x + 1) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear: still 1
    aligned = rank_agreement(x, x**3, n_bootstrap=200, seed=0, purpose="test")
    assert aligned["rho"] == pytest.approx(1.0) and aligned["low"] == pytest.approx(1.0)
    anti = rank_agreement(x, -x, n_bootstrap=200, seed=0, purpose="test")
    assert anti["rho"] == pytest.approx(-1.0) and anti["high"] == pytest.approx(-1.0)
    ties = spearman(np.array([1, 2, 2, 3.0]), np.array([1, 2, 2, 3.0]))
    assert ties == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones(5), x[:5]))


def test_nefesi_shares_match_a_hand_computation(tmp_path):
    """Two units, top-3 exemplars: shares are each class's activation weight over the unit's exemplars."""
    rows = []
    for channel, activations, images in ((0, [4.0, 3.0, 1.0], [0, 1, 2]), (1, [2.0, 2.0, 0.0], [2, 0, -1])):
        for rank, (a, image) in enumerate(zip(activations, images, strict=True)):
            rows.append({"layer": "l", "channel": channel, "rank": rank, "activation": a, "image": image})
    exemplars = pd.DataFrame(rows).assign(y=0, x=0, map_h=4, map_w=4)
    images = pd.DataFrame({"label": [1, 1, 2], "class": ["b", "b", "c"]})
    exemplars.to_parquet(tmp_path / "ex.parquet")
    images.to_parquet(tmp_path / "im.parquet")
    shares, index, names = nefesi_shares(tmp_path / "ex.parquet", tmp_path / "im.parquet", "l", 2, 3)
    np.testing.assert_allclose(shares, [[0.0, 7 / 8, 1 / 8], [0.0, 0.5, 0.5]], atol=1e-6)
    assert names == ["0", "b", "c"]
    with pytest.raises(LesionsError, match="2 units at 'l', the store 5"):
        nefesi_shares(tmp_path / "ex.parquet", tmp_path / "im.parquet", "l", 5, 3)
    images.assign(label=["1", "x", "2"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LesionsError, match=r"labels must be class indexes .*found 'x'"):
        nefesi_shares(tmp_path / "ex.parquet", tmp_path / "bad.parquet", "l", 2, 3)
    assert index.shape == (2,)


def test_the_plan_names_the_key_when_nefesi_does_not_analyse_the_layer(default_config):
    assert ClassUnitsSettings.from_config(default_config).layer == "layer3"
    config = copy.deepcopy(default_config)
    config["lesions"]["class_units"]["layer"] = "layer2.8"
    with pytest.raises(LesionsConfigError, match=r"lesions.class_units.layer: nefesi does not analyse resnet56_cifar"):
        ClassUnitsSettings.from_config(config)
    config["lesions"]["class_units"].update(layer="layer3", dataset="cifar")
    with pytest.raises(LesionsConfigError, match=r"lesions.class_units.dataset: unknown dataset 'cifar'"):
        ClassUnitsSettings.from_config(config)
