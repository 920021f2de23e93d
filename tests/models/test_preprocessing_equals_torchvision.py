"""The pipeline's own image transform (`unitscope.models.preprocessing`) gives exactly the tensors torchvision's
transforms gave before it (Resize antialiased, CenterCrop, ToTensor, Normalize), on real images of every dataset.

The transform is written out so that a job building no torchvision model never imports torchvision (which imports
torch._dynamo: about 4 s per job on this machine, issue 15); this test is what keeps the two identical."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from unitscope.models.preprocessing import build_transform
from unitscope.studies.dissection.caches import dissection_transform

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PREPROCESSINGS = [
    {"resize": 256, "crop": 224, **IMAGENET},  # MobileNetV2: upscaled faces and scenes, shorter side
    {"resize": 32, "crop": 32, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]},  # CIFAR: no resize
    {"resize": [40, 56], "crop": [36, 50], **IMAGENET},  # both sides given, non-square crop
    {"resize": 20, "crop": [28, 24], **IMAGENET},  # crop larger than the image: zero padding
    {"resize": 235, "crop": 224, "interpolation": "bicubic", **IMAGENET},  # timm-like, odd sizes
    {"resize": 28, "crop": 28, "mean": [0.1307], "std": [0.3081]},  # grayscale model
]
INTERPOLATION = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}


def torchvision_transform(preprocessing: dict):
    """The transform as it was built with torchvision's transforms (the reference)."""
    mode = "L" if len(preprocessing["mean"]) == 1 else "RGB"
    resize = preprocessing["resize"]
    crop = preprocessing["crop"]
    return transforms.Compose(
        [
            lambda image: image if image.mode == mode else image.convert(mode),
            transforms.Resize(
                resize, interpolation=INTERPOLATION[preprocessing.get("interpolation", "bilinear")], antialias=True
            ),
            transforms.CenterCrop(list(crop) if isinstance(crop, list) else [crop, crop]),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing["mean"], preprocessing["std"]),
        ]
    )


@pytest.fixture(scope="module")
def images(data_dir) -> list[Image.Image]:
    """Images of every shape and mode the datasets hold: faces (200 x 200 JPEG), scenes (150 x 150, some smaller),
    CIFAR-10 (32 x 32 PNG), CamVid frames (960 x 720), and a grayscale and a palette image."""
    paths = [
        *sorted((data_dir / "faces_utkface" / "images").iterdir())[:3],
        *sorted((data_dir / "scenes_intel" / "images").rglob("*.jpg"))[:3],
        *sorted((data_dir / "objects_cifar10" / "test").rglob("*.png"))[:3],
        *sorted((data_dir / "segmentation_camvid" / "images").iterdir())[:1],
    ]
    loaded = [Image.open(path) for path in paths]
    for image in loaded:
        image.load()
    return [*loaded, loaded[0].convert("L"), loaded[3].convert("P")]


@pytest.mark.parametrize("preprocessing", PREPROCESSINGS, ids=lambda p: f"{p['resize']}-{p['crop']}")
def test_model_transform_gives_torchvisions_tensors(images, preprocessing):
    ours, reference = build_transform(preprocessing), torchvision_transform(preprocessing)
    for image in images:
        expected = reference(image.copy())
        got = ours(image.copy())
        assert got.dtype == expected.dtype and got.shape == expected.shape, (image.size, image.mode)
        assert torch.equal(got, expected), (image.size, image.mode, (got - expected).abs().max())


@pytest.mark.parametrize("resize, channels", list(itertools.product([64, [48, 80]], [1, 3])))
def test_dissection_transform_gives_torchvisions_tensors(images, resize, channels):
    preprocessing = {"resize": resize, "crop": 32, "mean": [0.5] * channels, "std": [0.25] * channels}
    reference = transforms.Compose(
        [
            *([transforms.Grayscale(num_output_channels=1)] if channels == 1 else []),
            transforms.Resize(resize, antialias=True),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing["mean"], preprocessing["std"]),
        ]
    )
    ours = dissection_transform(preprocessing)
    for image in images[:-1]:  # the palette image is not a concept image (they are read as RGB)
        rgb = image.convert("RGB")
        assert torch.equal(ours(rgb.copy()), reference(rgb.copy())), (image.size, resize, channels)


def test_building_a_cifar_resnet_and_its_transform_imports_no_torchvision(tmp_path):
    """A fresh interpreter imports the model registry, builds ResNet-20 and its transform: torchvision and
    torch._dynamo stay unimported (a MobileNetV2 job still imports them: it needs torchvision's builder)."""
    import os
    import subprocess

    probe = (
        "import sys; import unitscope.models.registry; "
        "from unitscope.models.sources import build_architecture; build_architecture('r', {'arch': 'cifar_resnet20'}); "
        "from unitscope.models.preprocessing import build_transform; "
        "build_transform({'resize': 32, 'crop': 32, 'mean': [0.5] * 3, 'std': [0.5] * 3}); "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
