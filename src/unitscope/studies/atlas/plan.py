"""Parse time (no torch): the atlas targets checked against the config and the models' facts (their layers and
channel counts, surveyed once and cached: `unitscope.models.facts`), each layer's shards of consecutive units, and
the settings each rule gets (frozen `Settings`, one per job)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping

from unitscope.config import dataset_label_names
from unitscope.errors import UnitscopeError
from unitscope.settings import Settings

ROOT = "results/atlas"
# the nefesi study's settings that define its indexes: the atlas computes them the same way
INDEX_DEFINITIONS = (
    "rotation_step",
    "color_grey",
    "class_index_scale",
    "class_coverage",
    "population_threshold",
    "color_name_share",
)


class AtlasConfigError(UnitscopeError, ValueError):
    """An atlas setting names something that does not exist; the message is one line naming the key."""


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unit_shards(n_channels: int, per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive units, `per_shard` each (the last may be smaller): every unit exactly once."""
    return [(start, min(start + per_shard, n_channels)) for start in range(0, n_channels, per_shard)]


def shard_name(start: int, stop: int) -> str:
    """A shard's name in paths (the `{shard}` wildcard): its first and last unit, e.g. '0-63'."""
    return f"{start}-{stop - 1}"


@dataclasses.dataclass(frozen=True)
class AtlasTarget:
    """One target layer, checked: its datasets, the labelled ones, its channel count (from the model's facts)."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    labelled: tuple[str, ...]
    categories: tuple[str, ...]  # datasets.<d>.category of each dataset
    channels: int
    shards: tuple[tuple[int, int], ...]
    actmax: bool = False  # activation-maximisation images for its units (the target's switch, else evidence.actmax)
    actmax_layer: str | None = None  # the module optimised in the layer's place (same channels); None: the layer
    indexes: tuple[str, ...] = ()  # nefesi's indexes computed for its units (atlas.indexes or the target's own)
    index_shards: tuple[tuple[int, int], ...] = ()  # the index jobs' units (atlas.index_units_per_shard); (): shards

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.layer)

    @property
    def folder(self) -> str:
        return f"{ROOT}/{self.model}/{self.layer}"

    def shard_names(self, kind: str | None = None) -> list[str]:
        """The shards of evidence `kind` (the index jobs have their own, `index_shards`; every other kind `shards`)."""
        return [shard_name(start, stop) for start, stop in self._shards(kind)]

    def shard_range(self, name: str, kind: str | None = None) -> tuple[int, int]:
        for start, stop in self._shards(kind):
            if shard_name(start, stop) == name:
                return start, stop
        shards = ", ".join(self.shard_names(kind))
        raise AtlasConfigError(f"atlas target {self.model} {self.layer!r} has no shard {name!r} (its shards: {shards})")

    def _shards(self, kind: str | None) -> tuple[tuple[int, int], ...]:
        return self.index_shards if kind == "indexes" and self.index_shards else self.shards


def _check_model(config: Mapping, where: str, model: str) -> None:
    if model not in config["models"]:
        raise AtlasConfigError(f"{where}.model: unknown model {model!r}{_hint(model, config['models'])}")
    if not config["models"][model].get("enabled", True):
        raise AtlasConfigError(f"{where}.model: model {model!r} is disabled (models.{model}.enabled)")


def _check_datasets(config: Mapping, where: str, target: Mapping) -> None:
    for dataset in target["datasets"]:
        if dataset not in config["datasets"]:
            raise AtlasConfigError(f"{where}.datasets: unknown dataset {dataset!r}{_hint(dataset, config['datasets'])}")
    if len(set(target["datasets"])) != len(target["datasets"]):
        raise AtlasConfigError(f"{where}.datasets: a dataset is listed twice ({', '.join(target['datasets'])})")
    for dataset in target.get("labelled") or ():
        if dataset not in target["datasets"]:
            raise AtlasConfigError(
                f"{where}.labelled: {dataset!r} is not among the target's datasets{_hint(dataset, target['datasets'])}"
            )


def layer_channels(facts: Mapping, model: str, layer: str, where: str, key: str = "layer") -> int:
    """The layer's channel count from the model's facts; an unknown layer (with the closest name) or one without
    channel maps is one line naming the key."""
    rows = {row["name"]: row for row in facts["layers"]}
    if layer not in rows:
        raise AtlasConfigError(
            f"{where}.{key}: model {model} has no layer {layer!r}{_hint(layer, rows)} "
            f"(`python -m unitscope layers {model}` lists them)"
        )
    if not rows[layer].get("channels"):
        raise AtlasConfigError(
            f"{where}.{key}: {model} {layer!r} outputs {rows[layer].get('shape')}, not channel maps [C, H, W]"
        )
    return int(rows[layer]["channels"])


def _actmax_layer(facts: Mapping, target: Mapping, channels: int, where: str) -> str | None:
    """The target's actmax_layer, checked: a layer of the model with the target layer's channel count."""
    name = target.get("actmax_layer")
    if name is None:
        return None
    found = layer_channels(facts, target["model"], name, where, key="actmax_layer")
    if found != channels:
        raise AtlasConfigError(
            f"{where}.actmax_layer: {target['model']} {name!r} has {found} channels, the layer "
            f"{target['layer']!r} {channels}; optimise a module with the layer's channels"
        )
    return name


def _index_kinds(atlas: Mapping, target: Mapping) -> tuple[str, ...]:
    """The nefesi indexes of one target: its own list, else atlas.indexes; none when evidence.indexes is off."""
    if not atlas["evidence"]["indexes"]:
        return ()
    kinds = atlas["indexes"] if target.get("indexes") is None else target["indexes"]
    return tuple(dict.fromkeys(kinds))


def _labelled(config: Mapping, target: Mapping) -> tuple[str, ...]:
    if target.get("labelled") is not None:
        return tuple(target["labelled"])
    evaluation = config["models"][target["model"]].get("eval") or {}
    return (evaluation["dataset"],) if evaluation.get("dataset") in target["datasets"] else ()


def target_actmax(atlas: Mapping, target: Mapping) -> bool:
    """Whether an atlas target optimises its units: its own `actmax` switch, else atlas.evidence.actmax."""
    return bool(atlas["evidence"]["actmax"] if target.get("actmax") is None else target["actmax"])


def check_targets(config: Mapping, facts: Callable[[Mapping, str], Mapping]) -> tuple[AtlasTarget, ...]:
    """atlas.targets checked in order (the first problem is the error) and resolved: `facts(config, model)` gives the
    model's layers (`unitscope.models.facts.model_facts`)."""
    atlas, seen, targets = config["atlas"], set(), []
    if not atlas["targets"]:
        raise AtlasConfigError(
            "config key atlas.targets: empty; list {model, layer, datasets} entries (or disable the atlas)"
        )
    for index, target in enumerate(atlas["targets"]):
        where = f"config key atlas.targets[{index}]"
        _check_model(config, where, target["model"])
        _check_datasets(config, where, target)
        model_facts = facts(config, target["model"])
        channels = layer_channels(model_facts, target["model"], target["layer"], where)
        if (target["model"], target["layer"]) in seen:
            raise AtlasConfigError(f"{where}: {target['model']} {target['layer']!r} is already an atlas target")
        seen.add((target["model"], target["layer"]))
        targets.append(
            AtlasTarget(
                model=target["model"],
                layer=target["layer"],
                datasets=tuple(target["datasets"]),
                labelled=_labelled(config, target),
                categories=tuple(config["datasets"][d]["category"] for d in target["datasets"]),
                channels=channels,
                shards=tuple(unit_shards(channels, atlas["units_per_shard"])),
                actmax=target_actmax(atlas, target),
                actmax_layer=_actmax_layer(model_facts, target, channels, where),
                indexes=_index_kinds(atlas, target),
                index_shards=tuple(unit_shards(channels, atlas.get("index_units_per_shard") or channels)),
            )
        )
    return tuple(targets)


@dataclasses.dataclass(frozen=True)
class CategoriesSettings(Settings):
    """atlas_categories, per shard: units [start, stop) of `layer`; their mean activation per dataset, per category
    (`categories[i]` is dataset i's) and per label, with `n_bootstrap` resamples seeded by `seed`."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    categories: tuple[str, ...]
    start: int
    stop: int
    n_bootstrap: int
    seed: int


@dataclasses.dataclass(frozen=True)
class LesionSettings(Settings):
    """atlas_lesion, per shard: each unit of [start, stop) of `layer` lesioned alone (`ablation`) on every image of
    `datasets`; class accuracy on the `labelled` ones."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    labelled: tuple[str, ...]
    start: int
    stop: int
    ablation: str


@dataclasses.dataclass(frozen=True)
class TopNSettings(Settings):
    """atlas_top_n, per layer: the `top_n` exemplars of every unit of `layer` over every image of `datasets`, sorted
    from the peaks their extraction stores hold (nefesi's top-N)."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    top_n: int


@dataclasses.dataclass(frozen=True)
class ExemplarsSettings(Settings):
    """atlas_exemplars, per shard: the Neuron Features of units [start, stop) of `layer` from the layer's top-N
    table, their best `shown` crops, images no larger than `pixels` a side (None: full size), and per unit the share
    of its exemplars from each of `datasets`."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    start: int
    stop: int
    shown: int
    pixels: int | None


@dataclasses.dataclass(frozen=True)
class IndexesSettings(Settings):
    """atlas_indexes, per index shard (atlas.index_units_per_shard; by default the whole layer, so a crop that several
    units share is probed once): nefesi's indexes `kinds` of units [start, stop) of `layer` from the layer's top-N
    table, with the nefesi study's `definitions` (rotation_step, color_grey, class_index_scale, class_coverage,
    population_threshold, color_name_share); each image's class is its label (named by `label_names`, prefixed by
    its dataset when the target pools several)."""

    model: str
    layer: str
    datasets: tuple[str, ...]
    start: int
    stop: int
    kinds: tuple[str, ...]
    definitions: dict
    label_names: dict


@dataclasses.dataclass(frozen=True)
class GatherSettings(Settings):
    """atlas_gather, per layer: the shards' evidence joined into one row per unit, with the nefesi indexes and the
    dissection's best concept when those studies analyse the layer."""

    model: str
    layer: str
    channels: int
    shards: tuple[str, ...]
    categories: bool
    lesion: bool
    exemplars: bool
    nefesi: bool
    dissection: bool
    actmax: bool = False


@dataclasses.dataclass(frozen=True)
class ActmaxSettings(Settings):
    """atlas_actmax, per shard: units [start, stop) of `layer` optimised together (`seeds` images each, `steps` Adam
    steps at `lr`, `parameterization`, `l2` and `tv` penalties), at `optimize_at` when set (a module with the
    layer's channels), their activation read at `layer`."""

    model: str
    layer: str
    start: int
    stop: int
    seeds: int
    steps: int
    lr: float
    parameterization: str
    l2: float
    tv: float
    optimize_at: str | None


def analysed(config: Mapping, study: str) -> set[tuple[str, str]]:
    """(model, layer) pairs an enabled study's targets analyse (none when it is off)."""
    section = config.get(study, {})
    if not section.get("enabled", False):
        return set()
    return {(t["model"], layer) for t in section.get("targets", []) for layer in t["layers"]}


@dataclasses.dataclass(frozen=True)
class AtlasPlan:
    """Every atlas job and its settings, built once at parse time (rules/atlas.smk)."""

    targets: dict  # (model, layer) -> AtlasTarget
    categories: bool
    lesion: bool
    exemplars: bool
    top_n: int
    exemplars_shown: int
    exemplar_pixels: int | None
    ablation: str
    n_bootstrap: int
    seed: int
    nefesi: frozenset  # (model, layer) pairs the nefesi study analyses
    dissection: frozenset  # (model, layer) pairs the dissection dissects
    label_names: dict = dataclasses.field(default_factory=dict)  # dataset -> class names (datasets.<d>.label_names)
    actmax: dict = dataclasses.field(default_factory=dict)  # atlas.actmax: seeds, steps, lr, parameterization, l2, tv
    index_definitions: dict = dataclasses.field(default_factory=dict)  # the nefesi study's (INDEX_DEFINITIONS)

    @classmethod
    def from_config(cls, config: Mapping, facts: Callable[[Mapping, str], Mapping] | None = None) -> AtlasPlan:
        if facts is None:
            from unitscope.models.facts import model_facts as facts
        atlas = config["atlas"]
        targets = check_targets(config, facts)
        if atlas["exemplars_shown"] > atlas["top_n"]:
            raise AtlasConfigError(
                f"config key atlas.exemplars_shown: {atlas['exemplars_shown']} crops shown of atlas.top_n = "
                f"{atlas['top_n']} exemplars; show at most top_n"
            )
        return cls(
            targets={(t.model, t.layer): t for t in targets},
            categories=bool(atlas["evidence"]["categories"]),
            lesion=bool(atlas["evidence"]["lesion"]),
            exemplars=bool(atlas["evidence"]["exemplars"]),
            top_n=atlas["top_n"],
            exemplars_shown=atlas["exemplars_shown"],
            exemplar_pixels=atlas["exemplar_pixels"],
            ablation=atlas["ablation"],
            n_bootstrap=atlas["n_bootstrap"],
            seed=config["seed"],
            nefesi=frozenset(analysed(config, "nefesi")),
            dissection=frozenset(analysed(config, "dissection")),
            label_names=dataset_label_names(config, config["datasets"]),
            actmax=dict(atlas["actmax"]),
            index_definitions={key: config["nefesi"][key] for key in INDEX_DEFINITIONS},
        )

    def page_settings(self, model: str, layer: str) -> dict:
        """The layer page's settings as params (plain data: pages.py is not imported at parse time): the layer, and
        the class names of the integer labels of the target's datasets."""
        target = self.target(model, layer)
        names = {dataset: self.label_names[dataset] for dataset in target.datasets if dataset in self.label_names}
        return {"model": target.model, "layer": target.layer, "label_names": names}

    def evidence_files(self, model: str, layer: str) -> dict[str, list[str]]:
        """Each kind of evidence -> the shard files of that layer (the gather's inputs)."""
        return {kind: self.shard_files(model, layer, kind) for kind in self.evidence_kinds(model, layer)}

    def evidence_kinds(self, model: str, layer: str) -> tuple[str, ...]:
        """The evidence kinds of one target layer: every target's (`evidence`), nefesi's indexes where the target asks
        for some and the nefesi study does not analyse the layer (then its own table joins), actmax where asked."""
        target = self.target(model, layer)
        indexes = bool(target.indexes) and (model, layer) not in self.nefesi
        return self.evidence() + (("indexes",) if indexes else ()) + (("actmax",) if target.actmax else ())

    def indexes_settings(self, model: str, layer: str, shard: str) -> IndexesSettings:
        target = self.target(model, layer)
        start, stop = target.shard_range(shard, "indexes")
        if "indexes" not in self.evidence_kinds(model, layer):
            raise AtlasConfigError(f"atlas target {model} {layer!r} computes no indexes (atlas.evidence.indexes)")
        names = {dataset: self.label_names[dataset] for dataset in target.datasets if dataset in self.label_names}
        return IndexesSettings(
            model, layer, target.datasets, start, stop, target.indexes, dict(self.index_definitions), names
        )

    def actmax_settings(self, model: str, layer: str, shard: str) -> ActmaxSettings:
        target = self.target(model, layer)
        start, stop = target.shard_range(shard)
        if not target.actmax:
            raise AtlasConfigError(f"atlas target {model} {layer!r} has no actmax evidence (atlas.evidence.actmax)")
        a = self.actmax
        return ActmaxSettings(
            model, layer, start, stop, a["seeds"], a["steps"], a["lr"], a["parameterization"], a["l2"], a["tv"],
            target.actmax_layer,
        )  # fmt: skip

    def actmax_images(self, model: str, layer: str) -> list[str]:
        """The layer's shard actmax images (actmax.npz), for the pages; none when the target has no actmax."""
        target = self.target(model, layer)
        return [f"{target.folder}/shards/{name}/actmax.npz" for name in target.shard_names()] if target.actmax else []

    def target(self, model: str, layer: str) -> AtlasTarget:
        if (model, layer) not in self.targets:
            listed = ", ".join(f"{m}/{layer_}" for m, layer_ in self.targets)
            raise AtlasConfigError(f"{model}/{layer} is not an atlas target (config key atlas.targets lists {listed})")
        return self.targets[(model, layer)]

    def categories_settings(self, model: str, layer: str, shard: str) -> CategoriesSettings:
        target = self.target(model, layer)
        start, stop = target.shard_range(shard)
        return CategoriesSettings(
            model=model,
            layer=layer,
            datasets=target.datasets,
            categories=target.categories,
            start=start,
            stop=stop,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )

    def lesion_settings(self, model: str, layer: str, shard: str) -> LesionSettings:
        target = self.target(model, layer)
        start, stop = target.shard_range(shard)
        return LesionSettings(model, layer, target.datasets, target.labelled, start, stop, self.ablation)

    def top_n_settings(self, model: str, layer: str) -> TopNSettings:
        target = self.target(model, layer)
        return TopNSettings(model=model, layer=layer, datasets=target.datasets, top_n=self.top_n)

    def exemplars_settings(self, model: str, layer: str, shard: str) -> ExemplarsSettings:
        target = self.target(model, layer)
        start, stop = target.shard_range(shard)
        return ExemplarsSettings(
            model=model,
            layer=layer,
            datasets=target.datasets,
            start=start,
            stop=stop,
            shown=self.exemplars_shown,
            pixels=self.exemplar_pixels,
        )

    def exemplar_images(self, model: str, layer: str) -> list[str]:
        """The layer's shard image files (exemplars.npz: NFs and crops), for the pages; none when exemplars are off."""
        if not self.exemplars:
            return []
        target = self.target(model, layer)
        return [f"{target.folder}/shards/{name}/exemplars.npz" for name in target.shard_names()]

    def gather_settings(self, model: str, layer: str) -> GatherSettings:
        target = self.target(model, layer)
        return GatherSettings(
            model=model,
            layer=layer,
            channels=target.channels,
            shards=tuple(target.shard_names()),
            categories=self.categories,
            lesion=self.lesion,
            exemplars=self.exemplars,
            nefesi=(model, layer) in self.nefesi,
            dissection=(model, layer) in self.dissection,
            actmax=target.actmax,
        )

    def evidence(self) -> tuple[str, ...]:
        """The evidence kinds computed per shard (each one rule writing <kind>.parquet per shard, which the gather
        joins; exemplars also write exemplars.npz, from the layer's top-N table)."""
        kinds = (("categories", self.categories), ("lesion", self.lesion), ("exemplars", self.exemplars))
        return tuple(kind for kind, on in kinds if on)

    def shard_files(self, model: str, layer: str, kind: str) -> list[str]:
        target = self.target(model, layer)
        return [f"{target.folder}/shards/{name}/{kind}.parquet" for name in target.shard_names(kind)]

    def nefesi_table(self, model: str, layer: str) -> list[str]:
        """nefesi's indexes of the layer as a rule input (none when nefesi does not analyse it)."""
        return [f"results/nefesi/{model}/{layer}/indexes.parquet"] if (model, layer) in self.nefesi else []

    def dissection_table(self, model: str, layer: str) -> list[str]:
        """The dissection's unit table of the model as a rule input (none when it does not dissect the layer)."""
        return [f"results/dissection/{model}/units.parquet"] if (model, layer) in self.dissection else []

    def dissection_tallies(self, model: str, layer: str) -> list[str]:
        """The dissection's tallies of the model (every unit's IoU with every concept), for the unit pages' IoU
        profiles (none when it does not dissect the layer)."""
        return [f"results/dissection/{model}/tallies.npz"] if (model, layer) in self.dissection else []

    def tables(self) -> list[str]:
        """Every layer's table, in the order of atlas.targets."""
        return [f"{target.folder}/units.parquet" for target in self.targets.values()]


def atlas_is_off(_wildcards=None):
    """The `atlas` target's input when the atlas is off: says why there is nothing to build."""
    raise AtlasConfigError("the atlas is off (config key atlas.enabled); set it to true and list atlas.targets")
