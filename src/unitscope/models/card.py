"""The model card: a JSON-able description of a built model (weights, preprocessing, layers with
their output shapes, classes) and, given a labelled manifest, its top-1 accuracy with a Wilson interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.fsutil import write_text_atomic
from unitscope.hooks import hooked
from unitscope.models.errors import ModelError
from unitscope.models.preprocessing import build_transform, input_channels, input_size
from unitscope.models.registry import CIFAR10_CLASSES, build_model, imagenet_categories, summary_layers
from unitscope.models.weights import torchvision_weights
from unitscope.runtime import loader_workers, use_threads
from unitscope.stats import wilson_interval


def _classes(spec: Mapping, num_outputs: int | None) -> dict:
    arch = spec.get("arch", "")
    if arch.startswith("torchvision.") and spec.get("weights"):
        weights = torchvision_weights("?", arch.split(".", 1)[1], spec["weights"])
        names = list(weights.meta.get("categories") or [])
        return {"n": len(names), "source": f"torchvision {weights} meta['categories']", "names": names}
    if arch.startswith("cifar_resnet"):
        return {"n": 10, "source": "CIFAR-10 standard order", "names": list(CIFAR10_CLASSES)}
    if num_outputs == 1000:
        return {
            "n": 1000,
            "source": "ImageNet-1k standard order (torchvision categories)",
            "names": imagenet_categories(),
        }
    return {"n": num_outputs, "source": "unknown", "names": None}


def _layer_table(model: nn.Module, input_shape: list[int]) -> tuple[list[dict], int | None]:
    """One dummy forward with hooks: output shape [C, H, W] (or [F]) of each summary layer."""
    names = summary_layers(model)
    modules = dict(model.named_modules())
    shapes: dict[str, list[int] | None] = {}

    def hook_for(layer: str):
        def hook(_module, _inputs, output):
            if layer not in shapes:
                shapes[layer] = list(output.shape[1:]) if isinstance(output, torch.Tensor) else None

        return hook

    device = next(model.parameters()).device
    with hooked(model, {n: hook_for(n) for n in names}), torch.inference_mode():
        output = model(torch.zeros(1, *input_shape, device=device))
    table = [
        {
            "name": n,
            "type": type(modules[n]).__name__,
            "shape": shapes.get(n),
            "channels": shapes[n][0] if shapes.get(n) else None,
            "parameters": int(sum(p.numel() for p in modules[n].parameters())),
        }
        for n in names
    ]
    num_outputs = int(output.shape[1]) if isinstance(output, torch.Tensor) and output.ndim == 2 else None
    return table, num_outputs


def _evaluate(
    name: str,
    model: nn.Module,
    preprocessing: dict,
    manifest: pd.DataFrame,
    num_outputs,
    batch_size,
    device,
    num_workers,
) -> dict:
    for column in ("path", "label"):
        if column not in manifest.columns:
            raise ModelError(f"model {name}: eval manifest has no column {column!r}")
    if len(manifest) == 0:
        raise ModelError(f"model {name}: eval manifest has no images")
    values = []
    for value in manifest["label"]:
        try:
            values.append(int(str(value)))
        except ValueError:
            raise ModelError(f"model {name}: eval labels must be class indices, got {value!r}") from None
    labels = np.array(values, dtype=np.int64)
    if num_outputs is not None and (labels.min() < 0 or labels.max() >= num_outputs):
        raise ModelError(
            f"model {name}: eval labels span {labels.min()}..{labels.max()}, but the model has {num_outputs} outputs"
        )
    loader = torch.utils.data.DataLoader(
        ManifestDataset(manifest, build_transform(preprocessing)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=loader_workers(num_workers),  # only as the job's threads allow
    )
    predictions = np.full(len(manifest), -1, dtype=np.int64)
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    original = next(model.parameters()).device
    model.to(device)
    try:
        with torch.inference_mode():
            for images, index in loader:
                logits = model(images.to(device))
                predictions[index.numpy()] = logits.argmax(dim=1).cpu().numpy()
    finally:
        model.to(original)
    correct = int((predictions == labels).sum())
    n = len(labels)
    low, high = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "top1": correct / n,
        "ci95": [low, high],
        "interval": "Wilson score, 95%",
    }


def model_card(
    name: str,
    spec: dict,
    model: nn.Module,
    *,
    eval_manifest: pd.DataFrame | None = None,
    batch_size: int = 64,
    device="cpu",
    num_workers: int = 0,
) -> dict:
    """A JSON-able description of a built model: weights, preprocessing, layers with their output
    shapes, classes, and (given a labelled manifest) top-1 accuracy with a 95% Wilson interval.

    `eval_manifest` needs columns path and label (a class index, as a string or int); `top1` and
    `ci95` are fractions. `device` may be "auto" (CUDA when present); the model is moved back after.
    """
    preprocessing = dict(spec["preprocessing"])
    ckpt_info = getattr(model, "unitscope_checkpoint", None)  # set by build_model: the bytes it loaded
    input_shape = [input_channels(preprocessing), *input_size(preprocessing)]
    layers, num_outputs = _layer_table(model, input_shape)
    card = {
        "name": name,
        "arch": spec.get("arch"),
        "weights": spec.get("weights"),
        "checkpoint": dict(ckpt_info) if ckpt_info else None,
        "trusted": bool(spec.get("trusted", False)),
        "tau": spec.get("tau"),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "preprocessing": preprocessing,
        "input_shape": input_shape,
        "num_outputs": num_outputs,
        "classes": _classes(spec, num_outputs),
        "layers": layers,
        "eval": None,
    }
    if eval_manifest is not None:
        card["eval"] = {
            "dataset": (spec.get("eval") or {}).get("dataset"),
            **_evaluate(name, model, preprocessing, eval_manifest, num_outputs, batch_size, device, num_workers),
        }
    return card


def run_model_card(
    name: str,
    spec: dict,
    *,
    data_dir,
    torch_home,
    out_path,
    eval_manifest_path=None,
    threads: int = 1,
) -> dict:
    """The model stage: build `models.<name>`, write its card as JSON to `out_path` (atomically).

    With `eval_manifest_path` (a data-stage manifest of the entry's `eval.dataset`), the card
    reports top-1 accuracy on its included images. Runs on CPU with `threads` torch threads.
    """
    use_threads(threads)
    model = build_model(name, spec, data_dir=data_dir, torch_home=torch_home)
    manifest = read_manifest(eval_manifest_path) if eval_manifest_path else None
    card = model_card(name, spec, model, eval_manifest=manifest)
    write_text_atomic(out_path, json.dumps(card, indent=2) + "\n")
    evaluation = card["eval"]
    accuracy = f", top-1 {evaluation['top1']:.1%} on {evaluation['n']} images" if evaluation else ""
    print(f"model {name}: {card['arch']}, {card['parameters']:,} parameters{accuracy}", flush=True)
    return card
