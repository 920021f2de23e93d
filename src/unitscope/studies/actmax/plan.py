"""Parse time for rules/actmax.smk (no torch): each rule's settings as a frozen `Settings` object built once from
the validated config, and the registry targets checked against the model registry.

A rule gets only the settings that change its results, so a changed setting re-runs that rule and what depends on
it: the data (rho, colour target, seed), the training, the unit choice, the probe, the optimisation, the analysis,
each registry target and the report (the settings its text states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from unitscope.config import ConfigError
from unitscope.settings import Settings
from unitscope.studies.faces.plan import intervention_layer

__all__ = [
    "ActmaxPlan",
    "AnalysisSettings",
    "DatasetSettings",
    "InterpolationSettings",
    "OptimizationSettings",
    "ProbeSettings",
    "RegistryTarget",
    "ReportSettings",
    "TrainingSettings",
    "UnitSettings",
    "registry_targets",
]


@dataclasses.dataclass(frozen=True)
class DatasetSettings(Settings):
    """Rule actmax_dataset: Biased Colored-MNIST (`actmax.dataset`) and the top-level seed."""

    rho: float
    color_target: str
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> DatasetSettings:
        dataset = config["actmax"]["dataset"]
        return cls(rho=dataset["rho"], color_target=dataset["color_target"], seed=config["seed"])


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Settings):
    """Rule actmax_train: the CNN and its training (`actmax.training`), seeded by the top-level seed."""

    widths: tuple[int, ...]
    epochs: int
    lr: float
    batch_size: int
    train_images: int | None
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> TrainingSettings:
        training = config["actmax"]["training"]
        return cls(
            widths=tuple(training["widths"]),
            epochs=training["epochs"],
            lr=training["lr"],
            batch_size=training["batch_size"],
            train_images=training["train_images"],
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class UnitSettings(Settings):
    """Rule actmax_units: which units are visualised (`actmax.units`)."""

    layers: tuple[str, ...]
    channels_per_layer: int
    extra_channels: dict
    neurons_per_channel: int

    @classmethod
    def from_config(cls, config: Mapping) -> UnitSettings:
        units = config["actmax"]["units"]
        return cls(
            layers=tuple(units["layers"]),
            channels_per_layer=units["channels_per_layer"],
            extra_channels={layer: list(channels) for layer, channels in units["extra_channels"].items()},
            neurons_per_channel=units["neurons_per_channel"],
        )


@dataclasses.dataclass(frozen=True)
class ProbeSettings(Settings):
    """Rule actmax_probe: the colour/digit swap probe (`actmax.analysis.probe_groups`) and the top-level seed."""

    groups: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> ProbeSettings:
        return cls(groups=config["actmax"]["analysis"]["probe_groups"], seed=config["seed"])


@dataclasses.dataclass(frozen=True)
class OptimizationSettings(Settings):
    """Rule actmax_optimize (every layer): the activation maximisation runs (`actmax.optimization`)."""

    objectives: tuple[str, ...]
    seeds: int
    inits: tuple[str, ...]
    init_objectives: tuple[str, ...]
    steps: int
    lr: float
    snapshot_every: int
    topk: int
    class_weight: float
    regularisers: tuple[dict, ...]
    l2_center: float

    @classmethod
    def from_config(cls, config: Mapping) -> OptimizationSettings:
        optimization = config["actmax"]["optimization"]
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: optimization[key] for key in names}
        values["regularisers"] = tuple(dict(regulariser) for regulariser in optimization["regularisers"])
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclasses.dataclass(frozen=True)
class InterpolationSettings(Settings):
    """The interpolation check of the analysis: how many units per layer, the mixing weights, and the
    re-optimisation (its steps; lr, topk and l2_center as in the optimisation)."""

    units: int
    alphas: tuple[float, ...]
    steps: int
    lr: float
    topk: int
    l2_center: float

    @classmethod
    def from_config(cls, config: Mapping) -> InterpolationSettings:
        analysis, optimization = config["actmax"]["analysis"], config["actmax"]["optimization"]
        return cls(
            units=analysis["interpolation_units"],
            alphas=tuple(analysis["interpolation_alphas"]),
            steps=analysis["interpolation_steps"],
            lr=optimization["lr"],
            topk=optimization["topk"],
            l2_center=optimization["l2_center"],
        )


@dataclasses.dataclass(frozen=True)
class AnalysisSettings(Settings):
    """Rule actmax_analyze: image metrics, polysemanticity (`actmax.analysis`), the interpolation check and the
    top-level seed (the colour-vs-shape bootstrap)."""

    hue_bins: int
    flag_fraction: float
    converged_fraction: float
    interpolation: InterpolationSettings
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> AnalysisSettings:
        analysis = config["actmax"]["analysis"]
        return cls(
            hue_bins=analysis["hue_bins"],
            flag_fraction=analysis["flag_fraction"],
            converged_fraction=analysis["converged_fraction"],
            interpolation=InterpolationSettings.from_config(config),
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class RegistryTarget(Settings):
    """Rule actmax_registry (one per target): an `actmax.registry_targets` entry. A `from_faces` target also has
    `face_rule` (the faces selection rule whose order picks its channels) and `unit_layer` (the layer those
    channels belong to); both are None otherwise."""

    model: str
    layer: str
    channels: tuple[int, ...]
    from_faces: int
    objectives: tuple[str, ...]
    seeds: int
    steps: int
    lr: float
    parameterization: str
    l2: float
    tv: float
    face_rule: str | None = None
    unit_layer: str | None = None

    @classmethod
    def from_entry(cls, target: Mapping, **extra) -> RegistryTarget:
        names = {field.name for field in dataclasses.fields(cls)} - {"face_rule", "unit_layer"}
        values = {key: tuple(target[key]) if isinstance(target[key], list) else target[key] for key in names}
        return cls(**values, **extra)


@dataclasses.dataclass(frozen=True)
class ReportSettings(Settings):
    """Rule actmax_report: what the section shows (the layers and registry targets, in input order) and the
    settings its text states."""

    layers: tuple[str, ...]
    registry: tuple[tuple[str, str], ...]
    rho: float
    channels_per_layer: int
    neurons_per_channel: int
    seeds: int
    steps: int
    lr: float
    probe_groups: int
    flag_fraction: float
    converged_fraction: float
    interpolation_units: int
    interpolation_steps: int

    @classmethod
    def from_config(cls, config: Mapping) -> ReportSettings:
        actmax = config["actmax"]
        units, optimization, analysis = actmax["units"], actmax["optimization"], actmax["analysis"]
        return cls(
            layers=tuple(units["layers"]),
            registry=tuple(registry_targets(config)),
            rho=actmax["dataset"]["rho"],
            channels_per_layer=units["channels_per_layer"],
            neurons_per_channel=units["neurons_per_channel"],
            seeds=optimization["seeds"],
            steps=optimization["steps"],
            lr=optimization["lr"],
            probe_groups=analysis["probe_groups"],
            flag_fraction=analysis["flag_fraction"],
            converged_fraction=analysis["converged_fraction"],
            interpolation_units=analysis["interpolation_units"],
            interpolation_steps=analysis["interpolation_steps"],
        )


@dataclasses.dataclass(frozen=True)
class ActmaxPlan:
    """Every rule's settings, built once at parse time (rules/actmax.smk: `plan(ActmaxPlan.from_config, config)`);
    `registry` maps (model, layer) to its target."""

    dataset: DatasetSettings
    training: TrainingSettings
    units: UnitSettings
    probe: ProbeSettings
    optimization: OptimizationSettings
    analysis: AnalysisSettings
    registry: dict[tuple[str, str], RegistryTarget]
    report: ReportSettings

    @classmethod
    def from_config(cls, config: Mapping) -> ActmaxPlan:
        return cls(
            dataset=DatasetSettings.from_config(config),
            training=TrainingSettings.from_config(config),
            units=UnitSettings.from_config(config),
            probe=ProbeSettings.from_config(config),
            optimization=OptimizationSettings.from_config(config),
            analysis=AnalysisSettings.from_config(config),
            registry=registry_targets(config),
            report=ReportSettings.from_config(config),
        )


def registry_targets(config: Mapping) -> dict[tuple[str, str], RegistryTarget]:
    """`actmax.registry_targets` keyed by (model, layer), checked against the model registry.

    Empty when the study is disabled. An unknown or disabled model, or a (model, layer) listed twice, is a
    ConfigError whose one-line message names the config key. A `from_faces` target also gets `face_rule` and
    `unit_layer` from the faces study's settings (so they reach the stage, and its re-run check, as params).
    """
    settings = config.get("actmax", {})
    if not settings.get("enabled", False):
        return {}
    targets: dict[tuple[str, str], RegistryTarget] = {}
    models = config.get("models", {})
    for index, target in enumerate(settings.get("registry_targets", [])):
        where = f"config key actmax.registry_targets[{index}]"
        model = target["model"]
        if model not in models:
            raise ConfigError(f"{where}.model: unknown model {model!r} (models: {', '.join(models)})")
        if not models[model].get("enabled", True):
            raise ConfigError(f"{where}.model: model {model!r} is disabled (models.{model}.enabled)")
        key = (model, target["layer"])
        if key in targets:
            raise ConfigError(f"{where}: {model} {target['layer']} is listed twice")
        extra = {}
        if target.get("from_faces", 0):
            extra = _faces_source(config, where, model, target["layer"])
        elif not target.get("channels"):
            raise ConfigError(f"{where}: no channels to visualise (set channels, or from_faces for face channels)")
        targets[key] = RegistryTarget.from_entry(target, **extra)
    return targets


def _faces_source(config: Mapping, where: str, model: str, layer: str) -> dict:
    """from_faces needs the faces study on, on the same model, at its layer or a module inside it (e.g.
    features.18.1, the BatchNorm before features.18's ReLU6: same channels, and a gradient even where the
    rectified output is 0 on the start image). Returns what the stage needs to know of it: the selection rule
    whose order picks the channels, and the layer the channels belong to (their unit pages)."""
    faces = config.get("faces", {})
    if not faces.get("enabled", False):
        raise ConfigError(f"{where}.from_faces: the faces study is disabled (faces.enabled)")
    face_layer = intervention_layer(faces, config)
    inside = layer == face_layer or layer.startswith(f"{face_layer}.")
    if faces.get("model") != model or not inside:
        raise ConfigError(
            f"{where}.from_faces: the faces study selects channels of {faces.get('model')} {face_layer}; "
            f"the target must be that model at that layer or a module inside it, not {model} {layer}"
        )
    return {"face_rule": faces.get("selection", {}).get("use", "top_percentile"), "unit_layer": face_layer}
