"""Lesions study, several tests at once and the actmax colour row: Benjamini-Hochberg q-values are the hand-computed
ones within each family; the actmax colour score is the CIELAB chroma of real CIFAR-10 images (0 once they are made
grey, the known chroma of pure sRGB red), averaged over a unit's runs; its agreement with nefesi's or the
dissection's colour label is +-1 on constructed (anti-)aligned units, over the shared units only, and gives only N
below five shared units; the plan finds the registry targets and atlas layers whose units nefesi or the dissection
also label, and reads a layer's atlas shards where no registry target optimises it."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.config import load_config
from unitscope.studies.actmax.image_metrics import mean_chroma, unit_colour_scores
from unitscope.studies.lesions.agreement import ACTMAX_LABEL, MIN_SHARED, actmax_colour_agreement
from unitscope.studies.lesions.multiplicity import family_q_values
from unitscope.studies.lesions.plan import AgreementSettings, actmax_comparisons

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def cifar(data_dir) -> np.ndarray:
    """[12, 3, 32, 32] float in [0, 1]: the first CIFAR-10 test images of the objects set."""
    labels = pd.read_csv(data_dir / "objects_cifar10" / "labels.csv").head(12)
    images = [np.asarray(Image.open(data_dir / "objects_cifar10" / path).convert("RGB")) for path in labels["path"]]
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float64) / 255


def test_q_values_are_benjamini_hochberg_within_each_family():
    table = pd.DataFrame(
        {
            "control": ["random"] * 4 + ["matched"] * 3,
            "p": [0.01, 0.04, 0.03, np.nan, 0.02, 0.5, 0.02],
        }
    )
    q, tested = family_q_values(table, "p", ["control"])
    # random: 3 tests (the NaN is none); sorted 0.01, 0.03, 0.04 -> 0.03, min(0.045, 0.04), 0.04
    np.testing.assert_allclose(q[:3], [0.03, 0.04, 0.04])
    assert np.isnan(q[3]) and tested.tolist() == [3, 3, 3, 3, 3, 3, 3]
    np.testing.assert_allclose(q[4:], [0.03, 0.5, 0.03])  # matched: 0.02 x 3 / 2 for the tied pair
    single, one = family_q_values(table.iloc[:1], "p", ["control"])
    assert single.tolist() == [0.01] and one.tolist() == [1]  # one test: q = p
    empty, none = family_q_values(table.iloc[:0], "p", ["control"])
    assert len(empty) == len(none) == 0


def test_the_colour_score_is_the_cielab_chroma_averaged_over_a_units_runs(cifar):
    chroma = mean_chroma(cifar)
    assert chroma.shape == (12,) and (chroma > 1).all() and chroma.std() > 1  # real photos: some colour, varied
    grey = np.repeat(cifar.mean(axis=1, keepdims=True), 3, axis=1)
    assert np.abs(mean_chroma(grey)).max() < 0.01
    red = np.zeros((1, 3, 4, 4))
    red[:, 0] = 1.0
    assert mean_chroma(red)[0] == pytest.approx(104.55, abs=0.05)  # sRGB red: a* 80.1, b* 67.2
    assert np.isnan(mean_chroma(cifar[:, :1])).all()  # grayscale inputs have no chroma
    runs = pd.DataFrame(
        {
            "model": "m",
            "layer": "layer1.0",  # the optimised module; the units belong to unit_layer
            "unit_layer": "layer1",
            "channel": [3, 3, 3, 0, 0, 7, 7, 7, 7, 1, 1, 1],
            "seed": [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1, 2],
        }
    )
    scores = unit_colour_scores(cifar, runs)
    assert scores["channel"].tolist() == [0, 1, 3, 7] and (scores["layer"] == "layer1").all()
    assert scores["n_runs"].tolist() == [2, 3, 3, 4]
    expected = [chroma[[3, 4]].mean(), chroma[[9, 10, 11]].mean(), chroma[:3].mean(), chroma[5:9].mean()]
    np.testing.assert_allclose(scores["colour_score"], expected)
    with pytest.raises(ValueError, match="11 images for 12 runs"):
        unit_colour_scores(cifar[:11], runs)


def test_the_actmax_colour_row_is_plus_minus_one_on_aligned_units_over_shared_units_only():
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"channel": np.arange(20), "colour_score": rng.uniform(0, 60, 20)})
    nefesi = pd.DataFrame(  # channels 5..29 of the layer (15 shared), another layer beside it
        {
            "layer": "layer3",
            "channel": np.arange(5, 30),
            "color_index": np.r_[scores["colour_score"][5:] ** 2, [0.0] * 10],
        }
    )
    nefesi = pd.concat([nefesi, nefesi.assign(layer="layer2", color_index=-nefesi["color_index"])])
    row = actmax_colour_agreement(scores, "nefesi", nefesi, model="m", layer="layer3", n_bootstrap=200, seed=0)
    assert row["n_units"] == 15 and row["rho"] == pytest.approx(1.0) and row["low"] == pytest.approx(1.0)
    assert row["label"] == ACTMAX_LABEL and row["evidence"] == "nefesi colour index" and row["layer"] == "layer3"
    dissection = pd.DataFrame({"layer": "layer3", "unit": np.arange(20), "color_iou": -scores["colour_score"] / 100})
    anti = actmax_colour_agreement(scores, "dissection", dissection, model="m", layer="layer3", n_bootstrap=200, seed=0)
    assert anti["n_units"] == 20 and anti["rho"] == pytest.approx(-1.0) and anti["high"] == pytest.approx(-1.0)
    assert anti["evidence"] == "dissection IoU of the unit's best colour concept"
    few = actmax_colour_agreement(
        scores.head(MIN_SHARED - 1), "dissection", dissection, model="m", layer="layer3", n_bootstrap=200, seed=0
    )
    assert few["n_units"] == MIN_SHARED - 1 and np.isnan([few["rho"], few["low"], few["high"]]).all()


def test_the_plan_pairs_actmax_images_with_the_studies_that_label_their_units():
    from conftest import REPO

    default_config = load_config(REPO / "config" / "config.yaml")  # validated: the targets' defaults filled in
    comparisons = actmax_comparisons(default_config)
    # ResNet-56 layer3 is optimised by the atlas (no registry target there): its shards' images are scored
    assert ("resnet56_cifar", "layer3", "layer3", "nefesi", "atlas") in comparisons
    assert ("resnet56_cifar", "layer3", "layer3", "dissection", "atlas") in comparisons
    # a from_faces target optimises features.18.1 for the channels of features.18, which the dissection dissects
    assert ("mobilenet_v2_imagenet", "features.18.1", "features.18", "dissection", "registry") in comparisons
    settings = AgreementSettings.from_config(default_config)
    assert AgreementSettings.from_params(settings.as_params()) == settings
    assert ("resnet56_cifar", "layer3") in settings.nefesi_layers()
    assert settings.dissected_models() == ["mobilenet_v2_imagenet", "resnet56_cifar"]
    assert settings.actmax_targets() == [("mobilenet_v2_imagenet", "features.18.1")]
    assert settings.atlas_actmax_layers() == [("resnet56_cifar", "layer3")]
    # a registry target on the same layer is used instead: the layer is not scored twice
    config = copy.deepcopy(default_config)
    registry = config["actmax"]["registry_targets"]
    registry.append({**registry[0], "model": "resnet56_cifar", "layer": "layer3", "from_faces": 0, "channels": [0, 1]})
    both = AgreementSettings.from_config(config)
    assert ("resnet56_cifar", "layer3") in both.actmax_targets() and both.atlas_actmax_layers() == []
    config = copy.deepcopy(default_config)
    config["atlas"]["targets"][0]["actmax"] = False
    assert AgreementSettings.from_config(config).atlas_actmax_layers() == []
    config["nefesi"]["enabled"] = config["dissection"]["enabled"] = False
    assert actmax_comparisons(config) == ()
    config["actmax"]["enabled"] = False
    assert AgreementSettings.from_config(config).actmax == ()


def test_atlas_units_are_scored_from_their_shard_tables(tmp_path):
    """The atlas's shard tables give the same kind of rows as a registry run: one per unit of the layer, its colour
    score the shard's (already averaged over seeds); the agreement row then uses the shared units only."""
    from unitscope.studies.lesions.stages import _actmax_scores

    rng = np.random.default_rng(1)
    paths = []
    for start in (0, 8):
        shard = pd.DataFrame({"channel": np.arange(start, start + 8), "actmax_colour_score": rng.uniform(0, 50, 8)})
        paths.append(tmp_path / f"{start}.parquet")
        shard.to_parquet(paths[-1])
    scores = _actmax_scores("atlas", [str(p) for p in paths], "m", "layer3")
    assert scores["channel"].tolist() == list(range(16)) and (scores["layer"] == "layer3").all()
    colour = scores["colour_score"].to_numpy()
    nefesi = pd.DataFrame({"layer": "layer3", "channel": np.arange(4, 16), "color_index": colour[4:] / 100})
    row = actmax_colour_agreement(scores, "nefesi", nefesi, model="m", layer="layer3", n_bootstrap=200, seed=0)
    assert row["n_units"] == 12 and row["rho"] == pytest.approx(1.0)
