"""Parse time (no torch): the faces study's settings, one frozen `Settings` per rule, built once from the validated
config. The model's graph (`unitscope.models.facts`, surveyed once and cached) resolves `faces.layer: null` and
`faces.probe_layers: null` here, so the rule file and the stages see the layer the study uses. Each rule gets only
the settings that change its results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from unitscope.errors import UnitscopeError
from unitscope.models.facts import model_facts
from unitscope.settings import Settings


class FacesConfigError(UnitscopeError, ValueError):
    """The faces study's settings do not fit the rest of the config; one line naming the key."""


def _check_model(settings: dict, models: Mapping) -> str:
    name = settings["model"]
    if name not in models:
        raise FacesConfigError(f"config key faces.model: unknown model {name!r} (models: {', '.join(models)})")
    if not models[name].get("enabled", True):
        raise FacesConfigError(f"config key faces.model: model {name!r} is disabled (models.{name}.enabled)")
    return name


def intervention_layer(settings: dict, config: Mapping) -> str:
    """`faces.layer`, or the model's last conv block (found from its graph: `unitscope.models.graph`) when null."""
    name = _check_model(settings, config["models"])
    if settings.get("layer"):
        return settings["layer"]
    layer = model_facts(config, name)["last_block"]
    if not layer:
        raise FacesConfigError(f"config key faces.layer: model {name} has no layer with a 4-D output; set faces.layer")
    return layer


def probe_layers(settings: dict, config: Mapping) -> list[str]:
    """`faces.probe_layers`, or five depths of the model (stage ends found from its graph) when null."""
    name = _check_model(settings, config["models"])
    if settings.get("probe_layers"):
        return list(settings["probe_layers"])
    layers = model_facts(config, name)["probe_layers"]
    if not layers:
        raise FacesConfigError(f"config key faces.probe_layers: model {name} has no 4-D layers; list the layers")
    return list(layers)


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


# ---------------------------------------------------------------------------------------------- settings


def _datasets(config: Mapping) -> tuple[str, ...]:
    """The face set, then the non-face sets (checked against `datasets`): the order of every rule's stores."""
    faces = config["faces"]
    check_datasets(faces, config["datasets"])
    return (faces["face_dataset"], *faces["nonface_datasets"])


def _layer(config: Mapping) -> str:
    return intervention_layer(config["faces"], config)


class _ByDataset:
    """For settings with `datasets` (face set first): the face set, and paths keyed by dataset."""

    datasets: tuple[str, ...]

    @property
    def face_dataset(self) -> str:
        return self.datasets[0]

    def by_dataset(self, paths: Sequence[str]) -> dict[str, str]:
        """{dataset: path} of paths given in `datasets` order (a rule's stores or manifests)."""
        return dict(zip(self.datasets, paths, strict=True))


@dataclasses.dataclass(frozen=True)
class SelectionSettings(_ByDataset, Settings):
    """faces_selection: both selection rules over the channels of `layer`."""

    layer: str
    datasets: tuple[str, ...]
    percentile: float
    fdr: float

    @classmethod
    def from_config(cls, config: Mapping) -> SelectionSettings:
        datasets, layer, selection = _datasets(config), _layer(config), config["faces"]["selection"]
        return cls(layer=layer, datasets=datasets, percentile=selection["percentile"], fdr=selection["fdr"])


@dataclasses.dataclass(frozen=True)
class PcaSettings(Settings):
    """faces_pca: PCA of the faces' channel means at `layer`; components reported at each of `levels`."""

    layer: str
    levels: tuple[float, ...]

    @classmethod
    def from_config(cls, config: Mapping) -> PcaSettings:
        return cls(layer=_layer(config), levels=tuple(config["faces"]["pca_levels"]))


@dataclasses.dataclass(frozen=True)
class InterventionSettings(_ByDataset, Settings):
    """faces_interventions: lesion / keep-only of the selected set (`rule`) and its controls, read out by probes
    (`folds`, `C`, `fixed_train_fraction`) and PCA (`pca_levels`). Not `interventions.alpha` (report only)."""

    layer: str
    datasets: tuple[str, ...]
    rule: str
    ablation: str
    n_random: int
    n_matched: int
    matched_candidates: int
    folds: int
    C: float
    fixed_train_fraction: float
    pca_levels: tuple[float, ...]
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> InterventionSettings:
        faces = config["faces"]
        datasets, layer, draws, probe = _datasets(config), _layer(config), faces["interventions"], faces["probe"]
        return cls(
            layer=layer,
            datasets=datasets,
            rule=faces["selection"]["use"],
            ablation=draws["ablation"],
            n_random=draws["n_random"],
            n_matched=draws["n_matched"],
            matched_candidates=draws["matched_candidates"],
            folds=probe["folds"],
            C=probe["C"],
            fixed_train_fraction=probe["fixed_train_fraction"],
            pca_levels=tuple(faces["pca_levels"]),
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class ProbeSettings(_ByDataset, Settings):
    """faces_probes: a cross-validated face-vs-non-face probe on each of `layers`."""

    layers: tuple[str, ...]
    datasets: tuple[str, ...]
    folds: int
    C: float
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> ProbeSettings:
        faces, datasets = config["faces"], _datasets(config)
        layers = tuple(probe_layers(faces, config))
        probe = faces["probe"]
        return cls(layers=layers, datasets=datasets, folds=probe["folds"], C=probe["C"], seed=config["seed"])

    def by_layer(self, paths: Sequence[str]) -> dict[str, dict[str, str]]:
        """{layer: {dataset: path}} of paths given layer by layer, each in `datasets` order."""
        if len(paths) != len(self.layers) * len(self.datasets):
            raise ValueError(f"{len(paths)} stores for {len(self.layers)} layers x {len(self.datasets)} datasets")
        size = len(self.datasets)
        return {layer: self.by_dataset(paths[i * size : (i + 1) * size]) for i, layer in enumerate(self.layers)}


@dataclasses.dataclass(frozen=True)
class CategorySettings(_ByDataset, Settings):
    """faces_categories: the selected set's (`rule`) activation per dataset with bootstrap intervals."""

    layer: str
    datasets: tuple[str, ...]
    rule: str
    n_bootstrap: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> CategorySettings:
        faces, datasets, layer = config["faces"], _datasets(config), _layer(config)
        rule = faces["selection"]["use"]
        return cls(layer=layer, datasets=datasets, rule=rule, n_bootstrap=faces["n_bootstrap"], seed=config["seed"])


@dataclasses.dataclass(frozen=True)
class HeatmapSettings(_ByDataset, Settings):
    """faces_heatmaps: maps of the first `n_channels` selected channels on `n_examples` images per dataset."""

    layer: str
    datasets: tuple[str, ...]
    rule: str
    n_examples: int
    n_channels: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> HeatmapSettings:
        faces, datasets, layer = config["faces"], _datasets(config), _layer(config)
        heatmaps = faces["heatmaps"]
        return cls(
            layer=layer,
            datasets=datasets,
            rule=faces["selection"]["use"],
            n_examples=heatmaps["n_examples"],
            n_channels=heatmaps["n_channels"],
            seed=config["seed"],
        )


@dataclasses.dataclass(frozen=True)
class SectionSettings(Settings):
    """faces_section: what the report states beyond the tables (the rule used, the selection thresholds, the
    level `alpha` at which an effect is called larger than its controls, the PCA levels, the face set)."""

    rule: str
    percentile: float
    fdr: float
    alpha: float
    pca_levels: tuple[float, ...]
    face_dataset: str

    @classmethod
    def from_config(cls, config: Mapping) -> SectionSettings:
        faces = config["faces"]
        return cls(
            rule=faces["selection"]["use"],
            percentile=faces["selection"]["percentile"],
            fdr=faces["selection"]["fdr"],
            alpha=faces["interventions"]["alpha"],
            pca_levels=tuple(faces["pca_levels"]),
            face_dataset=faces["face_dataset"],
        )


@dataclasses.dataclass(frozen=True)
class FacesPlan:
    """Every rule's settings, built once at parse time (rules/faces.smk), plus what the rules are wired with: the
    model's name, the selection layer, the probe layers and the datasets (face set first)."""

    model: str
    selection: SelectionSettings
    pca: PcaSettings
    interventions: InterventionSettings
    probes: ProbeSettings
    categories: CategorySettings
    heatmaps: HeatmapSettings
    section: SectionSettings

    @classmethod
    def from_config(cls, config: Mapping) -> FacesPlan:
        faces = config["faces"]
        check_datasets(faces, config["datasets"])  # the checks in the order their errors are reported
        intervention_layer(faces, config)
        probe_layers(faces, config)
        return cls(
            model=faces["model"],
            selection=SelectionSettings.from_config(config),
            pca=PcaSettings.from_config(config),
            interventions=InterventionSettings.from_config(config),
            probes=ProbeSettings.from_config(config),
            categories=CategorySettings.from_config(config),
            heatmaps=HeatmapSettings.from_config(config),
            section=SectionSettings.from_config(config),
        )

    @property
    def layer(self) -> str:
        return self.selection.layer

    @property
    def datasets(self) -> tuple[str, ...]:
        return self.selection.datasets

    @property
    def probe_layers(self) -> tuple[str, ...]:
        return self.probes.layers
