"""Config helpers for rules/actmax.smk (no torch: imported at workflow parse time).

Kept out of the .smk file so it holds rules only, and unit-testable.
"""

from __future__ import annotations

from collections.abc import Mapping

from unitscope.studies.faces.plan import intervention_layer

__all__ = ["registry_targets"]


def registry_targets(config: Mapping) -> dict[tuple[str, str], dict]:
    """`actmax.registry_targets` keyed by (model, layer), checked against the model registry.

    Empty when the study is disabled. An unknown or disabled model, or a (model, layer) listed twice, is a
    ValueError whose one-line message names the config key. A `from_faces` target also gets `face_rule` and
    `unit_layer` from the faces study's settings (so they reach the stage, and its re-run check, as params).
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
        target = dict(target)
        if target.get("from_faces", 0):
            target.update(_faces_source(config, where, model, target["layer"]))
        elif not target.get("channels"):
            raise ValueError(f"{where}: no channels to visualise (set channels, or from_faces for face channels)")
        targets[key] = target
    return targets


def _faces_source(config: Mapping, where: str, model: str, layer: str) -> dict:
    """from_faces needs the faces study on, on the same model, at its layer or a module inside it (e.g.
    features.18.1, the BatchNorm before features.18's ReLU6: same channels, and a gradient even where the
    rectified output is 0 on the start image). Returns what the stage needs to know of it: the selection rule
    whose order picks the channels, and the layer the channels belong to (their unit pages)."""
    faces = config.get("faces", {})
    if not faces.get("enabled", False):
        raise ValueError(f"{where}.from_faces: the faces study is disabled (faces.enabled)")
    face_layer = intervention_layer(faces, config.get("models", {}))
    inside = layer == face_layer or layer.startswith(f"{face_layer}.")
    if faces.get("model") != model or not inside:
        raise ValueError(
            f"{where}.from_faces: the faces study selects channels of {faces.get('model')} {face_layer}; "
            f"the target must be that model at that layer or a module inside it, not {model} {layer}"
        )
    return {"face_rule": faces.get("selection", {}).get("use", "top_percentile"), "unit_layer": face_layer}
