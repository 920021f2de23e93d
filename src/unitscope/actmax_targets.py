"""Config helpers for rules/actmax.smk (no torch: imported at workflow parse time).

Kept out of the .smk file so it holds rules only, and unit-testable.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["registry_targets"]


def registry_targets(config: Mapping) -> dict[tuple[str, str], dict]:
    """`actmax.registry_targets` keyed by (model, layer), checked against the model registry.

    Empty when the study is disabled. An unknown or disabled model, or a (model, layer) listed twice, is a
    ValueError whose one-line message names the config key.
    """
    settings = config.get("actmax", {})
    if not settings.get("enabled", False):
        return {}
    targets: dict[tuple[str, str], dict] = {}
    models = config.get("models", {})
    for index, target in enumerate(settings.get("registry_targets", [])):
        where = f"config key actmax.registry_targets[{index}]"
        model = target["model"]
        if model not in models:
            raise ValueError(f"{where}.model: unknown model {model!r} (models: {', '.join(models)})")
        if not models[model].get("enabled", True):
            raise ValueError(f"{where}.model: model {model!r} is disabled (models.{model}.enabled)")
        key = (model, target["layer"])
        if key in targets:
            raise ValueError(f"{where}: {model} {target['layer']} is listed twice")
        targets[key] = dict(target)
    return targets
