"""The `dissection` config section, read by rules/dissection.smk at parse time (so: no torch here).

Checks what the schema cannot (targets name enabled models; the rotation layer is among them or
its model is known), lists the inputs each rule depends on, and builds each rule's settings: frozen
dataclasses holding exactly the settings that change that rule's results (`dissection.batch_size` is
run-only: no rule gets it). Errors are one line naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from unitscope.config import ConfigError
from unitscope.settings import Settings


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


# ------------------------------------------------------------------------------------------------
# each rule's settings


@dataclasses.dataclass(frozen=True)
class ConceptSource(Settings):
    """Where the concept images and labels come from: the `dissection.concepts` section (`spec`), the folder
    relative roots resolve in (`data_dir`) and where a downloaded archive goes (`resources_dir`)."""

    spec: dict
    data_dir: str
    resources_dir: str

    @classmethod
    def from_config(cls, config: Mapping) -> ConceptSource:
        return cls(
            spec=dict(config["dissection"]["concepts"]),
            data_dir=os.path.normpath(config["data_dir"]),
            resources_dir=config["resources_dir"],
        )


@dataclasses.dataclass(frozen=True)
class DissectSettings(Settings):
    """dissection_dissect, one model: its `layers` (in order of depth) against the concepts drawn with `seed`,
    masks of shorter side `mask_size` (None: the labels' own), unit thresholds at the top `quantile`, detectors
    above `iou_threshold`, and each unit's `top_images` top images kept for the figures."""

    concepts: ConceptSource
    layers: tuple[str, ...]
    mask_size: int | None
    quantile: float
    iou_threshold: float
    top_images: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping, model: str) -> DissectSettings:
        section = config["dissection"]
        [layers] = [target["layers"] for target in section["targets"] if target["model"] == model]
        return cls(
            concepts=ConceptSource.from_config(config),
            layers=tuple(layers),
            mask_size=section["mask_size"],
            quantile=section["quantile"],
            iou_threshold=section["iou_threshold"],
            top_images=section["top_images"],
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class UnitFigureSettings(Settings):
    """dissection_figure_units: the concepts (drawn with `seed`) whose images are shown, the `figure_units` units
    per layer figure, and the `quantile` the captions name."""

    concepts: ConceptSource
    figure_units: int
    quantile: float
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> UnitFigureSettings:
        section = config["dissection"]
        return cls(
            concepts=ConceptSource.from_config(config),
            figure_units=section["figure_units"],
            quantile=section["quantile"],
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class RotationSettings(Settings):
    """dissection_rotation: the units of `layer` (of the model `dissection.rotation.model`, passed as a ModelRef)
    rotated by Q^alpha for each of `alphas` and `seeds` random rotations, each dissected with masks of shorter
    side `mask_size` (`dissection.rotation.mask_size`) and the study's `quantile` and `iou_threshold`."""

    concepts: ConceptSource
    layer: str
    alphas: tuple[float, ...]
    seeds: int
    mask_size: int | None
    quantile: float
    iou_threshold: float
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> RotationSettings:
        section, rotation = config["dissection"], config["dissection"]["rotation"]
        return cls(
            concepts=ConceptSource.from_config(config),
            layer=rotation["layer"],
            alphas=tuple(rotation["alphas"]),
            seeds=rotation["seeds"],
            mask_size=rotation["mask_size"],
            quantile=section["quantile"],
            iou_threshold=section["iou_threshold"],
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class SectionSettings(Settings):
    """dissection_section: what its words and summary name beyond its input tables: the concept source's `kind`,
    whether CamVid's `color_concepts` are on, `quantile`, `iou_threshold`, `top_images` (the unit figures'
    captions) and the rotation experiment's `rotation_mask_size` (None when the experiment is off)."""

    kind: str
    color_concepts: bool
    quantile: float
    iou_threshold: float
    top_images: int
    rotation_mask_size: int | None

    @classmethod
    def from_config(cls, config: Mapping) -> SectionSettings:
        section = config["dissection"]
        concepts, rotation = section["concepts"], section["rotation"]
        return cls(
            kind=concepts["kind"],
            color_concepts=concepts["kind"] == "camvid" and concepts.get("colors", True),
            quantile=section["quantile"],
            iou_threshold=section["iou_threshold"],
            top_images=section["top_images"],
            rotation_mask_size=rotation["mask_size"] if rotation["enabled"] else None,
        )


@dataclasses.dataclass(frozen=True)
class DissectionPlan:
    """Every rule's settings, built once from the validated config: `dissect` per model, `rotation` None when
    the rotation experiment is off. Not itself a rule's params."""

    dissect: dict[str, DissectSettings]
    figure_units: UnitFigureSettings
    rotation: RotationSettings | None
    section: SectionSettings


def dissection_plan(config: Mapping) -> DissectionPlan:
    """The settings of every dissection rule (the section checked first: a one-line ConfigError if wrong)."""
    targets = dissection_targets(config)
    rotation = config["dissection"]["rotation"]["enabled"]
    return DissectionPlan(
        dissect={model: DissectSettings.from_config(config, model) for model in targets},
        figure_units=UnitFigureSettings.from_config(config),
        rotation=RotationSettings.from_config(config) if rotation else None,
        section=SectionSettings.from_config(config),
    )
