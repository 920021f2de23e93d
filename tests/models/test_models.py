"""Model stage on the real checkpoints and images in shared/data (see shared/data/SOURCES.md)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from conftest import DATA_DIR
from PIL import Image

from unitscope.fsutil import sha256_file
from unitscope.models.card import model_card, run_model_card
from unitscope.models.cifar_resnet import cifar_resnet20, cifar_resnet56
from unitscope.models.errors import ModelError
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import build_model, imagenet_categories, layer_names, resolve_layer
from unitscope.models.toponet import BlurPoolConv2d, toponet_resnet18

DATA = DATA_DIR
CKPT = DATA / "checkpoints"
IMAGENET_PRE = {"resize": 232, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CIFAR_PRE = {"resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

pytestmark = pytest.mark.skipif(not CKPT.is_dir(), reason=f"shared data not found at {DATA}")


def cifar_spec(depth: int, **extra) -> dict:
    files = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
    hashes = {
        20: "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        56: "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    }
    spec = {
        "arch": f"cifar_resnet{depth}",
        "checkpoint": f"checkpoints/{files[depth]}",
        "sha256": hashes[depth],
        "preprocessing": CIFAR_PRE,
        "eval": {"dataset": "objects"},
    }
    spec.update(extra)
    return spec


MOBILENET = {
    "arch": "torchvision.mobilenet_v2",
    "weights": "IMAGENET1K_V1",
    "checkpoint": "checkpoints/mobilenet_v2-b0353104.pth",
    "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "preprocessing": IMAGENET_PRE,
}


def cifar_manifest() -> pd.DataFrame:
    table = pd.read_csv(DATA / "objects_cifar10" / "labels.csv", dtype=str).sort_values("path")
    return pd.DataFrame(
        {"path": [str(DATA / "objects_cifar10" / p) for p in table["path"]], "label": list(table["label"])}
    )


@pytest.fixture(scope="module")
def resnet56():
    return build_model("resnet56_cifar", cifar_spec(56), data_dir=DATA, torch_home=None)


@pytest.fixture(scope="module")
def resnet20():
    return build_model("resnet20_cifar", cifar_spec(20), data_dir=DATA, torch_home=None)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home")
    return build_model("mobilenet_v2_imagenet", MOBILENET, data_dir=DATA, torch_home=torch_home), torch_home


# ---------------------------------------------------------------------------------------------- accuracy


def test_resnet56_top1_on_200_cifar_images(resnet56):
    manifest = cifar_manifest()
    manifest = manifest[[int(Path(p).stem) < 20 for p in manifest["path"]]].reset_index(drop=True)
    assert len(manifest) == 200 and (manifest["label"].value_counts() == 20).all()
    card = model_card("resnet56_cifar", cifar_spec(56), resnet56, eval_manifest=manifest, batch_size=100)
    ev = card["eval"]
    assert ev["n"] == 200 and ev["dataset"] == "objects"
    assert abs(ev["top1"] - 0.832) <= 0.03, ev  # SOURCES.md: 83.2% on this JPEG set
    assert ev["ci95"][0] < ev["top1"] < ev["ci95"][1]
    json.dumps(card)


@pytest.mark.parametrize(("depth", "expected"), [(20, 0.814), (56, 0.832)])
def test_cifar_resnets_reproduce_reference_accuracy_on_all_2000_images(depth, expected, request):
    model = request.getfixturevalue(f"resnet{depth}")
    card = model_card(f"r{depth}", cifar_spec(depth), model, eval_manifest=cifar_manifest(), batch_size=250)
    assert card["eval"]["n"] == 2000
    assert abs(card["eval"]["top1"] - expected) <= 0.0026, card["eval"]  # figures are rounded to 0.1 point


# ---------------------------------------------------------------------------------------------- MobileNetV2

# ImageNet classes a scene of each kind plausibly gets (chosen by meaning, not from predictions).
SHORE = {
    "seashore",
    "sandbar",
    "lakeside",
    "promontory",
    "breakwater",
    "cliff",
    "beacon",
    "dock",
    "pier",
    "boathouse",
    "wreck",
    "coral reef",
    "catamaran",
    "speedboat",
    "canoe",
    "lifeboat",
    "yawl",
    "schooner",
}
URBAN = {
    "streetcar",
    "trolleybus",
    "cab",
    "minibus",
    "minivan",
    "moving van",
    "limousine",
    "passenger car",
    "police van",
    "school bus",
    "traffic light",
    "street sign",
    "parking meter",
    "palace",
    "monastery",
    "prison",
    "church",
    "bell cote",
    "dome",
    "triumphal arch",
    "steel arch bridge",
    "suspension bridge",
    "cinema",
    "bookshop",
    "grocery store",
    "tobacco shop",
    "barbershop",
    "restaurant",
    "mosque",
    "fountain",
    "patio",
    "library",
    "toyshop",
    "shoe shop",
    "bakery",
    "butcher shop",
    "confectionery",
}
NATURE = {
    "valley",
    "alp",
    "lakeside",
    "cliff",
    "volcano",
    "worm fence",
    "stone wall",
    "mountain tent",
    "hay",
    "earthstar",
    "coral fungus",
    "gyromitra",
    "hen-of-the-woods",
    "stinkhorn",
    "mushroom",
    "agaric",
    "bolete",
    "buckeye",
    "acorn",
    "maze",
    "rapeseed",
    "daisy",
    "park bench",
    "lumbermill",
}


def test_mobilenet_via_torchvision_loader_offline_from_the_local_checkpoint(mobilenet):
    model, torch_home = mobilenet
    # torchvision got the verified bytes in a private hub dir: nothing is copied into the shared cache
    assert not (torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").exists()
    assert model.unitscope_checkpoint["path"] == str((CKPT / "mobilenet_v2-b0353104.pth").resolve())
    assert model.unitscope_checkpoint["sha256"] == sha256_file(CKPT / "mobilenet_v2-b0353104.pth")
    assert isinstance(model, torchvision.models.MobileNetV2) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(CKPT / "mobilenet_v2-b0353104.pth", weights_only=True))
    assert torch.equal(model.features[18][0].weight, reference.features[18][0].weight)
    assert os.environ.get("TORCH_HOME") != str(torch_home)  # restored after loading


def test_mobilenet_top5_on_scene_photos_is_sensible(mobilenet):
    model, _ = mobilenet
    categories = imagenet_categories()
    assert len(categories) == 1000 and categories[0] == "tench"
    assert not (SHORE | URBAN | NATURE) - set(categories)  # no typos in the vocabularies
    transform = build_transform(IMAGENET_PRE)
    labels = pd.read_csv(DATA / "scenes_intel" / "labels.csv")

    def hit_rate(scene: str, vocabulary: set[str]) -> float:
        paths = labels[labels["label"] == scene]["path"].head(10)
        images = [transform(Image.open(DATA / "scenes_intel" / "images" / p).convert("RGB")) for p in paths]
        with torch.inference_mode():
            top5 = model(torch.stack(images)).topk(5, dim=1).indices
        return sum(bool({categories[i] for i in row} & vocabulary) for row in top5.tolist()) / len(paths)

    rates = {
        (s, v): hit_rate(s, vocab)
        for s in ("sea", "street", "forest")
        for v, vocab in (("shore", SHORE), ("urban", URBAN), ("nature", NATURE))
    }
    assert rates["sea", "shore"] >= 0.7, rates
    assert rates["street", "urban"] >= 0.7, rates
    assert rates["forest", "nature"] >= 0.7, rates
    assert rates["sea", "urban"] <= 0.2 and rates["forest", "urban"] <= 0.2, rates
    assert rates["street", "shore"] < rates["sea", "shore"], rates


def test_mobilenet_card_layers_and_classes(mobilenet):
    model, torch_home = mobilenet
    card = model_card("mobilenet_v2_imagenet", MOBILENET, model)
    json.dumps(card)
    layers = {entry["name"]: entry for entry in card["layers"]}
    assert layers["features.18"]["shape"] == [1280, 7, 7]
    assert layers["features.1"]["channels"] == 16
    assert card["classes"]["n"] == 1000 and card["classes"]["names"][1] == "goldfish"
    assert card["checkpoint"]["sha256"] == MOBILENET["sha256"]
    assert card["checkpoint"]["path"] == str((CKPT / "mobilenet_v2-b0353104.pth").resolve())
    assert 3.4e6 < card["parameters"] < 3.6e6


def test_torchvision_weights_refuse_a_file_that_is_not_torchvisions(tmp_path):
    spec = dict(MOBILENET, checkpoint=str(CKPT / "resnet20-12fca82f.th"), sha256=None)
    with pytest.raises(ModelError, match="sha256 starts 12fca82f, torchvision expects b0353104") as err:
        build_model("mb", spec, data_dir=DATA, torch_home=tmp_path)
    assert "\n" not in str(err.value) and "resnet20-12fca82f.th is not torchvision's" in str(err.value)
    assert not (tmp_path / "hub").exists()


# ---------------------------------------------------------------------------------------------- errors


def test_sha256_mismatch_names_file_and_hashes():
    spec = cifar_spec(56, sha256="0" * 64)
    with pytest.raises(ModelError) as err:
        build_model("resnet56_cifar", spec, data_dir=DATA, torch_home=None)
    message = str(err.value)
    assert "\n" not in message and "resnet56_cifar" in message and "resnet56-4bfd9763.th" in message
    assert "4bfd97631478d6b6" in message and "0000000000000000" in message


def test_truncated_checkpoint_is_one_line_error(tmp_path):
    data = (CKPT / "resnet56-4bfd9763.th").read_bytes()
    half = tmp_path / "half.th"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"^model r56: cannot read checkpoint .*half\.th as a torch file") as err:
        build_model("r56", cifar_spec(56, checkpoint=str(half), sha256=None), data_dir=DATA, torch_home=None)
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.th"
    junk.write_text("not a checkpoint")
    with pytest.raises(
        ModelError, match=r"cannot read checkpoint .*junk\.th as a torch file \(UnpicklingError: Unsupp"
    ):
        build_model("r56", cifar_spec(56, checkpoint=str(junk), sha256=None), data_dir=DATA, torch_home=None)


def test_missing_checkpoint_names_config_key(tmp_path):
    with pytest.raises(ModelError, match=r"models\.r56\.checkpoint: file .*nope\.th does not exist"):
        build_model("r56", cifar_spec(56, checkpoint="nope.th"), data_dir=tmp_path, torch_home=None)
    with pytest.raises(ModelError, match=r"models\.topo\.checkpoint is not set"):
        build_model(
            "topo",
            {"arch": "toponet_resnet18", "checkpoint": None, "preprocessing": IMAGENET_PRE},
            data_dir=DATA,
            torch_home=None,
        )


def test_checkpoint_of_another_architecture_lists_mismatches():
    spec = cifar_spec(56, checkpoint="checkpoints/resnet20-12fca82f.th", sha256=None)
    with pytest.raises(ModelError) as err:
        build_model("resnet56_cifar", spec, data_dir=DATA, torch_home=None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model resnet56_cifar: checkpoint ") and "does not fit cifar_resnet56" in message
    assert "missing layer1.3.conv1.weight" in message and "in all)" in message


def test_shape_mismatch_is_reported(tmp_path):
    path = tmp_path / "wide.th"
    torch.save({"state_dict": cifar_resnet20(num_classes=100).state_dict()}, path)
    spec = cifar_spec(20, checkpoint=str(path), sha256=None)
    with pytest.raises(ModelError, match=r"shape linear\.weight \[10,64\] vs checkpoint \[100,64\]"):
        build_model("r20", spec, data_dir=DATA, torch_home=None)


def test_weights_only_by_default(tmp_path):
    state = torch.load(CKPT / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)["state_dict"]
    path = tmp_path / "with_args.th"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    spec = cifar_spec(20, checkpoint=str(path), sha256=None)
    with pytest.raises(
        ModelError, match=r"weights_only=True\): it pickles argparse\.Namespace; set models\.r20\.trusted"
    ):
        build_model("r20", spec, data_dir=DATA, torch_home=None)
    model = build_model("r20", dict(spec, trusted=True), data_dir=DATA, torch_home=None)
    assert torch.equal(model.linear.weight, state["module.linear.weight"])
    # torchvision's loader (which itself unpickles with weights_only=False) gets the same check first
    mobilenet_state = torch.load(CKPT / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "mobilenet_with_args.pth"
    torch.save({"state_dict": mobilenet_state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(
        ModelError, match=r"weights_only=True\): it pickles argparse\.Namespace; set models\.mb\.trusted"
    ):
        build_model("mb", dict(MOBILENET, checkpoint=str(path), sha256=None), data_dir=DATA, torch_home=tmp_path)


def test_unknown_layer_lists_valid_names(resnet56):
    assert resolve_layer(resnet56, "layer3", "resnet56_cifar") is resnet56.layer3
    assert resolve_layer(resnet56, "layer2.0.relu2", "resnet56_cifar") is resnet56.layer2[0].relu2
    with pytest.raises(ModelError) as err:
        resolve_layer(resnet56, "layer4", "resnet56_cifar")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model resnet56_cifar has no layer 'layer4'")
    assert "valid layers include: conv1" in message and "layer3.8" in message and "avgpool" in message
    assert f"{len(layer_names(resnet56))} layers in all" in message


# ---------------------------------------------------------------------------------------------- architecture


def test_resnet20_card(resnet20):
    card = model_card("resnet20_cifar", cifar_spec(20), resnet20)
    json.dumps(card)
    layers = {entry["name"]: entry for entry in card["layers"]}
    assert [layers[f"layer{k}"]["channels"] for k in (1, 2, 3)] == [16, 32, 64]
    assert layers["layer1"]["shape"] == [16, 32, 32] and layers["layer3.2"]["shape"] == [64, 8, 8]
    assert layers["avgpool"]["shape"] == [64, 1, 1] and layers["linear"]["shape"] == [10]
    assert card["parameters"] == 269_722  # "0.27M"
    assert card["checkpoint"]["sha256"].startswith("12fca82f")
    assert card["classes"]["names"][3] == "cat" and card["num_outputs"] == 10 and card["eval"] is None


def test_every_relu_runs_once_per_forward(resnet20):
    calls: dict[str, int] = {}
    handles = [
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for name, module in resnet20.named_modules()
        if isinstance(module, torch.nn.ReLU)
    ]
    outputs = {}
    handles.append(resnet20.layer2[1].register_forward_hook(lambda m, i, o: outputs.__setitem__("block", o)))
    handles.append(resnet20.layer2[1].relu2.register_forward_hook(lambda m, i, o: outputs.__setitem__("relu2", o)))
    with torch.inference_mode():
        resnet20(torch.randn(2, 3, 32, 32))
    for handle in handles:
        handle.remove()
    assert len(calls) == 1 + 2 * 9 and set(calls.values()) == {1}
    assert torch.equal(outputs["block"], outputs["relu2"])


def test_cifar_shortcut_is_option_a():
    block = cifar_resnet56().layer2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()


def test_toponet_resnet18_matches_toponets_layout_and_loads(tmp_path):
    model = toponet_resnet18()
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, BlurPoolConv2d))
    assert wrapped == sorted(f"layer{k}.0.{c}" for k in (2, 3, 4) for c in ("conv1", "downsample.0"))
    keys = set(model.state_dict())
    assert {
        "layer2.0.conv1.conv.weight",
        "layer2.0.conv1.blur_filter",
        "layer4.0.downsample.0.conv.weight",
    } <= keys
    assert "conv1.weight" in keys and model.layer3[0].conv1.blur_filter.shape == (128, 1, 3, 3)
    # a DataParallel-style checkpoint without num_batches_tracked loads (weights_only) and round-trips
    torch.manual_seed(0)
    source = toponet_resnet18().eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "all_topo_tau_10.0.pt"
    torch.save(state, path)
    spec = {"arch": "toponet_resnet18", "checkpoint": str(path), "tau": 10.0, "preprocessing": IMAGENET_PRE}
    built = build_model("toponet_resnet18", spec, data_dir=DATA, torch_home=None)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(built(x), source(x))
    card = model_card("toponet_resnet18", spec, built)
    assert card["tau"] == 10.0 and card["classes"]["n"] == 1000
    assert {e["name"]: e["channels"] for e in card["layers"]}["layer4"] == 512
    # a plain torchvision ResNet-18 state_dict is not a TopoNet checkpoint
    plain = tmp_path / "plain.pt"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    with pytest.raises(ModelError, match=r"does not fit toponet_resnet18: missing layer2\.0\.conv1\.conv\.weight"):
        build_model("toponet_resnet18", dict(spec, checkpoint=str(plain)), data_dir=DATA, torch_home=None)


def test_transform_and_model_are_frozen_eval(resnet56):
    tensor = build_transform(CIFAR_PRE)(Image.open(DATA / "objects_cifar10" / "test" / "cat" / "0000.jpg"))
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert not resnet56.training and not any(p.requires_grad for p in resnet56.parameters())
    assert isinstance(resnet56, type(cifar_resnet56()))


def test_run_model_card_writes_json_from_a_manifest(tmp_path):
    manifest = cifar_manifest().iloc[::40].reset_index(drop=True)  # 50 images
    manifest["included"] = True
    manifest.loc[0, "included"] = False  # excluded images are not evaluated
    manifest.to_parquet(tmp_path / "objects.parquet", index=False)
    out = tmp_path / "cards" / "resnet20_cifar.json"
    run_model_card(
        "resnet20_cifar",
        cifar_spec(20),
        data_dir=DATA,
        torch_home=tmp_path / "torch",
        out_path=out,
        eval_manifest_path=tmp_path / "objects.parquet",
        threads=1,
    )
    card = json.loads(out.read_text())
    assert card["name"] == "resnet20_cifar" and card["eval"]["n"] == 49 and card["eval"]["dataset"] == "objects"
    assert 0.6 < card["eval"]["top1"] <= 1.0
