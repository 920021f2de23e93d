"""What the nefesi rules need at parse time: the configured targets, checked, and the file lists derived from them.

Imported by rules/nefesi.smk, so it must stay free of torch (dry runs and cluster submissions stay fast).
"""

from __future__ import annotations

import os

from unitscope.errors import UnitscopeError

REPORT_DIR = "results/report"


class NefesiConfigError(UnitscopeError, ValueError):
    """A nefesi setting names something that does not exist; the message is one line naming the key."""


class NefesiPlan:
    """The enabled nefesi targets ({model: target}) and the paths of their stages."""

    FIGURES = "results/report/figures/nefesi/{model}"
    UNITS = "results/report/figures/nefesi/units"

    def __init__(self, config: dict):
        self.settings = config.get("nefesi", {})
        self.models = config["models"]
        self.targets: dict[str, dict] = {}
        if not self.settings.get("enabled", False):
            return
        for index, target in enumerate(self.settings["targets"]):
            where = f"config key nefesi.targets[{index}]"
            model = target["model"]
            if model not in config["models"]:
                known = ", ".join(config["models"])
                raise NefesiConfigError(f"{where}.model: unknown model {model!r} (models: {known})")
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
            self.targets[model] = target

    def target(self, model: str) -> dict:
        if model not in self.targets:
            raise NefesiConfigError(f"nefesi has no target for model {model!r} (config key nefesi.targets)")
        return self.targets[model]

    def top_n(self, model: str) -> int:
        return self.target(model).get("top_n") or self.settings["top_n"]

    def label_names(self, model: str) -> dict:
        datasets = self.target(model)["datasets"]
        return {name: labels for name, labels in self.settings["label_names"].items() if name in datasets}

    def shallower(self, model: str, layer: str) -> str | None:
        """The analysed layer before `layer` (its hierarchical decomposition), None for the first."""
        layers = self.target(model)["layers"]
        if layer not in layers:
            raise NefesiConfigError(f"layer {layer!r} is not in nefesi.targets ({model}).layers {layers}")
        position = layers.index(layer)
        return layers[position - 1] if position else None

    def layer_files(self, model: str, name: str) -> list[str]:
        return [f"results/nefesi/{model}/{layer}/{name}" for layer in self.target(model)["layers"]]

    def decomposition_layer_file(self, model: str, name: str) -> str:
        return f"results/nefesi/{model}/{self.target(model)['decompose_layer']}/{name}"

    def decompositions(self, model: str, kind: str = "figure") -> list[str]:
        """Decomposed images: the first images_per_dataset of each dataset of the target (figures or records)."""
        target = self.target(model)
        if target.get("decompose_layer") is None:
            return []
        count = self.settings["decomposition"]["images_per_dataset"]
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

    def section_settings(self) -> dict:
        keys = ("top_n", "rotation_step", "class_coverage", "population_threshold", "color_selective_threshold")
        return {**{key: self.settings.get(key) for key in keys}, "order_by": self.settings.get("order_by")}


def _shown(path: str) -> str:
    """A figure's path as the report links it (relative to results/report/)."""
    return os.path.relpath(path, REPORT_DIR)
