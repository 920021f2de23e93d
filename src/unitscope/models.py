"""Model stage: build a registry entry (`config.models.<name>`) into an eval-mode CPU model, its
image transform, layer lookup, and a JSON-able model card (with optional top-1 accuracy).

Two ways weights arrive:

- `torchvision.<arch>` with `weights`: torchvision's own builder and loader. The file is the
  local `checkpoint`, else `<torch_home>/hub/checkpoints/<file>` (a shared cache anyone may have
  written; downloaded there first when missing). torchvision unpickles it with
  `weights_only=False` and checks no hash of a cached file, so unitscope reads its bytes once and
  checks them (a `weights_only=True` read unless `trusted`, the registry's sha256, torchvision's
  hash prefix in the file name), then hands torchvision exactly those bytes in a private hub dir.
- `cifar_resnet20`, `cifar_resnet56`, `toponet_resnet18` (and `torchvision.<arch>` with only a
  checkpoint): the checkpoint is read with `torch.load(weights_only=True)` unless the entry is
  `trusted`, unwrapped ({'state_dict': ...}, `module.` / `_orig_mod.` prefixes) and matched key
  by key and shape by shape against the architecture before loading.

Every problem is a `ModelError` with a one-line message naming the model and the file or key.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
import torchvision
from torch import nn
from torchvision import transforms

from unitscope.cifar_resnet import cifar_resnet20, cifar_resnet56
from unitscope.data import ManifestDataset, read_manifest, resolve
from unitscope.errors import UnitscopeError
from unitscope.fsutil import write_text_atomic
from unitscope.toponet import toponet_resnet18

__all__ = [
    "CIFAR10_CLASSES",
    "LOCAL_ARCHS",
    "ModelError",
    "build_model",
    "build_transform",
    "imagenet_categories",
    "layer_names",
    "model_card",
    "resolve_layer",
    "run_model_card",
    "summary_layers",
    "wilson_interval",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

LOCAL_ARCHS = {
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet56": cifar_resnet56,
    "toponet_resnet18": toponet_resnet18,
}

# State-dict entries a checkpoint may lack: BatchNorm's counter (not saved by old torch) and
# TopoNet's fixed blur kernel (a constant the architecture recreates).
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked", "blur_filter")
STRIP_PREFIXES = ("module.", "_orig_mod.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
Z95 = 1.959963984540054
SHOW = 3  # mismatches listed per kind in an error message


class ModelError(UnitscopeError, ValueError):
    """A model entry, its checkpoint or a layer name is wrong; the message is one line."""


def _one_line(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shape(shape) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def _first(items: list[str], n: int = SHOW) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")


# ----------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_path(name: str, spec: Mapping, data_dir, *, required: bool) -> Path | None:
    value = spec.get("checkpoint")
    if not value:
        if required:
            raise ModelError(
                f"model {name}: models.{name}.checkpoint is not set; arch {spec.get('arch')} needs a checkpoint file"
            )
        return None
    path = resolve(value, data_dir)
    if not path.is_file():
        raise ModelError(f"model {name}: models.{name}.checkpoint: file {path} does not exist")
    return path.resolve()


def _read_bytes(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} ({type(err).__name__}: {err.strerror or err})"
        ) from None


def _check_sha256(name: str, spec: Mapping, path: Path, data: bytes) -> dict:
    """The card entry {path, sha256, bytes} of `path`'s bytes `data`; a mismatch with `models.<name>.sha256`
    is a ModelError.

    Callers read a file's bytes once, then check and load those bytes, never the file again: a file replaced
    after the check is never loaded.
    """
    actual = hashlib.sha256(data).hexdigest()
    expected = spec.get("sha256")
    if expected and actual != str(expected).lower():
        raise ModelError(
            f"model {name}: checkpoint {path} has sha256 {actual[:16]}…, but models.{name}.sha256 "
            f"expects {str(expected).lower()[:16]}… (wrong or corrupted file)"
        )
    return {"path": str(path), "sha256": actual, "bytes": len(data)}


def _read_checkpoint(name: str, path: Path, data: bytes, *, trusted: bool):
    """torch.load of `path`'s bytes `data` on CPU; weights_only=True unless trusted. Unreadable files become
    ModelErrors."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # a real pickle of some class: only a full (unsafe) unpickle can read it
            raise ModelError(
                f"model {name}: checkpoint {path} is refused by safe loading (weights_only=True): it pickles "
                f"{found.group(1)}; set models.{name}.trusted: true only if you trust this file"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
        how = "" if trusted else "; read with weights_only=True"
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} as a torch file "
            f"(UnpicklingError: {_one_line(detail.group(1) if detail else text, 150)}{how})"
        ) from None
    except Exception as err:  # truncated, not a torch file, wrong device...: one line, not a traceback
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} as a torch file "
            f"({type(err).__name__}: {_one_line(err, 150) or 'no detail'})"
        ) from None


def _state_dict(name: str, path: Path, obj) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint object into a flat {key: tensor} with DataParallel/compile prefixes stripped."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"model {name}: checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(
            f"model {name}: checkpoint {path} is not a state_dict: entries {_first(not_tensors)} are not tensors"
        )
    state = {}
    for key, value in obj.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        state[key] = value
    return state


def _load_into(name: str, arch: str, model: nn.Module, path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model` after checking every key and shape; mismatches are one ModelError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"shape {k} {_shape(expected[k].shape)} vs checkpoint {_shape(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if shapes:
        problems.append(
            "; ".join(shapes[:SHOW]) + (f"; … ({len(shapes)} shape mismatches)" if len(shapes) > SHOW else "")
        )
    if problems:
        raise ModelError(f"model {name}: checkpoint {path} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=False)


def _load_checkpoint(name: str, spec: Mapping, arch: str, model: nn.Module, path: Path) -> dict:
    """Check and load `path` into `model`; returns the card entry of the bytes loaded."""
    data = _read_bytes(name, path)
    info = _check_sha256(name, spec, path, data)
    obj = _read_checkpoint(name, path, data, trusted=bool(spec.get("trusted")))
    _load_into(name, arch, model, path, _state_dict(name, path, obj))
    return info


# ----------------------------------------------------------------------------------------------
# torchvision


def _torchvision_weights(name: str, tv_arch: str, weights_name: str):
    try:
        enum = torchvision.models.get_model_weights(tv_arch)
    except (ValueError, KeyError):
        raise ModelError(f"model {name}: torchvision has no weights for arch {tv_arch!r}") from None
    key = str(weights_name).rsplit(".", 1)[-1]
    try:
        return enum[key]
    except KeyError:
        valid = ", ".join([*enum.__members__.keys()])
        raise ModelError(f"model {name}: models.{name}.weights {weights_name!r} is not one of {valid}") from None


@contextlib.contextmanager
def _torch_home(torch_home) -> Iterator[Path]:
    """Point TORCH_HOME and torch.hub's directory at `torch_home` (restored afterwards)."""
    if torch_home is None:
        yield Path(torch.hub.get_dir())
        return
    torch_home = Path(torch_home).resolve()
    previous_env = os.environ.get("TORCH_HOME")
    previous_dir = getattr(torch.hub, "_hub_dir", None)  # None means "derived from TORCH_HOME"
    os.environ["TORCH_HOME"] = str(torch_home)
    torch.hub.set_dir(str(torch_home / "hub"))
    try:
        yield torch_home / "hub"
    finally:
        if previous_env is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous_env
        torch.hub._hub_dir = previous_dir


def _weights_file(name: str, spec: Mapping, weights, cached: Path) -> Path:
    """torchvision's file in the (shared) hub cache, downloaded there first when missing.

    torch.hub writes a download under a temporary name and renames it into place only once its hash
    matches; the bytes are verified again when read, since the shared cache may change at any time.
    """
    if cached.is_file():
        return cached
    prefix = torch.hub.HASH_REGEX.search(cached.name)
    expected = str(spec.get("sha256") or "").lower() or (prefix.group(1) if prefix else None)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=expected)
    except Exception as err:
        raise ModelError(
            f"model {name}: cannot download {weights} from {weights.url} to {cached} "
            f"({type(err).__name__}: {_one_line(err, 150)}); offline, set models.{name}.checkpoint "
            f"to a local copy of {cached.name}"
        ) from None
    return cached


def _verified_weights(name: str, spec: Mapping, weights, filename: str, path: Path) -> tuple[bytes, dict]:
    """`path`'s bytes (read once) and card entry, checked as torchvision's `weights` (file `filename`).

    Unless trusted, the bytes must pass a weights_only=True read, since torchvision unpickles them with
    weights_only=False (first, so that a planted file is reported by what it pickles). Trusted or not, the
    registry's sha256 and torchvision's hash prefix in `filename` must match.
    """
    data = _read_bytes(name, path)
    if not spec.get("trusted"):
        _state_dict(name, path, _read_checkpoint(name, path, data, trusted=False))
    info = _check_sha256(name, spec, path, data)
    prefix = torch.hub.HASH_REGEX.search(filename)
    if prefix and not info["sha256"].startswith(prefix.group(1)):
        raise ModelError(
            f"model {name}: checkpoint {path} is not torchvision's {weights} ({filename}): "
            f"its sha256 starts {info['sha256'][:8]}, torchvision expects {prefix.group(1)}"
        )
    return data, info


def _build_with_weights(name: str, builder, weights, filename: str, data: bytes) -> nn.Module:
    """torchvision's builder on exactly the verified `data`, staged in a private hub dir (removed afterwards)."""
    private = Path(tempfile.mkdtemp(prefix="unitscope-hub-"))  # mode 0700: nobody else can swap the file
    try:
        (private / "hub" / "checkpoints").mkdir(parents=True)
        (private / "hub" / "checkpoints" / filename).write_bytes(data)
        with _torch_home(private):
            return builder(weights=weights)
    except Exception as err:
        raise ModelError(
            f"model {name}: torchvision could not load {weights} ({type(err).__name__}: {_one_line(err, 150)})"
        ) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _build_torchvision(name: str, spec: Mapping, arch: str, data_dir, torch_home) -> tuple[nn.Module, dict]:
    """A torchvision model and the card entry of its checkpoint (the local file, or the hub cache's)."""
    tv_arch = arch.split(".", 1)[1]
    try:
        builder = torchvision.models.get_model_builder(tv_arch)
    except ValueError:
        raise ModelError(f"model {name}: models.{name}.arch: torchvision has no model {tv_arch!r}") from None
    checkpoint = _checkpoint_path(name, spec, data_dir, required=False)
    weights_name = spec.get("weights")
    if not weights_name:
        if checkpoint is None:
            raise ModelError(
                f"model {name}: arch {arch} needs models.{name}.weights (a torchvision weights name) "
                f"or models.{name}.checkpoint"
            )
        model = builder(weights=None)
        return model, _load_checkpoint(name, spec, arch, model, checkpoint)
    weights = _torchvision_weights(name, tv_arch, weights_name)
    filename = os.path.basename(urlparse(weights.url).path)
    if checkpoint is None:
        with _torch_home(torch_home) as hub_dir:
            checkpoint = _weights_file(name, spec, weights, hub_dir / "checkpoints" / filename)
    data, info = _verified_weights(name, spec, weights, filename, checkpoint)
    return _build_with_weights(name, builder, weights, filename, data), info


def build_model(name: str, spec: dict, *, data_dir, torch_home) -> nn.Module:
    """The registry entry `models.<name>` as an eval-mode CPU model with frozen parameters.

    `data_dir` resolves relative checkpoint paths; `torch_home` is the torch hub cache
    (TORCH_HOME) used by torchvision archs (None: torch's current default).
    """
    arch = spec.get("arch")
    if not arch:
        raise ModelError(f"model {name}: models.{name}.arch is not set")
    if arch.startswith("torchvision."):
        model, checkpoint = _build_torchvision(name, spec, arch, data_dir, torch_home)
    elif arch in LOCAL_ARCHS:
        path = _checkpoint_path(name, spec, data_dir, required=True)
        model = LOCAL_ARCHS[arch]()
        checkpoint = _load_checkpoint(name, spec, arch, model, path)
    else:
        valid = ", ".join([*LOCAL_ARCHS, "torchvision.<name>"])
        raise ModelError(f"model {name}: models.{name}.arch {arch!r} is not one of {valid}")
    model = model.to("cpu").eval()
    model.requires_grad_(False)
    model.unitscope_checkpoint = checkpoint  # {path, sha256, bytes} of the bytes loaded, for the card
    return model


# ----------------------------------------------------------------------------------------------
# transform, layers


def build_transform(preprocessing: dict):
    """Resize (shorter side, bilinear, antialiased) -> CenterCrop -> ToTensor -> Normalize."""
    missing = [k for k in ("resize", "crop", "mean", "std") if k not in preprocessing]
    if missing:
        raise ModelError(f"preprocessing: missing {', '.join(missing)} (needs resize, crop, mean, std)")
    return transforms.Compose(
        [
            transforms.Resize(
                int(preprocessing["resize"]),
                interpolation=transforms.InterpolationMode.BILINEAR,
                antialias=True,
            ),
            transforms.CenterCrop(int(preprocessing["crop"])),
            transforms.ToTensor(),
            transforms.Normalize([float(m) for m in preprocessing["mean"]], [float(s) for s in preprocessing["std"]]),
        ]
    )


def layer_names(model: nn.Module) -> list[str]:
    """Every module path (as in named_modules), without the root ''."""
    return [name for name, _ in model.named_modules() if name]


def summary_layers(model: nn.Module) -> list[str]:
    """The layers a user extracts: top-level modules and the children of top-level containers
    (`features.N`, `classifier.N` for MobileNetV2; `layerK`, `layerK.i`, `avgpool` for ResNets)."""
    names = []
    for top, module in model.named_children():
        names.append(top)
        if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            names.extend(f"{top}.{child}" for child, _ in module.named_children())
    return names


def resolve_layer(model: nn.Module, name: str, model_name: str) -> nn.Module:
    """The module at path `name`; an unknown name is a ModelError listing valid ones."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    everything = layer_names(model)
    close = difflib.get_close_matches(name, everything, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelError(
        f"model {model_name} has no layer {name!r}; {hint}valid layers include: "
        f"{_first(summary_layers(model), 40)} ({len(everything)} layers in all, any named_modules() path)"
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's (standard) order."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


# ----------------------------------------------------------------------------------------------
# model card


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _classes(spec: Mapping, num_outputs: int | None) -> dict:
    arch = spec.get("arch", "")
    if arch.startswith("torchvision.") and spec.get("weights"):
        weights = _torchvision_weights("?", arch.split(".", 1)[1], spec["weights"])
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


def _layer_table(model: nn.Module, crop: int) -> tuple[list[dict], int | None]:
    """One dummy forward with hooks: output shape [C, H, W] (or [F]) of each summary layer."""
    names = summary_layers(model)
    modules = dict(model.named_modules())
    shapes: dict[str, list[int] | None] = {}

    def hook_for(layer: str):
        def hook(_module, _inputs, output):
            if layer not in shapes:
                shapes[layer] = list(output.shape[1:]) if isinstance(output, torch.Tensor) else None

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            output = model(torch.zeros(1, 3, crop, crop, device=device))
    finally:
        for handle in handles:
            handle.remove()
    table = []
    for n in names:
        shape = shapes.get(n)
        table.append(
            {
                "name": n,
                "type": type(modules[n]).__name__,
                "shape": shape,
                "channels": shape[0] if shape else None,
                "parameters": int(sum(p.numel() for p in modules[n].parameters())),
            }
        )
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
        num_workers=num_workers,
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
    layers, num_outputs = _layer_table(model, int(preprocessing["crop"]))
    card = {
        "name": name,
        "arch": spec.get("arch"),
        "weights": spec.get("weights"),
        "checkpoint": dict(ckpt_info) if ckpt_info else None,
        "trusted": bool(spec.get("trusted", False)),
        "tau": spec.get("tau"),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "preprocessing": preprocessing,
        "input_shape": [3, int(preprocessing["crop"]), int(preprocessing["crop"])],
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
    torch.set_num_threads(max(1, int(threads)))
    model = build_model(name, spec, data_dir=data_dir, torch_home=torch_home)
    manifest = read_manifest(eval_manifest_path) if eval_manifest_path else None
    card = model_card(name, spec, model, eval_manifest=manifest)
    write_text_atomic(out_path, json.dumps(card, indent=2) + "\n")
    evaluation = card["eval"]
    accuracy = f", top-1 {evaluation['top1']:.1%} on {evaluation['n']} images" if evaluation else ""
    print(f"model {name}: {card['arch']}, {card['parameters']:,} parameters{accuracy}", flush=True)
    return card
