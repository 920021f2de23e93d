"""What the nefesi rules need at parse time: the configured targets, checked, the settings each rule is given
(frozen `Settings`, built once from the validated config) and the file lists derived from them.

Imported by rules/nefesi.smk, so it must stay free of torch (dry runs and cluster submissions stay fast).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from unitscope.config import dataset_label_names
from unitscope.errors import UnitscopeError
from unitscope.settings import Settings

REPORT_DIR = "results/report"


class NefesiConfigError(UnitscopeError, ValueError):
    """A nefesi setting names something that does not exist; the message is one line naming the key."""


def _target(config: Mapping, model: str) -> dict:
    """The entry of nefesi.targets for `model`."""
    for target in config["nefesi"]["targets"]:
        if target["model"] == model:
            return target
    raise NefesiConfigError(f"nefesi has no target for model {model!r} (config key nefesi.targets)")


@dataclasses.dataclass(frozen=True)
class TopNSettings(Settings):
    """nefesi_top_n, per target model: the images searched (its datasets, the first `max_images` of each, classed
    by `class_by`, integer labels named by `label_names`), the layers, and the exemplars kept per channel."""

    datasets: tuple[str, ...]
    layers: tuple[str, ...]
    top_n: int
    max_images: int | None
    class_by: str
    label_names: dict

    @classmethod
    def from_config(cls, config: Mapping, model: str) -> TopNSettings:
        nefesi, target = config["nefesi"], _target(config, model)
        return cls(
            datasets=tuple(target["datasets"]),
            layers=tuple(target["layers"]),
            top_n=target.get("top_n") or nefesi["top_n"],
            max_images=target["max_images"],
            class_by=target["class_by"],
            label_names=dataset_label_names(config, target["datasets"]),
        )


@dataclasses.dataclass(frozen=True)
class LayerSettings(Settings):
    """nefesi_layer, per target layer: the layer, the analysed layer before it (its hierarchical decomposition;
    None for the first) and the settings of the probes and indexes (with which definition of the class index's
    scale and of the colour index's gray: nefesi.class_index_scale, nefesi.color_grey)."""

    layer: str
    shallower: str | None
    rotation_step: float
    class_coverage: float
    population_threshold: float
    color_name_share: float
    class_index_scale: str
    color_grey: str

    @classmethod
    def from_config(cls, config: Mapping, model: str, layer: str) -> LayerSettings:
        nefesi, layers = config["nefesi"], _target(config, model)["layers"]
        if layer not in layers:
            raise NefesiConfigError(f"layer {layer!r} is not in nefesi.targets ({model}).layers {layers}")
        position = layers.index(layer)
        return cls(
            layer=layer,
            shallower=layers[position - 1] if position else None,
            rotation_step=nefesi["rotation_step"],
            class_coverage=nefesi["class_coverage"],
            population_threshold=nefesi["population_threshold"],
            color_name_share=nefesi["color_name_share"],
            class_index_scale=nefesi["class_index_scale"],
            color_grey=nefesi["color_grey"],
        )


@dataclasses.dataclass(frozen=True)
class LayerFiguresSettings(Settings):
    """nefesi_layer_figures: the order of the NF grid and the channels shown per index."""

    order_by: str
    top_channels: int

    @classmethod
    def from_config(cls, config: Mapping) -> LayerFiguresSettings:
        return cls(order_by=config["nefesi"]["order_by"], top_channels=config["nefesi"]["top_channels"])


@dataclasses.dataclass(frozen=True)
class ModelFiguresSettings(Settings):
    """nefesi_model_figures, per target model: its layers (shallow to deep), the deep channel whose hierarchical
    decomposition is drawn (None: the one with the highest class index) and the children drawn per node."""

    layers: tuple[str, ...]
    hierarchy_channel: int | None
    children: int

    @classmethod
    def from_config(cls, config: Mapping, model: str) -> ModelFiguresSettings:
        target = _target(config, model)
        return cls(
            layers=tuple(target["layers"]),
            hierarchy_channel=target["hierarchy_channel"],
            children=config["nefesi"]["hierarchy"]["children"],
        )


@dataclasses.dataclass(frozen=True)
class DecompositionSettings(Settings):
    """nefesi_decomposition, per target model with a decompose_layer: the layer, the units kept per image and the
    most their fields may overlap."""

    layer: str
    channels: int
    max_overlap: float

    @classmethod
    def from_config(cls, config: Mapping, model: str) -> DecompositionSettings:
        layer, decomposition = _target(config, model).get("decompose_layer"), config["nefesi"]["decomposition"]
        if layer is None:
            raise NefesiConfigError(f"nefesi.targets ({model}).decompose_layer is null: no image decomposition")
        return cls(layer=layer, channels=decomposition["channels"], max_overlap=decomposition["max_overlap"])


@dataclasses.dataclass(frozen=True)
class SectionSettings(Settings):
    """nefesi_section: the settings the section states and records in summary.json (`recorded`; with the index
    definitions it states, class_index_scale and color_grey), the threshold of its color-selective share, and the
    exemplar crops shown beside each singled-out unit's NF."""

    top_n: int
    rotation_step: float
    class_coverage: float
    population_threshold: float
    class_index_scale: str
    color_grey: str
    color_selective_threshold: float
    order_by: str
    unit_exemplars: int

    @classmethod
    def from_config(cls, config: Mapping) -> SectionSettings:
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: config["nefesi"][name] for name in names})

    def recorded(self) -> dict:
        """The settings summary.json records (and the section's text states): all but `unit_exemplars`."""
        return {key: value for key, value in self.as_params().items() if key != "unit_exemplars"}


class NefesiPlan:
    """The enabled nefesi targets ({model: target}), the settings of each rule's jobs (built once, here) and the
    paths of their stages."""

    FIGURES = "results/report/figures/nefesi/{model}"
    UNITS = "results/report/figures/nefesi/units"

    def __init__(self, config: dict):
        self.nefesi = config.get("nefesi", {})
        self.models = config["models"]
        self.targets: dict[str, dict] = {}
        if self.nefesi.get("enabled", False):
            for index, target in enumerate(self.nefesi["targets"]):
                self._check(config, index, target)
                self.targets[target["model"]] = target
        self._top_n = {model: TopNSettings.from_config(config, model) for model in self.targets}
        self._layers = {
            (model, layer): LayerSettings.from_config(config, model, layer)
            for model, target in self.targets.items()
            for layer in target["layers"]
        }
        self._model_figures = {model: ModelFiguresSettings.from_config(config, model) for model in self.targets}
        self._decompositions = {
            model: DecompositionSettings.from_config(config, model)
            for model, target in self.targets.items()
            if target.get("decompose_layer") is not None
        }
        self.layer_figures_settings = LayerFiguresSettings.from_config(config)
        self.section_settings = SectionSettings.from_config(config)

    def _check(self, config: dict, index: int, target: dict) -> None:
        where = f"config key nefesi.targets[{index}]"
        model = target["model"]
        if model not in config["models"]:
            raise NefesiConfigError(f"{where}.model: unknown model {model!r} (models: {', '.join(config['models'])})")
        if not config["models"][model].get("enabled", True):
            raise NefesiConfigError(f"{where}.model: model {model!r} is disabled (models.{model}.enabled)")
        if model in self.targets:
            raise NefesiConfigError(f"{where}.model: model {model!r} is listed twice")
        for dataset in target["datasets"]:
            if dataset not in config["datasets"]:
                raise NefesiConfigError(
                    f"{where}.datasets: unknown dataset {dataset!r} (datasets: {', '.join(config['datasets'])})"
                )
        layers = target["layers"]
        if len(set(layers)) != len(layers):
            raise NefesiConfigError(f"{where}.layers: {layers} repeats a layer")
        if target.get("decompose_layer") is not None and target["decompose_layer"] not in layers:
            raise NefesiConfigError(
                f"{where}.decompose_layer: {target['decompose_layer']!r} is not one of its layers {layers}"
            )

    def target(self, model: str) -> dict:
        if model not in self.targets:
            raise NefesiConfigError(f"nefesi has no target for model {model!r} (config key nefesi.targets)")
        return self.targets[model]

    def top_n_settings(self, model: str) -> TopNSettings:
        self.target(model)
        return self._top_n[model]

    def layer_settings(self, model: str, layer: str) -> LayerSettings:
        layers = self.target(model)["layers"]
        if layer not in layers:
            raise NefesiConfigError(f"layer {layer!r} is not in nefesi.targets ({model}).layers {layers}")
        return self._layers[model, layer]

    def model_figures_settings(self, model: str) -> ModelFiguresSettings:
        self.target(model)
        return self._model_figures[model]

    def decomposition_settings(self, model: str) -> DecompositionSettings:
        if model not in self._decompositions:
            raise NefesiConfigError(f"nefesi.targets ({model}).decompose_layer is null: no image decomposition")
        return self._decompositions[model]

    def layer_files(self, model: str, name: str) -> list[str]:
        return [f"results/nefesi/{model}/{layer}/{name}" for layer in self.target(model)["layers"]]

    def decomposition_layer_file(self, model: str, name: str) -> str:
        return f"results/nefesi/{model}/{self.target(model)['decompose_layer']}/{name}"

    def decompositions(self, model: str, kind: str = "figure") -> list[str]:
        """Decomposed images: the first images_per_dataset of each dataset of the target (figures or records)."""
        target = self.target(model)
        if target.get("decompose_layer") is None:
            return []
        count = self.nefesi["decomposition"]["images_per_dataset"]
        pattern = {
            "figure": self.FIGURES + "/decomposition_{dataset}_{index}.png",
            "record": "results/nefesi/{model}/decomposition/{dataset}_{index}.json",
        }[kind]
        return [pattern.format(model=model, dataset=d, index=i) for d in target["datasets"] for i in range(count)]

    def all_files(self, name: str) -> list[str]:
        return [path for model in self.targets for path in self.layer_files(model, name)]

    def figures(self) -> list[str]:
        files = []
        for model, target in self.targets.items():
            folder = self.FIGURES.format(model=model)
            files += [f"{folder}/{layer}_{kind}.png" for kind in ("nf", "top") for layer in target["layers"]]
            files += [f"{folder}/histograms.png", f"{folder}/hierarchy.png", *self.decompositions(model)]
        return files

    def section_models(self) -> dict[str, dict]:
        """Per target, the files the section reads (figures relative to results/report/, as the report shows them)
        and the model's preprocessing (the unit figures cut their crops from the model's view of each image)."""
        return {model: self._section_files(model, target) for model, target in self.targets.items()}

    def _section_files(self, model: str, target: dict) -> dict:
        layers = list(target["layers"])
        folder = self.FIGURES.format(model=model)
        records = self.decompositions(model, "record")
        return {
            "layers": layers,
            "tables": self.layer_files(model, "indexes.parquet"),
            "infos": self.layer_files(model, "layer.json"),
            "nfs": self.layer_files(model, "nf.npz"),
            "tree": f"results/nefesi/{model}/hierarchy.json",
            "exemplars": f"results/nefesi/{model}/exemplars.parquet",
            "images": f"results/nefesi/{model}/images.parquet",
            "decompositions": records,
            "preprocessing": self.models[model]["preprocessing"],
            "figures": {
                "histograms": _shown(f"{folder}/histograms.png"),
                "hierarchy": _shown(f"{folder}/hierarchy.png"),
                "grids": {layer: _shown(f"{folder}/{layer}_nf.png") for layer in layers},
                "tops": {layer: _shown(f"{folder}/{layer}_top.png") for layer in layers},
                "decompositions": [_shown(path) for path in self.decompositions(model)],
            },
        }


def _shown(path: str) -> str:
    """A figure's path as the report links it (relative to results/report/)."""
    return os.path.relpath(path, REPORT_DIR)
