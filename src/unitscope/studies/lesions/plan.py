"""Parse time (no torch): the lesions study's settings, one frozen `Settings` per rule, built once from the validated
config and checked against it: the class units' model, layer and labelled dataset exist, and nefesi analyses
that layer (the selectivity comes from its exemplars)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from unitscope.errors import UnitscopeError
from unitscope.settings import Settings
from unitscope.studies.actmax.plan import registry_targets
from unitscope.studies.atlas.plan import target_actmax
from unitscope.studies.dissection.plan import ConceptSource


class LesionsConfigError(UnitscopeError, ValueError):
    """The lesions study's settings do not fit the rest of the config; one line naming the key."""


def check_class_units(config: Mapping) -> None:
    """lesions.class_units names an enabled model, a dataset, and a layer nefesi analyses for that model."""
    spec, key = config["lesions"]["class_units"], "config key lesions.class_units"
    if spec["model"] not in config["models"]:
        raise LesionsConfigError(
            f"{key}.model: unknown model {spec['model']!r} (models: {', '.join(config['models'])})"
        )
    if not config["models"][spec["model"]].get("enabled", True):
        raise LesionsConfigError(f"{key}.model: model {spec['model']!r} is disabled (models.{spec['model']}.enabled)")
    if spec["dataset"] not in config["datasets"]:
        known = ", ".join(config["datasets"])
        raise LesionsConfigError(f"{key}.dataset: unknown dataset {spec['dataset']!r} (datasets: {known})")
    nefesi = config.get("nefesi", {})
    layers = [
        layer for target in nefesi.get("targets", []) if target["model"] == spec["model"] for layer in target["layers"]
    ]
    if not nefesi.get("enabled", False) or spec["layer"] not in layers:
        raise LesionsConfigError(
            f"{key}.layer: nefesi does not analyse {spec['model']} {spec['layer']!r} (nefesi.targets lists "
            f"{layers or 'none'}{'' if nefesi.get('enabled') else ', nefesi is off'}); the class selectivity comes "
            f"from its exemplars: add the layer there and enable nefesi"
        )


CONTROL_KEYS = ("n_random", "n_matched", "matched_candidates", "n_bootstrap")


@dataclasses.dataclass(frozen=True)
class ControlledSettings(Settings):
    """The control draws of a stage that lesions labelled sets: `n_random` random sets drawn without a set's units,
    `n_matched` activation-matched ones (each unit matched among its `matched_candidates` nearest), `n_bootstrap`
    resamples for intervals, all seeded by `seed`. The settings object itself is what `class_units.
    build_set_conditions` and `concept_units.build_concept_conditions` take as their draws."""

    n_random: int
    n_matched: int
    matched_candidates: int
    n_bootstrap: int
    seed: int

    @staticmethod
    def controls(spec: Mapping, config: Mapping) -> dict:
        """The control-draw fields from a study part's config section."""
        return {key: spec[key] for key in CONTROL_KEYS} | {"seed": config["seed"]}


@dataclasses.dataclass(frozen=True)
class ClassUnitsSettings(ControlledSettings):
    """lesions_class_units: sets of `sizes` units per class lesioned on `dataset`, against `n_random` random and
    `n_matched` activation-matched sets; `n_bootstrap` resamples for intervals; `seed` splits the images."""

    model: str
    layer: str
    dataset: str
    sizes: tuple[int, ...]
    ablation: str

    @classmethod
    def from_config(cls, config: Mapping) -> ClassUnitsSettings:
        check_class_units(config)
        spec = config["lesions"]["class_units"]
        return cls(
            model=spec["model"],
            layer=spec["layer"],
            dataset=spec["dataset"],
            sizes=tuple(sorted(set(spec["sizes"]))),
            ablation=spec["ablation"],
            **cls.controls(spec, config),
        )


def colour_layers(config: Mapping) -> tuple[str, ...]:
    """lesions.colour_units.layers (checked against the actmax probe's layers), or all of those when null."""
    spec, key = config["lesions"]["colour_units"], "config key lesions.colour_units"
    actmax = config.get("actmax", {})
    if not actmax.get("enabled", False):
        raise LesionsConfigError(f"{key}.enabled: the colour units come from the actmax study, which is off")
    probed = list(actmax["units"]["layers"])
    layers = list(spec["layers"] or probed)
    unknown = [layer for layer in layers if layer not in probed]
    if unknown:
        raise LesionsConfigError(f"{key}.layers: {unknown[0]!r} is not among actmax.units.layers ({', '.join(probed)})")
    return tuple(layers)


@dataclasses.dataclass(frozen=True)
class ColourUnitsSettings(Settings):
    """lesions_colour_units: per layer of the Colored-MNIST CNN, its colour and shape sets (at most `max_units`)
    lesioned against `n_random` random sets on `max_images` digits per evaluation set."""

    layers: tuple[str, ...]
    max_units: int
    ablation: str
    n_random: int
    max_images: int | None
    n_bootstrap: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> ColourUnitsSettings:
        spec = config["lesions"]["colour_units"]
        return cls(
            layers=colour_layers(config),
            max_units=spec["max_units"],
            ablation=spec["ablation"],
            n_random=spec["n_random"],
            max_images=spec["max_images"],
            n_bootstrap=spec["n_bootstrap"],
            seed=config["seed"],
        )


def check_concept_units(config: Mapping) -> None:
    """lesions.concept_units names a model and layer the dissection study dissects."""
    spec, key = config["lesions"]["concept_units"], "config key lesions.concept_units"
    dissection = config.get("dissection", {})
    if not dissection.get("enabled", False):
        raise LesionsConfigError(f"{key}.enabled: the concept detectors come from the dissection study, which is off")
    layers = [layer for t in dissection["targets"] if t["model"] == spec["model"] for layer in t["layers"]]
    if spec["layer"] not in layers:
        raise LesionsConfigError(
            f"{key}.layer: dissection does not dissect {spec['model']} {spec['layer']!r} (dissection.targets lists "
            f"{layers or 'none'} for it); add the layer there"
        )


@dataclasses.dataclass(frozen=True)
class ConceptUnitsSettings(ControlledSettings):
    """lesions_concept_units: the detectors of each concept with at least `min_detectors` of them at `layer`,
    lesioned on the dissection's concept images (`concepts`, drawn with `seed`, masks of shorter side `mask_size`)
    and read on the top and bottom `fraction` of frames by coverage, against random and matched sets."""

    concepts: ConceptSource
    layer: str
    mask_size: int | None
    min_detectors: int
    fraction: float
    related: dict
    ablation: str

    @classmethod
    def from_config(cls, config: Mapping) -> ConceptUnitsSettings:
        check_concept_units(config)
        spec = config["lesions"]["concept_units"]
        return cls(
            concepts=ConceptSource.from_config(config),
            layer=spec["layer"],
            mask_size=config["dissection"]["mask_size"],
            min_detectors=spec["min_detectors"],
            fraction=spec["fraction"],
            related={concept: list(classes) for concept, classes in spec["related"].items()},
            ablation=spec["ablation"],
            **cls.controls(spec, config),
        )


def shared_layers(config: Mapping) -> tuple[tuple[str, str], ...]:
    """(model, layer) pairs both nefesi and the dissection analyse (their colour labels can be compared)."""
    nefesi, dissection = config.get("nefesi", {}), config.get("dissection", {})
    if not (nefesi.get("enabled") and dissection.get("enabled")):
        return ()
    dissected = {(t["model"], layer) for t in dissection["targets"] for layer in t["layers"]}
    return tuple(
        (t["model"], layer) for t in nefesi["targets"] for layer in t["layers"] if (t["model"], layer) in dissected
    )


def _analysed(config: Mapping, study: str) -> set[tuple[str, str]]:
    """(model, layer) pairs a study's targets analyse (none when the study is off)."""
    section = config.get(study, {})
    if not section.get("enabled", False):
        return set()
    return {(t["model"], layer) for t in section["targets"] for layer in t["layers"]}


def _atlas_actmax_layers(config: Mapping) -> list[tuple[str, str]]:
    """(model, layer) of each atlas target that optimises its units (`atlas.plan.target_actmax`)."""
    atlas = config.get("atlas", {})
    if not atlas.get("enabled", False):
        return []
    return [(t["model"], t["layer"]) for t in atlas["targets"] if target_actmax(atlas, t)]


def actmax_comparisons(config: Mapping) -> tuple[tuple[str, str, str, str, str], ...]:
    """(model, target layer, unit layer, partner, source) for each set of actmax images whose units nefesi or the
    dissection also labels (partner "nefesi" / "dissection"): their colour labels can be set against its colour
    score. Source "registry": an actmax registry target (unit layer: the target's layer, or the faces layer whose
    channels a from_faces target optimises); "atlas": an atlas target with actmax evidence (every unit of its
    layer), used where no registry target already optimises that layer's units, so no layer is optimised twice
    for this table."""
    partners = {"nefesi": _analysed(config, "nefesi"), "dissection": _analysed(config, "dissection")}
    registry = registry_targets(config)
    sources = [(model, layer, target.unit_layer or layer, "registry") for (model, layer), target in registry.items()]
    covered = {(model, unit) for model, _, unit, _ in sources}
    sources += [(m, layer, layer, "atlas") for m, layer in _atlas_actmax_layers(config) if (m, layer) not in covered]
    return tuple(
        (model, layer, unit, partner, source)
        for model, layer, unit, source in sources
        for partner, analysed in partners.items()
        if (model, unit) in analysed
    )


@dataclasses.dataclass(frozen=True)
class AgreementSettings(Settings):
    """lesions_agreement: nefesi's colour index against the dissection's colour IoU on `colour_layers`, the actmax
    colour score of registry-target or atlas units against nefesi's or the dissection's colour label on `actmax`
    (`actmax_comparisons`), and the faces selectivity against its channels' own lesions when `faces`;
    `n_bootstrap` resamples of units."""

    colour_layers: tuple[tuple[str, str], ...]
    actmax: tuple[tuple[str, str, str, str, str], ...]
    faces: bool
    n_bootstrap: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> AgreementSettings:
        return cls(
            colour_layers=shared_layers(config),
            actmax=actmax_comparisons(config),
            faces=bool(config.get("faces", {}).get("enabled", False)),
            n_bootstrap=config["lesions"]["class_units"]["n_bootstrap"],
            seed=config["seed"],
        )

    def nefesi_layers(self) -> list[tuple[str, str]]:
        """(model, layer) of every nefesi indexes table the rows read, in a fixed order."""
        wanted = [*self.colour_layers, *((m, unit) for m, _, unit, partner, _ in self.actmax if partner == "nefesi")]
        return list(dict.fromkeys(wanted))

    def dissected_models(self) -> list[str]:
        """Models whose dissection unit table the rows read, sorted."""
        wanted = [m for m, _ in self.colour_layers] + [m for m, _, _, p, _ in self.actmax if p == "dissection"]
        return sorted(set(wanted))

    def actmax_targets(self) -> list[tuple[str, str]]:
        """(model, target layer) of every actmax registry run the rows read, in a fixed order."""
        return list(dict.fromkeys((m, layer) for m, layer, _, _, source in self.actmax if source == "registry"))

    def atlas_actmax_layers(self) -> list[tuple[str, str]]:
        """(model, layer) of every atlas layer whose shards' actmax tables the rows read, in a fixed order."""
        return list(dict.fromkeys((m, layer) for m, layer, _, _, source in self.actmax if source == "atlas"))


@dataclasses.dataclass(frozen=True)
class SectionSettings(Settings):
    """lesions_section: the level `alpha` of the verdicts (report only) and what the class units were run on."""

    alpha: float
    model: str
    layer: str
    dataset: str

    @classmethod
    def from_config(cls, config: Mapping) -> SectionSettings:
        spec = config["lesions"]["class_units"]
        return cls(alpha=config["lesions"]["alpha"], model=spec["model"], layer=spec["layer"], dataset=spec["dataset"])


@dataclasses.dataclass(frozen=True)
class LesionsPlan:
    """Every rule's settings, built once at parse time (rules/lesions.smk)."""

    class_units: ClassUnitsSettings
    colour_units: ColourUnitsSettings | None  # None: lesions.colour_units.enabled is false
    concept_units: ConceptUnitsSettings | None  # None: lesions.concept_units.enabled is false
    concept_model: str
    agreement: AgreementSettings
    section: SectionSettings

    @classmethod
    def from_config(cls, config: Mapping) -> LesionsPlan:
        lesions = config["lesions"]
        colour = ColourUnitsSettings.from_config(config) if lesions["colour_units"]["enabled"] else None
        concept = ConceptUnitsSettings.from_config(config) if lesions["concept_units"]["enabled"] else None
        return cls(
            class_units=ClassUnitsSettings.from_config(config),
            colour_units=colour,
            concept_units=concept,
            concept_model=lesions["concept_units"]["model"],
            agreement=AgreementSettings.from_config(config),
            section=SectionSettings.from_config(config),
        )
