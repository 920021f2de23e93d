"""The atlas's unit pages, results/atlas/<model>/<layer>/units/<channel>.html: one per unit of the layer table, with
every number of the unit's row (activation per dataset, category and class with 95% intervals; its lesion's KL and
class accuracy changes; nefesi's indexes; the dissection's best concept), its IoU with the top concepts, its Neuron
Feature and top exemplar crops, and the report's studies that single it out. Written whole into a folder, then
renamed (`fsutil.atomic_path`). No torch unless the dissection's IoU is read (`unit_evidence.concept_profiles`).

Images are PNG data URIs inside each page (`png`): a page is one self-contained file that opens offline, and the
folder holds one file per unit, not one per image. Shards of exemplars are read one at a time, so memory holds one
shard's crops, whatever the layer's size.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from unitscope.fsutil import atomic_path
from unitscope.report.render import render
from unitscope.studies.atlas import png
from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.atlas.unit_evidence import ConceptProfiles, concept_profiles, read_exemplars, study_mentions

STUDY_DIR = Path(__file__).resolve().parent
TOP_CONCEPTS = 10  # concepts in a unit's IoU profile
REPORT_UNITS = "results/report/units"  # the report's unit pages (unit_page_name), linked from the atlas's
ATLAS_UNITS = "results/atlas/{model}/{layer}/units"
ACTIVATION = re.compile(r"^act\.(.+)\.mean$")  # the layer table's columns (categories.py, lesion.py)
LABEL_GROUP = re.compile(r"^(?!category\[)(.+)\[(.+)\]$")  # <dataset>[<label>]; `category[<c>]` is a category
CLASS_CHANGE = re.compile(r"^acc_change\.(.+)\[(.+)\]$")
CATEGORY = re.compile(r"^category\[(.+)\]$")
NEFESI = ("color_index", "orientation_index", "symmetry_index", "class_index")
DISSECTION_SHOWN = ("concept", "category", "iou", "detector", "runner_up", "runner_up_iou")
IDENTITY = ("unit", "model", "layer", "channel")


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Which columns of the layer table hold which evidence (parsed once for the layer's every unit)."""

    groups: tuple[str, ...]  # act.<group>.* of datasets and shared categories
    labels: tuple[tuple[str, str], ...]  # (dataset, label) of act.<dataset>[<label>].*
    lesion: tuple[str, ...]  # datasets with kl.<dataset>
    classes: tuple[tuple[str, str], ...]  # (dataset, label) of acc_change.<dataset>[<label>]
    other: tuple[str, ...]  # every column no section of the page shows

    @classmethod
    def of(cls, columns: Sequence[str]) -> RowLayout:
        groups = [m.group(1) for m in map(ACTIVATION.match, columns) if m]
        labels = [LABEL_GROUP.match(g).groups() for g in groups if LABEL_GROUP.match(g)]
        lesion = [c.removeprefix("kl.") for c in columns if c.startswith("kl.")]
        classes = [m.groups() for m in map(CLASS_CHANGE.match, columns) if m]
        shown = set(IDENTITY) | {f"act.{g}.{part}" for g in groups for part in ("mean", "low", "high")}
        shown |= {f"{kind}.{d}" for d in lesion for kind in ("kl", "flip", "acc_change")}
        shown |= {f"acc_change.{d}[{label}]" for d, label in classes}
        shown |= {c for c in columns if c.startswith(("nefesi.", "dissection."))}
        return cls(
            groups=tuple(g for g in groups if not LABEL_GROUP.match(g)),
            labels=tuple(labels),
            lesion=tuple(lesion),
            classes=tuple(classes),
            other=tuple(c for c in columns if c not in shown),
        )


def _value(record: Mapping, key: str):
    """A cell as plain Python (None where missing), so the template's filters format it."""
    value = record.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def missing_indexes(record: Mapping) -> list[str]:
    """nefesi's indexes the unit has no value for ("colour", "orientation", ...), when it has some index columns and
    is not dead (a dead unit has none by definition): those the atlas target did not compute (`indexes`)."""
    if not any(key.startswith("nefesi.") for key in record) or _value(record, "nefesi.dead"):
        return []
    names = {"color_index": "colour"}
    return [names.get(key, key.removesuffix("_index")) for key in NEFESI if _value(record, f"nefesi.{key}") is None]


def _interval(record: Mapping, group: str) -> dict:
    return {part: _value(record, f"act.{group}.{part}") for part in ("mean", "low", "high")}


def activation_context(record: Mapping, layout: RowLayout, class_name) -> dict:
    """Mean activation with its interval per dataset and shared category, and per class of each dataset."""
    groups = [
        {
            "name": CATEGORY.match(g).group(1) if CATEGORY.match(g) else g,
            "category": bool(CATEGORY.match(g)),
            **_interval(record, g),
        }
        for g in layout.groups
    ]
    per_dataset: dict[str, list] = {}
    for dataset, label in layout.labels:
        per_dataset.setdefault(dataset, []).append(
            {"label": label, "name": class_name(dataset, label), **_interval(record, f"{dataset}[{label}]")}
        )
    return {"groups": groups, "labels": per_dataset}


def lesion_context(record: Mapping, layout: RowLayout, class_name) -> list[dict]:
    """Per dataset: the lesion's mean KL, share of changed predictions, accuracy change and per-class changes."""
    return [
        {
            "dataset": dataset,
            "kl": _value(record, f"kl.{dataset}"),
            "flip": _value(record, f"flip.{dataset}"),
            "accuracy": _value(record, f"acc_change.{dataset}"),
            "classes": [
                {"label": label, "name": class_name(d, label), "change": _value(record, f"acc_change.{d}[{label}]")}
                for d, label in layout.classes
                if d == dataset
            ],
        }
        for dataset in layout.lesion
    ]


def dissection_context(record: Mapping) -> dict:
    """The dissection's columns of the unit (its best concept, IoU, ...), every one the page names present; {} when
    the dissection does not dissect the layer."""
    found = {k.removeprefix("dissection."): _value(record, k) for k in record if k.startswith("dissection.")}
    return {**dict.fromkeys(DISSECTION_SHOWN), **found} if found else {}


def profile_bars(concepts: list[dict]) -> list[dict]:
    """The IoU profile's rows with each bar's width, relative to the best concept's IoU."""
    top = max((c["iou"] for c in concepts), default=0.0)
    return [{**c, "width": round(100 * c["iou"] / top, 1) if top > 0 else 0.0} for c in concepts]


@dataclasses.dataclass(frozen=True)
class LayerSources:
    """The unit pages' inputs beyond the layer table: the shards' exemplars.npz files (none when the exemplars are
    off), the dissection's tallies.npz (None when it does not dissect the layer), the enabled studies' sections."""

    exemplars: Sequence[str | os.PathLike] = ()
    tallies: str | os.PathLike | None = None
    sections: Sequence[str | os.PathLike] = ()
    actmax: Sequence[str | os.PathLike] = ()  # the shards' actmax.npz files (none when the target has no actmax)


class ActmaxShards:
    """The shards' activation-maximisation images by unit, read a shard at a time as pages ask for its units (the
    pages go through the units in order, so each shard is read once)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.where = {}
        for path in paths:
            with np.load(path) as arrays:
                self.where.update({int(c): (str(path), i) for i, c in enumerate(arrays["channels"])})
        self.loaded: tuple[str, dict] | None = None

    def _arrays(self, channel: int) -> tuple[np.ndarray, np.ndarray]:
        path, index = self.where[channel]
        if self.loaded is None or self.loaded[0] != path:
            with np.load(path) as arrays:
                self.loaded = (path, {key: arrays[key] for key in ("images", "activation")})
        return self.loaded[1]["images"][index], self.loaded[1]["activation"][index]

    def thumbnail(self, channel: int) -> str:
        """The unit's first image (seed 0), shrunk for the layer index."""
        return png.data_uri(png.thumbnail(self._arrays(channel)[0][0]))

    def images(self, channel: int) -> dict | None:
        """The unit's images (one per seed, PNG data URIs) with their activation at the layer; None without any."""
        if channel not in self.where:
            return None
        images, activation = self._arrays(channel)
        height, width = images.shape[1:3]
        pairs = zip(images, activation, strict=True)
        seeds = [{"src": png.data_uri(image), "activation": float(a)} for image, a in pairs]
        return {"seeds": seeds, "height": int(height), "width": int(width)}


def class_name(dataset: str, label: str, label_names: Mapping[str, Sequence[str]]) -> str:
    """A label as the reader knows it: its name when the dataset's labels are indexes into `label_names`."""
    names = label_names.get(dataset)
    if names and re.fullmatch(r"\d+", str(label)) and int(label) < len(names):
        return str(names[int(label)])
    return str(label)


def exemplar_images(shard, index: int) -> dict:
    """The unit's Neuron Feature and top crops (best first) as data URIs, with where each crop comes from; crops a
    unit does not have (fewer exemplars than shown: no dataset, or no activation) are left out."""
    crops = [
        {
            "src": png.jpeg_uri(shard.crops[index, j]),
            "activation": float(shard.activation[index, j]),
            "dataset": str(shard.dataset[index, j]),
            "image_id": str(shard.image_id[index, j]),
        }
        for j in range(shard.crops.shape[1])
        if str(shard.dataset[index, j]) and np.isfinite(shard.activation[index, j])
    ]
    height, width = shard.nf.shape[1:3]
    return {"nf": png.data_uri(shard.nf[index]), "height": int(height), "width": int(width), "crops": crops}


@dataclasses.dataclass(frozen=True)
class LayerPages:
    """What every unit page of one layer shares: the table's rows by channel (in the table's order), its column
    layout, the dissection's IoU profiles, the studies' mentions and the relative way to the report's unit pages."""

    model: str
    layer: str
    label_names: Mapping[str, Sequence[str]]
    records: dict  # channel -> the unit's row (dict)
    layout: RowLayout
    profiles: ConceptProfiles | None
    mentions: dict
    report: str  # the report's unit folder relative to this layer's unit folder

    @classmethod
    def of(cls, table: pd.DataFrame, settings, sources: LayerSources) -> LayerPages:
        records = {int(r["channel"]): r for r in table.to_dict("records")}
        profiles = concept_profiles(sources.tallies, settings.layer) if sources.tallies else None
        if profiles is not None and len(profiles.iou) != len(table):
            raise AtlasError(
                f"{sources.tallies}: the dissection has {len(profiles.iou)} units at {settings.layer!r}; "
                f"the atlas layer table has {len(table)}"
            )
        units = ATLAS_UNITS.format(model=settings.model, layer=settings.layer)
        return cls(
            model=settings.model,
            layer=settings.layer,
            label_names=settings.label_names,
            records=records,
            layout=RowLayout.of(list(table.columns)),
            profiles=profiles,
            mentions=study_mentions(sources.sections, settings.model, settings.layer),
            report=Path(os.path.relpath(REPORT_UNITS, units)).as_posix(),
        )

    def neighbours(self) -> dict[int, tuple[int | None, int | None]]:
        channels = list(self.records)
        return {
            c: (channels[i - 1] if i > 0 else None, channels[i + 1] if i + 1 < len(channels) else None)
            for i, c in enumerate(channels)
        }

    def context(self, channel: int, images: dict | None, neighbours: tuple) -> dict:
        """Everything the unit's page shows (numbers unformatted; the template formats them)."""
        record = self.records[channel]
        name = lambda dataset, label: class_name(dataset, label, self.label_names)  # noqa: E731
        concepts = self.profiles.top(channel, TOP_CONCEPTS) if self.profiles is not None else []
        return {
            "unit": str(record["unit"]),
            "model": self.model,
            "layer": self.layer,
            "channel": channel,
            "previous": neighbours[0],
            "next": neighbours[1],
            "activation": activation_context(record, self.layout, name),
            "lesion": lesion_context(record, self.layout, name),
            "nefesi": {k.removeprefix("nefesi."): _value(record, k) for k in record if k.startswith("nefesi.")},
            "dissection": dissection_context(record),
            "profile": profile_bars(concepts),
            "profiled": self.profiles is not None,
            "images": images,
            "actmax": None,  # the unit's activation-maximisation images, where the layer has them (ActmaxShards)
            "studies": self.mentions.get(channel, []),
            "report": self.report,
            "report_index": posixpath.join(posixpath.dirname(self.report), "index.html"),
            "other": {k: _value(record, k) for k in self.layout.other},
            "nefesi_indexes": NEFESI,
            "nefesi_missing": missing_indexes(record),
        }


def unit_page(context: Mapping) -> str:
    """One unit's page (HTML) from its `LayerPages.context`."""
    return render("atlas_unit.html.j2", STUDY_DIR, **context)


def write_unit_pages(
    table: pd.DataFrame, settings, folder: str | os.PathLike, sources: LayerSources | None = None
) -> dict[int, str]:
    """Every unit's page (<channel>.html) into `folder`, written whole then renamed; return the NF thumbnails of the
    units that have exemplars and the first actmax image of those that have actmax ({"nf" | "actmax": {channel: PNG
    data URI}}) for the layer index. `settings`: the layer's PageSettings."""
    sources = sources or LayerSources()
    pages = LayerPages.of(table, settings, sources)
    neighbours, thumbnails, done = pages.neighbours(), {"nf": {}, "actmax": {}}, set()
    actmax = ActmaxShards(sources.actmax)
    with atomic_path(folder) as temp:
        temp.mkdir()
        for path in sources.exemplars:
            shard = read_exemplars(path)
            for index, channel in enumerate(shard.channels.tolist()):
                if channel not in pages.records or channel in done:
                    raise AtlasError(
                        f"{path}: unit {channel} is {'listed twice' if channel in done else 'not in the layer table'} "
                        f"({pages.model} {pages.layer!r} has {len(pages.records)} units)"
                    )
                context = pages.context(channel, exemplar_images(shard, index), neighbours[channel])
                context["actmax"] = actmax.images(channel)
                if channel in actmax.where:
                    thumbnails["actmax"][channel] = actmax.thumbnail(channel)
                (temp / f"{channel}.html").write_text(unit_page(context), encoding="utf-8")
                thumbnails["nf"][channel] = png.data_uri(png.thumbnail(shard.nf[index]))
                done.add(channel)
        for channel in pages.records:
            if channel not in done:
                context = pages.context(channel, None, neighbours[channel])
                context["actmax"] = actmax.images(channel)
                if channel in actmax.where:
                    thumbnails["actmax"][channel] = actmax.thumbnail(channel)
                (temp / f"{channel}.html").write_text(unit_page(context), encoding="utf-8")
    return thumbnails
