"""The faces study's interventions on any CNN: the tail after the layer, cut out of the torch.fx graph, or full
hooked re-runs where it cannot be (a skip or branch crossing the layer, a layer run twice, a model fx cannot trace).

Every model has random weights drawn under a fixed seed (`anymodels.get_model`), runs in eval mode on 2 random
inputs of 32 px (AlexNet 64 px; the 1-channel user module 40 x 56), so these tests need no download.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anymodels import get_images, get_model
from torch import nn

from unitscope.data.manifest import build_manifest, folder_layout, read_manifest, write_manifest
from unitscope.hooks import ActivationRecorder
from unitscope.interventions.errors import InterventionError
from unitscope.interventions.tail import build_tail, condition_outputs, hooked_condition, layer_cache
from unitscope.models.cifar_resnet import cifar_resnet20

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py
CIFAR_PRE = {"resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# (model, layer, path, pool_first): per architecture its last conv block and a middle layer; "rerun" where a
# skip or branch crosses the layer. pool_first wherever the global average pool directly follows the layer.
CASES = [
    ("mobilenet_v2", "features.18", "exact", True),  # functional adaptive_avg_pool2d + flatten
    ("mobilenet_v2", "features.15.conv", "rerun", False),  # inside an inverted residual
    ("resnet50", "layer4", "exact", True),
    ("resnet50", "layer3.1.conv2", "rerun", False),  # inside a bottleneck
    ("densenet121", "features", "exact", False),  # F.relu before the functional pool
    ("densenet121", "features.denseblock2.denselayer3", "rerun", False),  # its output is concatenated with earlier
    ("googlenet", "inception5b", "exact", True),
    ("googlenet", "inception4c.branch2", "rerun", False),  # one branch of four, concatenated
    ("alexnet", "features", "exact", False),  # 6x6 pool: pooled features are the classifier's input
    ("alexnet", "features.5", "exact", False),
    ("vgg11_bn", "features", "exact", False),  # 7x7 pool
    ("vgg11_bn", "features.10", "exact", False),  # a plain chain
    ("squeezenet1_1", "features", "exact", False),  # conv classifier: pooled features are the logits
    ("squeezenet1_1", "features.3.expand1x1", "rerun", False),  # one of the Fire module's two branches
    ("efficientnet_b0", "features", "exact", True),
    ("efficientnet_b0", "features.5.1.block", "rerun", False),
    ("mobilenet_v3_small", "features", "exact", True),  # non-linear head (two Linears)
    ("mobilenet_v3_small", "features.6.block", "rerun", False),
    ("regnet_y_400mf", "trunk_output", "exact", True),
    ("regnet_y_400mf", "trunk_output.block2", "exact", False),  # between stages
    ("convnext_tiny", "features", "exact", True),  # LayerNorm2d head on the [N, C, 1, 1] pool
    ("convnext_tiny", "features.5.3.block", "rerun", False),  # inside a CNBlock (layer scale + residual)
    ("timm_resnet18", "layer4", "exact", True),  # timm's SelectAdaptivePool2d
    ("timm_resnet18", "layer2.0.downsample", "rerun", False),  # the shortcut (its residual branch is zero-init)
    ("tiny_gray", "relu2", "exact", True),  # the user's 1-channel, 40 x 56 module
    ("tiny_gray", "conv1", "exact", False),
    ("tiny_gray_shared", "relu1", "rerun", False),  # one ReLU module called twice
    ("tiny_gray_branchy", "conv2", "rerun", False),  # torch.fx cannot trace it
]
# run numerically (forward passes cost seconds on a shared CPU): every path and family of head, every kind of
# crossing, functional pooling, the 1-channel module; the rest of CASES checks only its path (no weights needed)
NUMERIC = [
    *[case for case in CASES if case[0] in ("mobilenet_v2", "timm_resnet18", "tiny_gray")],
    ("densenet121", "features.denseblock2.denselayer3", "rerun", False),
    ("googlenet", "inception4c.branch2", "rerun", False),
    ("alexnet", "features", "exact", False),
    ("squeezenet1_1", "features", "exact", False),
    ("mobilenet_v3_small", "features", "exact", True),
    ("tiny_gray_branchy", "conv2", "rerun", False),
]
LINEAR_HEAD = {"mobilenet_v2", "resnet50", "densenet121", "googlenet", "efficientnet_b0", "regnet_y_400mf"}
LINEAR_HEAD |= {"timm_resnet18", "tiny_gray"}  # (Dropout, flatten, then one Linear: logits from changed channels)


def ids(cases):
    return [f"{key}-{layer}" for key, layer, *_ in cases]


def layer_outputs(model, layer, images):
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        with torch.inference_mode():
            rec(images)
    return rec.maps[layer], rec.means[layer]


def random_conditions(n_channels: int, seed: int = 0) -> torch.Tensor:
    """[2, C]: intact, and about half of the channels ablated."""
    ablate = torch.rand(n_channels, generator=torch.Generator().manual_seed(seed)) < 0.5
    return torch.stack([torch.zeros_like(ablate), ablate])


@pytest.mark.parametrize(("key", "layer", "path", "pool_first"), CASES, ids=ids(CASES))
def test_the_path_and_pool_first_on_every_architecture(key, layer, path, pool_first):
    tail = build_tail(get_model(key, "meta"), layer, key)
    assert ("rerun" if tail.rerun else "exact") == path, tail.path
    assert tail.pool_first is pool_first, tail.path
    assert (tail.affine is not None) is (path == "exact" and key in LINEAR_HEAD), tail.path


@pytest.mark.parametrize(("key", "layer", "path", "pool_first"), NUMERIC, ids=ids(NUMERIC))
def test_tail_equals_the_model_and_the_hooked_reference(key, layer, path, pool_first):
    model, images = get_model(key), get_images(key)
    tail = build_tail(model, layer, key)
    maps, means = layer_outputs(model, layer, images)
    cache = images if tail.rerun else means if tail.pool_first else maps
    before = cache.clone()
    ablate, fill = random_conditions(means.shape[1]), means.mean(dim=0)  # mean ablation: fill is not 0
    [(_, pooled, logits)] = list(condition_outputs(tail, cache, ablate, fill))
    torch.testing.assert_close(cache, before, rtol=0, atol=0)  # the tail overwrote nothing in place
    with torch.inference_mode():
        torch.testing.assert_close(logits[0], model(images), rtol=1e-4, atol=1e-4)  # intact = the model
    reference_pooled, reference_logits = hooked_condition(model, tail, images, ablate[1], fill)
    torch.testing.assert_close(pooled[1], reference_pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1], reference_logits, rtol=1e-4, atol=1e-4)
    assert not torch.equal(pooled[1], pooled[0])  # the ablation reached the pooled features


def test_a_layer_run_twice_is_re_run_with_every_call_masked():
    """One ReLU module called after conv1 and after conv2: each call's output is masked, in every re-run."""
    model, images = get_model("tiny_gray_shared"), get_images("tiny_gray_shared", n=3)
    tail = build_tail(model, "relu1", "tiny_gray_shared")
    ablate = torch.stack([torch.zeros(8, dtype=torch.bool), torch.arange(8) < 3, torch.arange(8) % 2 == 0])
    fill = torch.linspace(-1, 1, 8)
    [(_, pooled, logits)] = list(condition_outputs(tail, images, ablate, fill))

    def masked(x, k):
        return torch.where(ablate[k].view(1, -1, 1, 1), fill.view(1, -1, 1, 1), x)

    with torch.inference_mode():
        for k in range(3):
            x = model.pool(masked(model.relu1(model.conv1(images)), k))
            expected = torch.flatten(model.gap(masked(model.relu1(model.conv2(x)), k)), 1)
            torch.testing.assert_close(pooled[k], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(logits[k], model.fc(expected), rtol=1e-5, atol=1e-6)


def test_a_head_that_writes_in_place_leaves_the_pooled_features_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.ReLU(inplace=True), nn.Linear(6, 3)
    )
    model.eval().requires_grad_(False)
    images = get_images("tiny_gray")
    tail = build_tail(model, "0", "sequential")
    assert tail.pool_first and tail.pooled_at == (("2",), "output")  # not the input of the in-place ReLU
    means = layer_outputs(model, "0", images)[1]
    ablate = random_conditions(6)
    [(_, pooled, logits)] = list(condition_outputs(tail, means, ablate, torch.zeros(6)))
    assert (pooled < 0).any()  # what the ReLU would have overwritten
    for k in (0, 1):
        reference_pooled, reference_logits = hooked_condition(model, tail, images, ablate[k], torch.zeros(6))
        torch.testing.assert_close(pooled[k], reference_pooled, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[k], reference_logits, rtol=1e-5, atol=1e-6)


def test_pooled_features_follow_the_module_docstring():
    """Global pool flattened where there is one, else the classifier's input, else the logits."""
    assert build_tail(get_model("resnet50", "meta"), "layer3", "resnet50").pooled_at == (("fc",), "input")
    assert build_tail(get_model("alexnet", "meta"), "features", "alexnet").pooled_at == (("classifier.0",), "output")
    assert build_tail(get_model("vgg11_bn", "meta"), "features", "vgg11_bn").pooled_at == (("classifier.0",), "input")
    assert build_tail(get_model("squeezenet1_1", "meta"), "features", "squeezenet").pooled_at == (
        ("classifier.3",),
        "output",
    )
    branchy = build_tail(get_model("tiny_gray_branchy", "meta"), "conv1", "tiny")
    assert branchy.rerun and branchy.pooled_at == (("fc",), "input")  # the first Linear after the layer


def test_rerun_chunks_over_conditions_and_images_give_the_same_numbers():
    model, images = get_model("tiny_gray_branchy"), get_images("tiny_gray_branchy", n=3)
    tail = build_tail(model, "conv1", "tiny_gray_branchy")
    ablate = torch.cat([random_conditions(8, seed=2), random_conditions(8, seed=3)[1:]])
    fill = torch.zeros(8)
    whole = list(condition_outputs(tail, images, ablate, fill))
    pieces = list(condition_outputs(tail, images, ablate, fill, chunk_bytes=1))  # one image of one condition a step
    assert len(whole) == 1 and len(pieces) == 3
    torch.testing.assert_close(torch.cat([p[2] for p in pieces]), whole[0][2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces]), whole[0][1], rtol=1e-5, atol=1e-6)
    for k in range(3):
        reference_pooled, reference_logits = hooked_condition(model, tail, images, ablate[k], fill)
        torch.testing.assert_close(whole[0][1][k], reference_pooled, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole[0][2][k], reference_logits, rtol=1e-5, atol=1e-6)


def test_the_path_taken_is_one_line_in_the_log(capsys):
    build_tail(get_model("resnet50", "meta"), "layer3.1.conv2", "resnet50")
    build_tail(get_model("mobilenet_v2", "meta"), "features.18", "mobilenet_v2")
    build_tail(get_model("tiny_gray_branchy", "meta"), "conv2", "tiny_gray")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "resnet50" in lines[0] and "hooked full re-runs" in lines[0] and "crosses the layer" in lines[0]
    assert "exact tail" in lines[1] and "global average pool first" in lines[1] and "linear head" in lines[1]
    assert "torch.fx cannot trace TinyGray" in lines[2]


def test_a_layer_the_logits_do_not_depend_on_or_at_the_output_is_a_one_line_error():
    with pytest.raises(InterventionError, match=r"cannot intervene at layer 'classifier'") as err:
        build_tail(get_model("mobilenet_v2", "meta"), "classifier", "mobilenet_v2")
    assert "\n" not in str(err.value)
    with pytest.raises(InterventionError, match=r"does not depend on layer 'aux1'"):  # built but unused in eval
        build_tail(get_googlenet_with_aux(), "aux1", "googlenet")


def get_googlenet_with_aux():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    return model.eval().requires_grad_(False)


def _datasets(manifests):
    from unitscope.data.manifest import ManifestDataset
    from unitscope.models.preprocessing import build_transform

    return [ManifestDataset(read_manifest(path), build_transform(CIFAR_PRE)) for path in manifests.values()]


def test_layer_cache_keeps_the_images_for_re_runs(tmp_path, data_dir):
    """On real images (4 faces, 2 scenes, 2 objects) through a random-weight CIFAR ResNet-20, at a layer inside a
    residual block: the cache is the preprocessed images in the stores' order, the means the stores' (the layer's)."""
    import yaml
    from conftest import REPO

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    manifests = {}
    for name, size in {"faces": 4, "scenes": 2, "objects": 2}.items():
        spec = config["datasets"][name]
        manifests[name] = str(tmp_path / f"{name}.parquet")
        layout = folder_layout(name, spec["source"], data_dir)
        write_manifest(build_manifest(name, spec["category"], layout, size, 0), manifests[name])
    ids = [image_id for path in manifests.values() for image_id in read_manifest(path)["image_id"]]
    torch.manual_seed(0)
    model = cifar_resnet20().eval().requires_grad_(False)
    tail = build_tail(model, "layer2.1.conv1", "resnet20_cifar")
    pixels = torch.cat([torch.stack([d[i][0] for i in range(len(d))]) for d in _datasets(manifests)])
    stored = layer_outputs(model, "layer2.1.conv1", pixels)[1].numpy()  # what extraction stores for these images
    ids = np.asarray(ids, dtype=object)
    images, means = layer_cache(model, tail, stored, ids, manifests, CIFAR_PRE, batch_size=3)  # the model is not run
    assert tail.rerun and list(images.shape) == [8, 3, 32, 32]
    torch.testing.assert_close(means, layer_outputs(model, "layer2.1.conv1", images)[1])
    ablate, fill = random_conditions(32), means.mean(0)
    [(_, pooled, logits)] = list(condition_outputs(tail, images, ablate, fill))
    torch.testing.assert_close(logits[1], hooked_condition(model, tail, images, ablate[1], fill)[1])
    with pytest.raises(InterventionError, match="differ from those of the stores"):
        layer_cache(model, tail, stored, ids[::-1], manifests, CIFAR_PRE)
