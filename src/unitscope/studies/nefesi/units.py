"""The units the nefesi study singles out: per layer, the channel with the highest value of each index. Their facts
go to their unit pages (section.json `units`), and each gets a figure: its Neuron Feature beside its top exemplar
crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unitscope.report.sections import unit_page_name
from unitscope.studies.nefesi.figures import INDEX_COLUMNS, unit_figure, unit_labels, unit_title
from unitscope.studies.nefesi.images import exemplar_crops, layer_field, model_inputs
from unitscope.studies.nefesi.storage import read_nf


def top_units(model: str, layer: str, table: pd.DataFrame) -> list[tuple[str, dict]]:
    """(index name, unit) for each index: the layer's channel with its highest value (ties: lowest channel)."""
    tops = []
    for name, column in INDEX_COLUMNS.items():
        finite = table[np.isfinite(table[column].to_numpy(dtype=float))]
        ranked = finite.sort_values(column, ascending=False, kind="stable")  # ties: lowest channel first
        if not ranked.empty:
            tops.append((name, unit_entry(model, layer, name, column, ranked.iloc[0])))
    return tops


def unit_entry(model: str, layer: str, name: str, column: str, row: pd.Series) -> dict:
    """A unit page entry: the channel of `row` (an index table row), with the highest `name` index of its layer."""

    def rounded(value):
        return None if not np.isfinite(value) else round(float(value), 3)

    return {
        "model": model,
        "layer": layer,
        "channel": int(row["channel"]),
        "facts": {
            f"nefesi: highest {name} index of its layer": rounded(row[column]),
            "nefesi color index": rounded(row["color_index"]),
            "nefesi orientation index": rounded(row["orientation_index"]),
            "nefesi symmetry index": rounded(row["symmetry_index"]),
            "nefesi class index": rounded(row["class_index"]),
            "nefesi NF colours": row["color_names"],
            "nefesi top class": f"{row['top_class']} ({row['top_class_share']:.2f})",
        },
    }


def merge_units(units: list[dict]) -> list[dict]:
    """One entry per (model, layer, channel), in first-seen order: a channel with the highest value of several
    indexes gets one unit page entry that lists each of them (the shared facts once)."""
    merged: dict[tuple, dict] = {}
    for unit in units:
        key = (unit["model"], unit["layer"], int(unit["channel"]))
        if key not in merged:
            merged[key] = {**unit, "facts": dict(unit["facts"])}
            continue
        facts = merged[key]["facts"]
        highest = {k: v for f in (facts, unit["facts"]) for k, v in f.items() if k.startswith("nefesi: highest")}
        merged[key]["facts"] = {**highest, **{k: v for k, v in facts.items() if k not in highest}}
    return list(merged.values())


def unit_figure_name(model_name: str, layer: str, channel: int) -> str:
    """File name of a unit's figure: its page's name (sections.unit_page_name) with .png."""
    return unit_page_name(model_name, layer, channel).removesuffix(".html") + ".png"


def draw_unit_figures(
    *,
    model_name: str,
    units: list[tuple[str, int]],
    exemplars_path,
    images_path,
    nf_paths: dict,
    infos: dict[str, dict],
    preprocessing: dict,
    count: int,
    out_dir,
) -> dict[tuple[str, int], dict]:
    """For each (layer, channel) in `units`: its NF beside its top `count` exemplar crops, written to
    out_dir/<model>__<layer>__<channel>.png. Returns per unit the file name, the exemplars its NF averages and the
    number of crops shown."""
    exemplars = pd.read_parquet(exemplars_path)
    images = pd.read_parquet(images_path).set_index("image", drop=False)
    drawn = {}
    for layer in dict.fromkeys(layer for layer, _ in units):
        nf = read_nf(nf_paths[layer])
        rows = exemplars[(exemplars["layer"] == layer) & (exemplars["image"] >= 0)]
        for channel in dict.fromkeys(channel for unit_layer, channel in units if unit_layer == layer):
            name = unit_figure_name(model_name, layer, channel)
            own, shown = _draw_unit(
                model_name, layer, channel, rows, images, nf, infos[layer], preprocessing, count, Path(out_dir) / name
            )
            drawn[(layer, int(channel))] = {"file": name, "exemplars": own, "shown": shown}
    return drawn


def _draw_unit(model_name, layer, channel, rows, images, nf, info, preprocessing, count, path) -> tuple[int, int]:
    """One unit's figure; returns how many exemplars its NF averages and how many crops it shows."""
    own = rows[rows["channel"] == channel].sort_values("rank")
    positive = own["activation"].clip(lower=0)
    weights = positive / positive.sum() if positive.sum() > 0 else positive * 0
    shown = own.head(count)
    pictures = images.loc[shown["image"].to_numpy()]
    crops = exemplar_crops(
        model_inputs(pictures, preprocessing),
        layer_field(info),
        shown["y"],
        shown["x"],
        info["nf_extent"],
        preprocessing["mean"],
        preprocessing["std"],
    )
    labels = unit_labels(shown, weights.loc[shown.index], pictures["class"])
    title = unit_title(model_name, layer, channel, info, len(own), len(shown))
    unit_figure(nf[channel], crops, labels, title, path)
    return len(own), len(shown)
