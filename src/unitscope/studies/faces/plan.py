"""Per-architecture defaults of the faces study: which layer to select and intervene on, and which
layers to probe. Pure Python (no torch), so rule files can resolve `faces.layer: null` at parse time.
"""

from __future__ import annotations

from unitscope.errors import UnitscopeError

# arch -> (intervention layer: the last conv block, probe layers: stem/stage outputs at five depths)
ARCH_DEFAULTS: dict[str, tuple[str, list[str]]] = {
    "torchvision.mobilenet_v2": (
        "features.18",
        ["features.3", "features.6", "features.13", "features.16", "features.18"],
    ),
    "torchvision.resnet18": ("layer4", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
    "toponet_resnet18": ("layer4", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
    "cifar_resnet20": ("layer3", ["relu", "layer1", "layer2", "layer3.0", "layer3"]),
    "cifar_resnet56": ("layer3", ["relu", "layer1", "layer2", "layer3.0", "layer3"]),
}


class FacesConfigError(UnitscopeError, ValueError):
    """The faces study's settings do not fit the rest of the config; one line naming the key."""


def _arch(settings: dict, models: dict) -> str:
    name = settings["model"]
    if name not in models:
        raise FacesConfigError(f"config key faces.model: unknown model {name!r} (models: {', '.join(models)})")
    if not models[name].get("enabled", True):
        raise FacesConfigError(f"config key faces.model: model {name!r} is disabled (models.{name}.enabled)")
    return models[name]["arch"]


def intervention_layer(settings: dict, models: dict) -> str:
    """`faces.layer`, or the architecture's last conv block when it is null."""
    arch = _arch(settings, models)
    if settings.get("layer"):
        return settings["layer"]
    if arch not in ARCH_DEFAULTS:
        raise FacesConfigError(f"config key faces.layer: no default layer for arch {arch!r}; set faces.layer")
    return ARCH_DEFAULTS[arch][0]


def probe_layers(settings: dict, models: dict) -> list[str]:
    """`faces.probe_layers`, or five depths of the architecture when it is null."""
    arch = _arch(settings, models)
    if settings.get("probe_layers"):
        return list(settings["probe_layers"])
    if arch not in ARCH_DEFAULTS:
        raise FacesConfigError(f"config key faces.probe_layers: no default for arch {arch!r}; list the layers")
    return list(ARCH_DEFAULTS[arch][1])


def check_datasets(settings: dict, datasets: dict) -> None:
    """The face set and every non-face set must be configured datasets, and distinct."""
    names = [settings["face_dataset"], *settings["nonface_datasets"]]
    keys = ["face_dataset"] + ["nonface_datasets"] * len(settings["nonface_datasets"])
    for key, name in zip(keys, names, strict=True):
        if name not in datasets:
            raise FacesConfigError(
                f"config key faces.{key}: unknown dataset {name!r} (datasets: {', '.join(datasets)})"
            )
    if len(set(names)) != len(names):
        raise FacesConfigError(f"config key faces.nonface_datasets: {names} repeats a dataset (or names the face set)")
