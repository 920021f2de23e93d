"""The `dissection` config section, read by rules/dissection.smk at parse time (so: no torch here).

Checks what the schema cannot (targets name enabled models; the rotation layer is among them or
its model is known) and lists the inputs each rule depends on. Errors are one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

from unitscope.config import ConfigError


def check_dissection(config: dict) -> dict:
    """The validated `dissection` section (schema defaults already filled); a one-line ConfigError if wrong."""
    section = config.get("dissection", {})
    if not section.get("enabled", False):
        return section
    models = config.get("models", {})
    seen = set()
    for index, target in enumerate(section["targets"]):
        where = f"config key dissection.targets[{index}].model"
        name = target["model"]
        if name not in models:
            raise ConfigError(f"{where}: unknown model {name!r} (models: {', '.join(models)})")
        if not models[name].get("enabled", True):
            raise ConfigError(f"{where}: model {name!r} is disabled (models.{name}.enabled)")
        if name in seen:
            raise ConfigError(f"{where}: model {name!r} is listed twice; put all its layers in one target")
        seen.add(name)
        if len(set(target["layers"])) != len(target["layers"]):
            raise ConfigError(f"config key dissection.targets[{index}].layers: a layer is listed twice")
    rotation = section["rotation"]
    if rotation["enabled"]:
        name = rotation["model"]
        if name not in models or not models[name].get("enabled", True):
            raise ConfigError(
                f"config key dissection.rotation.model: {name!r} is not an enabled model (models: {', '.join(models)})"
            )
        if 0 not in rotation["alphas"]:
            raise ConfigError("config key dissection.rotation.alphas: must include 0 (the unrotated reference)")
    return section


def dissection_targets(config: dict) -> dict[str, list[str]]:
    """{model: [layers]} to dissect (empty when the study is disabled)."""
    section = check_dissection(config)
    if not section.get("enabled", False):
        return {}
    return {target["model"]: list(target["layers"]) for target in section["targets"]}


def concept_inputs(config: dict, data_dir: str | Path) -> list[str]:
    """Files whose change must re-run the dissection: the concept source's index file, when local."""
    source = config["dissection"]["concepts"]
    root = source.get("root")
    if not root:
        return []
    root = Path(root) if Path(root).is_absolute() else Path(data_dir) / root
    index = root / ("classes.csv" if source["kind"] == "camvid" else "index.csv")
    return [str(index)] if index.is_file() else []
