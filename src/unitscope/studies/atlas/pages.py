"""The atlas's browsable layer page, results/atlas/<model>/<layer>/index.html: one row per unit of the layer table
(units.parquet) with the evidence that exists for the layer, sortable by any column and filtered by a text box in
the browser (plain inline JS and CSS in `templates/atlas_layer.html.j2`; no external file, no CDN). Each row's unit id
links to the unit's page (units/<channel>.html, `unit_page`, written by the same stage) and, where the layer has
exemplars, shows the unit's Neuron Feature as a thumbnail.

Numbers are formatted here; each numeric cell carries its raw value in `data-v` (empty where it is missing), which
the page sorts on, missing values last in either direction. A row's `data-search` holds what the filter
matches, one field a line: the unit id, the best concept and the class names shown in the row (a quoted filter term
matches one field whole, an unquoted one any part). No torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from unitscope.fsutil import atomic_path
from unitscope.report.render import fixed, num, pct, render
from unitscope.settings import Settings
from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.atlas.unit_page import (
    ACTIVATION,
    CLASS_CHANGE,
    LABEL_GROUP,
    LayerSources,
    class_name,
    write_unit_pages,
)

STUDY_DIR = Path(__file__).resolve().parent
NEFESI_INDEXES = ("color_index", "orientation_index", "symmetry_index", "class_index")
THUMBNAIL_KINDS = ("nf", "actmax")  # image columns of the index: first, and not sorted on


@dataclasses.dataclass(frozen=True)
class PageSettings(Settings):
    """atlas_pages, per layer: which layer the page shows and `label_names` {dataset: class names by integer label}
    (config datasets.<d>.label_names), which name integer labels (CIFAR-10's 6 is 'frog')."""

    model: str
    layer: str
    label_names: dict


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the page: `kind` picks its header and legend in the template (`dataset` fills them in);
    `fmt` formats its numbers (None: a text column)."""

    key: str
    kind: str
    fmt: Callable | None = None
    dataset: str = ""

    @property
    def numeric(self) -> bool:
        return self.fmt is not None


def _argmax_named(block: pd.DataFrame, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Per row, the name of its largest value (the first of ties) and the value; '' and NaN where all are NaN."""
    values = block.to_numpy(dtype=np.float64)
    some = ~np.isnan(values).all(axis=1)
    best = np.where(some, np.argmax(np.where(np.isnan(values), -np.inf, values), axis=1), 0)
    top = np.where(some, values[np.arange(len(values)), best], np.nan)
    return [names[b] if ok else "" for b, ok in zip(best, some, strict=True)], top


def _text(series: pd.Series) -> list[str]:
    return ["" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value) for value in series]


def _dissection(table: pd.DataFrame, view: dict, columns: list[Column]) -> None:
    if "dissection.concept" in table:
        view["concept"] = _text(table["dissection.concept"])
        columns.append(Column("concept", "concept"))
    if "dissection.iou" in table:
        view["iou"] = table["dissection.iou"].to_numpy(dtype=np.float64)
        columns.append(Column("iou", "iou", lambda x: fixed(x, 3)))


def _nefesi(table: pd.DataFrame, view: dict, columns: list[Column]) -> None:
    for index in NEFESI_INDEXES:
        if f"nefesi.{index}" in table:
            view[index] = table[f"nefesi.{index}"].to_numpy(dtype=np.float64)
            columns.append(Column(index, index, lambda x: fixed(x, 2)))
    if "nefesi.top_class" in table:
        view["nefesi_top_class"] = _text(table["nefesi.top_class"])
        columns.append(Column("nefesi_top_class", "nefesi_top_class"))


def _activation(table: pd.DataFrame, view: dict, columns: list[Column], label_names: Mapping) -> None:
    """The dataset or shared category with the highest mean activation, and the class (label) with the highest."""
    groups = [m.group(1) for m in map(ACTIVATION.match, table.columns) if m]
    wholes = [g for g in groups if not LABEL_GROUP.match(g)]
    labels = [LABEL_GROUP.match(g).groups() for g in groups if LABEL_GROUP.match(g)]
    if wholes:
        view["top_group"], view["top_group_mean"] = _argmax_named(table[[f"act.{g}.mean" for g in wholes]], wholes)
        columns += [Column("top_group", "top_group"), Column("top_group_mean", "top_group_mean", num)]
    if labels:
        several = len({dataset for dataset, _ in labels}) > 1
        names = [_labelled_class(d, label, label_names, several) for d, label in labels]
        block = table[[f"act.{d}[{label}].mean" for d, label in labels]]
        view["top_label"], view["top_label_mean"] = _argmax_named(block, names)
        columns += [Column("top_label", "top_label"), Column("top_label_mean", "top_label_mean", num)]


def _labelled_class(dataset: str, label: str, label_names: Mapping, several: bool) -> str:
    name = class_name(dataset, label, label_names)
    return f"{name} ({dataset})" if several else name


def _lesion(table: pd.DataFrame, view: dict, columns: list[Column], label_names: Mapping) -> None:
    """KL per dataset; the largest per-class accuracy drop (minus the most negative change) and its class (none
    named where no class loses accuracy)."""
    for dataset in [c.removeprefix("kl.") for c in table.columns if c.startswith("kl.")]:
        view[f"kl.{dataset}"] = table[f"kl.{dataset}"].to_numpy(dtype=np.float64)
        columns.append(Column(f"kl.{dataset}", "kl", num, dataset))
    classes = [m.groups() for m in map(CLASS_CHANGE.match, table.columns) if m]
    if classes:
        several = len({dataset for dataset, _ in classes}) > 1
        names = [_labelled_class(d, label, label_names, several) for d, label in classes]
        drops = 0.0 - table[[f"acc_change.{d}[{label}]" for d, label in classes]]
        worst, drop = _argmax_named(drops, names)
        view["drop"] = drop
        view["drop_class"] = [name if value > 0 else "" for name, value in zip(worst, drop, strict=True)]
        columns += [Column("drop", "drop", pct), Column("drop_class", "drop_class")]


def layer_view(
    table: pd.DataFrame, label_names: Mapping[str, Sequence[str]], thumbnails: Mapping[str, Mapping] | None = None
) -> tuple[pd.DataFrame, list[Column]]:
    """The page's columns from the layer table: one row per unit, in the table's order; only evidence that exists.
    `thumbnails` {kind: {channel: image URI}}, kind "nf" (Neuron Features) or "actmax" (a unit's first actmax image):
    first, unsortable columns of thumbnails (none for a kind without any)."""
    if "unit" not in table or "channel" not in table:
        raise AtlasError(f"the atlas layer table has columns {list(table.columns)[:6]}...; expected 'unit', 'channel'")
    view = {"unit_id": table["unit"].astype(str).tolist(), "channel": table["channel"].to_numpy(dtype=np.int64)}
    columns = []
    for kind in THUMBNAIL_KINDS:
        if (thumbnails or {}).get(kind):
            view[kind] = [thumbnails[kind].get(int(channel), "") for channel in view["channel"]]
            columns.append(Column(kind, kind))
    columns.append(Column("channel", "unit", lambda x: str(int(x))))
    _dissection(table, view, columns)
    _nefesi(table, view, columns)
    _activation(table, view, columns, label_names)
    _lesion(table, view, columns, label_names)
    return pd.DataFrame(view), columns


SEARCHED = ("unit_id", "concept", "nefesi_top_class", "top_label", "drop_class")


def _sort_value(value) -> str:
    """The raw number a cell sorts on: '' when missing (sorted last), else the float's shortest exact form."""
    value = float(value)
    return repr(value) if math.isfinite(value) else ""


def page_rows(view: pd.DataFrame, columns: Sequence[Column]) -> list[dict]:
    """Each unit's row: its id, the words the filter matches, and per column (text, raw value or None)."""
    searched = [key for key in SEARCHED if key in view]
    rows = []
    for record in view.to_dict("records"):
        cells = [
            (column.fmt(record[column.key]), _sort_value(record[column.key]))
            if column.numeric
            else (record[column.key], None)
            for column in columns
        ]
        search = "\n".join(str(record[key]) for key in searched if record[key]).lower()
        rows.append(
            {
                "unit": record["unit_id"],
                "channel": int(record["channel"]),
                "search": search,
                "cells": cells,
                "measure": False,
            }
        )
    for index in measured_rows(rows, columns):
        rows[index]["measure"] = True
    return rows


def measured_rows(rows: Sequence[dict], columns: Sequence[Column], first: int = 50, widest: int = 3) -> set[int]:
    """The rows the browser lays out before it freezes the column widths (the page's `freeze()`): the `first` ones
    and, per column, the `widest` with the longest text, so every column gets as wide as its widest cells need,
    without laying out all the layer's rows at load."""
    keep = set(range(min(first, len(rows))))
    for k, column in enumerate(columns):
        if column.kind not in THUMBNAIL_KINDS:
            lengths = np.array([len(row["cells"][k][0]) for row in rows])
            keep.update(np.argsort(-lengths, kind="stable")[:widest].tolist())
    return keep


def layer_page(table: pd.DataFrame, settings: PageSettings, thumbnails: Mapping[str, Mapping] | None = None) -> str:
    """The layer's index page (HTML) from its units table; `thumbnails` {kind: {channel: image URI}} (`layer_view`)."""
    view, columns = layer_view(table, settings.label_names, thumbnails)
    datasets = sorted({c.dataset for c in columns if c.dataset})
    return render(
        "atlas_layer.html.j2",
        STUDY_DIR,
        model=settings.model,
        layer=settings.layer,
        n_units=len(view),
        columns=columns,
        rows=page_rows(view, columns),
        datasets=datasets,
        label_names=sorted(settings.label_names),
        thumbnails=any(c.kind in THUMBNAIL_KINDS for c in columns),
    )


def write_layer_page(
    table_path: str | os.PathLike,
    settings: PageSettings,
    out_path: str | os.PathLike,
    *,
    units_dir: str | os.PathLike | None = None,
    sources: LayerSources | None = None,
) -> int:
    """Write every unit's page into `units_dir` (default: units/ beside `out_path`, where the index links) and the
    layer's index page to `out_path`; return the number of units. `sources`: the unit pages' other inputs."""
    table = pd.read_parquet(table_path)
    units_dir = Path(units_dir) if units_dir is not None else Path(out_path).parent / "units"
    thumbnails = write_unit_pages(table, settings, units_dir, sources or LayerSources())
    page = layer_page(table, settings, thumbnails)
    with atomic_path(out_path) as temp:
        temp.write_text(page, encoding="utf-8")
    return len(table)
