"""Where an architecture comes from: the registry entry's `arch` built with random weights (the weights are
`unitscope.models.weights`' business), and the preprocessing its source prescribes when the entry gives none.

    torchvision.<name>         any classification builder torchvision has (`torchvision.models.get_model`)
    timm.<name>                `timm.create_model` (timm is an optional extra: pip install 'unitscope[timm]')
    python:<module>:<factory>  a user's own nn.Module: `<factory>(**kwargs)` from <module>, found on
                               the entry's `python_path` (folders, relative to the working directory) or sys.path
    cifar_resnet20/56, toponet_resnet18   architectures shipped here

`kwargs` in the entry go to the builder (e.g. `num_classes: 10`). Importing a user's module runs its code, like
any Python file the user points to; their checkpoints still go through the safe loader.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Mapping

from torch import nn

from unitscope.models.cifar_resnet import cifar_resnet20, cifar_resnet56
from unitscope.models.errors import ModelError
from unitscope.models.python_source import on_path, python_folders, python_parts
from unitscope.models.toponet import toponet_resnet18

__all__ = ["LOCAL_ARCHS", "build_architecture", "source_preprocessing"]

LOCAL_ARCHS = {
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet56": cifar_resnet56,
    "toponet_resnet18": toponet_resnet18,
}


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def torchvision_builder(name: str, tv_arch: str):
    import torchvision  # local: importing torchvision imports torch._dynamo, seconds per job (issue 15)

    known = torchvision.models.list_models(module=torchvision.models)
    if tv_arch not in known:
        raise ModelError(
            f"model {name}: models.{name}.arch: torchvision has no classification model {tv_arch!r}"
            f"{_suggest(tv_arch, known)} ({len(known)} in torchvision.models.list_models())"
        )
    return torchvision.models.get_model_builder(tv_arch)


def _timm(name: str):
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"model {name}: arch timm.* needs timm: pip install -e '.[timm]' (the pinned optional extra)"
        ) from None
    return timm


def _build_timm(name: str, spec: Mapping) -> nn.Module:
    timm = _timm(name)
    timm_arch = spec["arch"].split(".", 1)[1]
    if not timm.is_model(timm_arch):
        hint = _suggest(timm_arch, timm.list_models())
        raise ModelError(f"model {name}: models.{name}.arch: timm has no model {timm_arch!r}{hint}")
    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("in_channels"):
        kwargs.setdefault("in_chans", int(spec["in_channels"]))
    return timm.create_model(timm_arch, pretrained=False, **kwargs)


def _build_python(name: str, spec: Mapping) -> nn.Module:
    module_name, factory_name = python_parts(name, spec["arch"])
    folders = python_folders(spec)
    with on_path(folders):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            where = ", ".join(str(f) for f in folders) or "sys.path (set models.<name>.python_path)"
            raise ModelError(f"model {name}: cannot import module {module_name!r} from {where} ({err})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = [n for n in vars(module) if not n.startswith("_")]
        raise ModelError(
            f"model {name}: module {module_name} ({module.__file__}) has no callable {factory_name!r}"
            f"{_suggest(factory_name, names)}"
        )
    model = factory(**dict(spec.get("kwargs") or {}))
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model {name}: {module_name}.{factory_name}() returned a {type(model).__name__}, expected an nn.Module"
        )
    return model


def build_architecture(name: str, spec: Mapping) -> nn.Module:
    """The entry's architecture with freshly initialised (random) weights, in train mode as built."""
    arch = spec.get("arch")
    if not arch:
        raise ModelError(f"model {name}: models.{name}.arch is not set")
    if arch.startswith("torchvision."):
        return torchvision_builder(name, arch.split(".", 1)[1])(weights=None, **dict(spec.get("kwargs") or {}))
    if arch.startswith("timm."):
        return _build_timm(name, spec)
    if arch.startswith("python:"):
        return _build_python(name, spec)
    if arch in LOCAL_ARCHS:
        return LOCAL_ARCHS[arch](**dict(spec.get("kwargs") or {}))
    valid = ", ".join([*LOCAL_ARCHS, "torchvision.<name>", "timm.<name>", "python:<module>:<factory>"])
    raise ModelError(f"model {name}: models.{name}.arch {arch!r} is not one of {valid}")


def _interpolation(value) -> str:
    text = str(getattr(value, "value", value)).lower()
    return "bicubic" if "bicubic" in text else "bilinear"


def source_preprocessing(name: str, spec: Mapping) -> dict | None:
    """The preprocessing the entry's source prescribes: torchvision weights' own transforms, or timm's pretrained
    config; None when the source says nothing (random torchvision weights, own modules, local archs)."""
    arch = spec.get("arch", "")
    if arch.startswith("torchvision.") and spec.get("weights"):
        from unitscope.models.weights import torchvision_weights

        tv = torchvision_weights(name, arch.split(".", 1)[1], spec["weights"]).transforms()
        return {
            "resize": int(tv.resize_size[0]),
            "crop": int(tv.crop_size[0]),
            "mean": [float(m) for m in tv.mean],
            "std": [float(s) for s in tv.std],
            "interpolation": _interpolation(tv.interpolation),
        }
    if arch.startswith("timm."):
        from unitscope.models.weights import timm_pretrained_name

        cfg = _timm(name).get_pretrained_cfg(timm_pretrained_name(spec))
        if cfg is None:
            return None
        channels, height, width = cfg.input_size
        mean, std = list(cfg.mean), list(cfg.std)
        if spec.get("in_channels") and int(spec["in_channels"]) != channels:
            channels = int(spec["in_channels"])
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        resize = [math.floor(height / cfg.crop_pct), math.floor(width / cfg.crop_pct)]  # timm's scale size
        return {
            "resize": resize[0] if height == width else resize,
            "crop": height if height == width else [height, width],
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "interpolation": _interpolation(cfg.interpolation),
        }
    return None
