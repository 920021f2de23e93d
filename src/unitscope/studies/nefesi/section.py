"""The nefesi study's report section and headline numbers (results/nefesi/section.json).

Every sentence is built from the numbers: means with 95% intervals over channels, shares with Wilson intervals,
and the sample sizes (channels, exemplars, images) they rest on.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from unitscope.fsutil import atomic_path
from unitscope.report.sections import html_table, unit_hrefs, write_section
from unitscope.stats import bootstrap_interval, wilson_interval
from unitscope.studies.nefesi.figures import run_unit_figures

INDEX_COLUMNS = {
    "color": "color_index",
    "orientation": "orientation_index",
    "symmetry": "symmetry_index",
    "class": "class_index",
}
FORMULAS = [
    (
        "Neuron Feature",
        "NF = Σ<sub>n</sub> w<sub>n</sub>·crop<sub>n</sub>, w<sub>n</sub> = a<sub>n</sub> / "
        "Σ<sub>m</sub> a<sub>m</sub> over the top-N exemplars (activations clipped at 0); a crop is the unit's "
        "receptive field cut from the model-input image, padded with the mean colour where the field leaves it.",
    ),
    (
        "color",
        "CI = clip(1 − Σ<sub>n</sub> R(gray)<sub>n</sub> / Σ<sub>n</sub> R(id)<sub>n</sub>, 0, 1), gray = "
        "luminance 0.299 R + 0.587 G + 0.114 B; colour names: nearest of 11 basic terms (CIELab) per NF pixel.",
    ),
    (
        "orientation",
        "ratio(θ) = Σ<sub>n</sub> R(rot θ)<sub>n</sub> / Σ<sub>n</sub> R(id)<sub>n</sub> for θ = "
        "s, 2s, …, 360° − s; OI = clip(1 − mean<sub>θ</sub> ratio(θ), 0, 1); preferred angle = dominant edge "
        "orientation of the NF (structure tensor, 0° = horizontal).",
    ),
    (
        "symmetry",
        "SI = clip(mean<sub>φ</sub> Σ<sub>n</sub> R(mirror φ)<sub>n</sub> / Σ<sub>n</sub> R(id)<sub>n</sub>, "
        "0, 1) over mirror axes φ = 0°, 45°, 90°, 135°.",
    ),
    (
        "class",
        "f<sub>k</sub> = Σ<sub>n: class k</sub> w<sub>n</sub>; M = fewest classes whose sorted "
        "f<sub>k</sub> reach the coverage; CSI = (K − M)/(K − 1), K = min(N, classes in the set); population "
        "code = #classes with f<sub>k</sub> ≥ the population threshold.",
    ),
]


def _mean_ci(values: np.ndarray, resamples: int = 2000) -> tuple[float | None, list[float] | None, int]:
    """Mean over channels and its 95% percentile-bootstrap interval (seeded: the section is reproducible;
    it stays inside the index's [0, 1] range, unlike a normal approximation)."""
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(values.mean())
    if n < 2:
        return mean, None, n
    return mean, list(bootstrap_interval(values, np.random.default_rng(0), resamples)), n


def layer_summary(table: pd.DataFrame, info: dict, color_threshold: float) -> dict:
    """Headline numbers of one layer: mean of each index (95% CI over channels), color-selective share."""
    alive = table[~table["dead"]]
    summary = {
        "channels": int(len(table)),
        "dead_channels": int(table["dead"].sum()),
        "top_n": info["top_n"],
        "images": info["images"],
        "classes": info["classes"],
        "receptive_field": info["receptive_field"]["size"][0],
    }
    for name, column in INDEX_COLUMNS.items():
        mean, ci, n = _mean_ci(table[column].to_numpy(dtype=float))
        summary[f"{name}_index_mean"] = mean
        summary[f"{name}_index_ci95"] = ci
        summary[f"{name}_index_n"] = n
    selective = int((alive["color_index"] > color_threshold).sum())
    summary["color_selective"] = selective
    summary["color_selective_share"] = selective / len(alive) if len(alive) else None
    summary["color_selective_ci95"] = list(wilson_interval(selective, len(alive))) if len(alive) else None
    summary["mean_population_code"] = float(alive["population_code"].mean()) if len(alive) else None
    summary["mean_top_class_share"] = float(alive["top_class_share"].mean()) if len(alive) else None
    summary["probe_windows"] = info["forwards"]
    summary["probe_seconds"] = info["seconds"]
    summary["channels_per_second"] = info["channels"] / info["seconds"] if info["seconds"] else None
    summary["identity_max_abs_error"] = info["identity_max_abs_error"]
    return summary


def _fmt(value, digits=2) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _ci_percent(ci) -> str:
    return "" if not ci else f" [{ci[0]:.0%}, {ci[1]:.0%}]"


def _compare(first: dict, last: dict, key: str, percent: bool = False) -> str:
    """'a [lo, hi] → b [lo, hi]' with '(intervals overlap)' when they do: the reader sees the change and its
    uncertainty, not a verdict."""
    mean_key, ci_key = (f"{key}_share", f"{key}_ci95") if percent else (f"{key}_mean", f"{key}_ci95")
    a, b = first[mean_key], last[mean_key]
    if a is None or b is None:
        return "not available"

    def text(value, ci):
        if percent:
            return f"{value:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")
        return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    ci_a, ci_b = first[ci_key], last[ci_key]
    overlap = bool(ci_a and ci_b and ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1])
    return f"{text(a, ci_a)} → {text(b, ci_b)}" + (" (intervals overlap)" if overlap else "")


def model_sentence(model: str, layers: list[str], summaries: dict[str, dict], color_threshold: float) -> str:
    """One sentence per model: each index from the shallowest to the deepest analysed layer, with 95% intervals."""
    first, last = summaries[layers[0]], summaries[layers[-1]]
    return (
        f"In {model} from {layers[0]} ({first['channels']} channels) to {layers[-1]} ({last['channels']} channels), "
        f"top-{first['top_n']} exemplars of {first['images']} images ({first['classes']} classes), the mean color "
        f"index goes {_compare(first, last, 'color_index')} and the share of color-selective channels (color index "
        f"> {color_threshold:g}) {_compare(first, last, 'color_selective', percent=True)}; orientation "
        f"{_compare(first, last, 'orientation_index')}, symmetry {_compare(first, last, 'symmetry_index')}, class "
        f"{_compare(first, last, 'class_index')}."
    )


def _layer_table_html(layers: list[str], summaries: dict[str, dict], infos: dict[str, dict]) -> str:
    rows = []
    for layer in layers:
        s, info = summaries[layer], infos[layer]
        share = s["color_selective_share"]
        rows.append(
            {
                "layer": layer,
                "channels (dead)": f"{s['channels']} ({s['dead_channels']})",
                "field (px)": s["receptive_field"],
                "color index": f"{_fmt(s['color_index_mean'])}{_ci(s['color_index_ci95'])}",
                "color-selective": f"{s['color_selective']}/{s['channels'] - s['dead_channels']}"
                f" = {'–' if share is None else f'{share:.0%}'}{_ci_percent(s['color_selective_ci95'])}",
                "orientation index": f"{_fmt(s['orientation_index_mean'])}{_ci(s['orientation_index_ci95'])}",
                "symmetry index": f"{_fmt(s['symmetry_index_mean'])}{_ci(s['symmetry_index_ci95'])}",
                "class index": f"{_fmt(s['class_index_mean'])}{_ci(s['class_index_ci95'])}",
                "population code": _fmt(s["mean_population_code"], 1),
                "probe windows": f"{info['forwards']:,} of {info['probe_window'][0]}×{info['probe_window'][1]} px",
                "probe time": f"{info['seconds']:.0f} s",
            }
        )
    return html_table(pd.DataFrame(rows))


def _top_units_html(model: str, tops: list[tuple[str, dict]]) -> str:
    """The channels this study singles out, as (index name, unit) pairs, linked to their unit pages."""
    if not tops:
        return ""
    frame = pd.DataFrame(
        {
            "layer": [unit["layer"] for _, unit in tops],
            "highest index": [name for name, _ in tops],
            "channel": [unit["channel"] for _, unit in tops],
            "value": [_fmt(unit["facts"][f"nefesi: highest {name} index of its layer"]) for name, unit in tops],
            "NF colours": [unit["facts"]["nefesi NF colours"] for _, unit in tops],
            "top class (share)": [unit["facts"]["nefesi top class"] for _, unit in tops],
        }
    )
    links = {"channel": unit_hrefs([model] * len(tops), frame["layer"], frame["channel"])}
    return html_table(frame, links=links, caption="Channels with the highest value of each index per layer.")


def _figure(path: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(path)}"><figcaption>{caption}</figcaption></figure>'


def _tree_text(node: dict) -> str:
    return ", ".join(f"{child['layer']} c{child['channel']} ({child['weight']:.2f})" for child in node["children"])


def _notes(model: str, layers: list[str], tables: dict[str, pd.DataFrame], infos: dict[str, dict]) -> str:
    """What the numbers rest on, in sentences built from them: whole-image fields, classes left out."""
    notes = []
    whole = [
        f"{layer} {info['whole_image_exemplars'] / max(info['exemplar_crops'], 1):.0%}"
        for layer, info in infos.items()
        if info.get("whole_image_exemplars")
    ]
    if whole:
        notes.append(
            "Share of exemplar crops that are the whole image (the unit's field contains it, so the crop turns or "
            f"mirrors about the image centre): {', '.join(whole)}."
        )
    for layer in layers:
        table = tables[layer][~tables[layer]["dead"]]
        below = int((table["class_M"] < table["class_K"]).sum())
        notes.append(
            f"{layer}: {below} of {len(table)} live channels have exemplars from fewer than "
            f"{int(table['class_K'].max()) if len(table) else 0} classes (class index above 0); the most frequent "
            f"class holds on average {table['top_class_share'].mean():.2f} of the exemplar weight."
        )
    return "<p>" + " ".join(html.escape(note) for note in notes) + "</p>"


def _histogram_caption(model: str, layers: list[str], summaries: dict[str, dict]) -> str:
    counts = ", ".join(f"{layer}: {summaries[layer]['channels']}" for layer in layers)
    first = summaries[layers[0]]
    return (
        f"Distribution over channels of the four indexes per layer of {html.escape(model)}; red line = mean. "
        f"n = {html.escape(counts)} channels; each index rests on the top-{first['top_n']} exemplars of "
        f"{first['images']} images per channel."
    )


def _grid_caption(layer: str, info: dict, order_by: str) -> str:
    what = f"{order_by} index" if order_by in INDEX_COLUMNS else order_by
    return (
        f"Neuron Features of all {info['channels']} channels of {html.escape(layer)} (receptive field "
        f"{info['receptive_field']['size'][0]} px, shown where it holds image pixels), ordered by "
        f"{html.escape(what)}; each NF averages the top {info['top_n']} crops of {info['images']} images."
    )


def _top_caption(layer: str) -> str:
    return (
        f"{html.escape(layer)}: the channels with the highest value of each index, with their NFs (color: "
        "dominant colour name; orientation: preferred angle; class: most frequent class)."
    )


def _tree_caption(model: str, tree: dict) -> str:
    return (
        f"Hierarchical decomposition of {html.escape(model)} {html.escape(tree['layer'])} channel {tree['channel']} "
        f"(chosen: {html.escape(tree['chosen'])}). Under each NF, the {len(tree['tree']['children'])} channels of "
        "the next shallower analysed layer with the highest weight = activation-weighted mean over the node's "
        "exemplars of their maximum inside the unit's cone, divided by their own top activation. First level: "
        f"{html.escape(_tree_text(tree['tree']))}."
    )


def _decomposition_caption(record: dict) -> str:
    listed = ", ".join(f"c{u['channel']} ({u['relative']:.2f})" for u in record["units"][:6])
    return (
        f"Image decomposition at {html.escape(record['layer'])} of {html.escape(record['dataset'])} image "
        f"{html.escape(str(record['image_id']))} (class {html.escape(str(record['class']))}): "
        f"{len(record['units'])} units chosen greedily by activation / the channel's top activation with limited "
        f"field overlap, their NFs drawn on their fields: {html.escape(listed)}."
    )


def _unit(model: str, layer: str, name: str, column: str, row: pd.Series) -> dict:
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


def _unit_caption(unit: dict, drawn: dict, info: dict) -> str:
    """Plain text (the unit page escapes it)."""
    size = info["receptive_field"]["size"]
    (row0, row1), (col0, col1) = info["nf_extent"]
    shown = drawn["shown"]
    return (
        f"{unit['model']} {unit['layer']} channel {unit['channel']}. Left: its Neuron Feature (NF), the "
        f"activation-weighted mean of its top {drawn['exemplars']} exemplar crops (each image once, searched over "
        f"{info['images']} images); receptive field {size[0]}×{size[1]} px, shown where it can hold image pixels "
        f"({row1 - row0}×{col1 - col0} px, mean colour outside the image). Right: the exemplar crops of rank 1 to "
        f"{shown} (the {shown} highest activations), each labelled with its rank, activation a, weight w in the NF "
        "and the image's class."
    )


def _method_html(settings: dict) -> str:
    return (
        "<p>Every channel is described, as in nefesi, by its top-N exemplars (image, location pairs with the "
        "highest activation, each image once), its Neuron Feature and four selectivity indexes computed by "
        "re-running the model on transformed exemplar crops. A crop's response is the channel's activation at the "
        "exemplar's location after the part of its receptive field inside the image is replaced by the transformed "
        "crop (rotations and mirrors turn the crop, padded with the mean colour, about the unit's field centre; a "
        "unit whose field contains the whole image has the whole image as its crop, turned about the image centre); "
        "it is computed on a stride-aligned window around the field, which gives the same activation as the "
        "whole image (the untransformed windows reproduce the exemplar activations; the largest difference per "
        "layer is in the summary as identity_max_abs_error).</p><ul>"
        + "".join(f"<li><b>{name}</b>: {text}</li>" for name, text in FORMULAS)
        + f"</ul><p>Settings: rotation step {settings['rotation_step']:g}°, class coverage "
        f"{settings['class_coverage']:g}, population threshold {settings['population_threshold']:g}; a channel "
        f"counts as color-selective when its color index exceeds {settings['color_selective_threshold']:g}. "
        "Intervals are 95%: percentile bootstrap over channels (2,000 resamples) for means, Wilson for shares.</p>"
    )


def _unit_figures(model: str, entry: dict, infos: dict, units: list[dict], folder, units_src: str, count: int) -> None:
    """Draw each unit's figure (its NF beside its top `count` exemplar crops) into `folder` and list it in the
    unit's `images`."""
    drawn = run_unit_figures(
        model_name=model,
        units=[(unit["layer"], unit["channel"]) for unit in units],
        exemplars_path=entry["exemplars"],
        images_path=entry["images"],
        nf_paths=dict(zip(entry["layers"], entry["nfs"], strict=True)),
        infos=infos,
        preprocessing=entry["preprocessing"],
        count=count,
        out_dir=folder,
    )
    for unit in units:
        figure = drawn[(unit["layer"], unit["channel"])]
        caption = _unit_caption(unit, figure, infos[unit["layer"]])
        unit["images"] = [{"src": f"{units_src}/{figure['file']}", "caption": caption}]


def build_section(
    *, models: dict[str, dict], settings: dict, out_section, out_units, units_src: str, unit_exemplars: int = 8
) -> dict:
    """models: {name: {layers, tables, infos, tree, decompositions, exemplars, images, nfs, preprocessing,
    figures: {histograms, hierarchy, grids, tops, decompositions}}}, paths; figure paths relative to
    results/report/. Each singled-out unit gets a figure (its NF beside its top `unit_exemplars` crops) in the
    folder `out_units` (written whole, then renamed into place), which the report reaches as `units_src`."""
    color_threshold = settings["color_selective_threshold"]
    sentences, body, units = [], [_method_html(settings)], []
    summary = {"settings": settings, "layers": {}}
    drawings = []
    for model, entry in models.items():
        layers = entry["layers"]
        tables = {layer: pd.read_parquet(path) for layer, path in zip(layers, entry["tables"], strict=True)}
        infos = {layer: json.loads(Path(path).read_text()) for layer, path in zip(layers, entry["infos"], strict=True)}
        summaries = {layer: layer_summary(tables[layer], infos[layer], color_threshold) for layer in layers}
        summary["layers"].update({f"{model}/{layer}": summaries[layer] for layer in layers})
        sentence = model_sentence(model, layers, summaries, color_threshold)
        sentences.append(sentence)
        figures = entry["figures"]
        body.append(f"<h3>{html.escape(model)}</h3><p>{html.escape(sentence)}</p>")
        body.append(_layer_table_html(layers, summaries, infos))
        body.append(_notes(model, layers, tables, infos))
        body.append(_figure(figures["histograms"], _histogram_caption(model, layers, summaries)))
        tops = []
        for layer in layers:
            body.append(_figure(figures["grids"][layer], _grid_caption(layer, infos[layer], settings["order_by"])))
            body.append(_figure(figures["tops"][layer], _top_caption(layer)))
            table = tables[layer]
            for name, column in INDEX_COLUMNS.items():
                finite = table[np.isfinite(table[column].to_numpy(dtype=float))]
                ranked = finite.sort_values(column, ascending=False, kind="stable")  # ties: lowest channel first
                if not ranked.empty:
                    tops.append((name, _unit(model, layer, name, column, ranked.iloc[0])))
        body.append(_top_units_html(model, tops))
        model_units = merge_units([unit for _, unit in tops])
        units.extend(model_units)
        drawings.append((model, entry, infos, model_units))
        tree = json.loads(Path(entry["tree"]).read_text())
        body.append(_figure(figures["hierarchy"], _tree_caption(model, tree)))
        records = [json.loads(Path(path).read_text()) for path in entry["decompositions"]]
        for record, path in zip(records, figures["decompositions"], strict=True):
            body.append(_figure(path, _decomposition_caption(record)))
        if not records:
            body.append(
                f"<p>No image decomposition is configured for {html.escape(model)} "
                f"(nefesi.targets decompose_layer is null).</p>"
            )
    with atomic_path(out_units) as folder:
        folder.mkdir()
        for model, entry, infos, model_units in drawings:
            _unit_figures(model, entry, infos, model_units, folder, units_src, unit_exemplars)
    return write_section(
        out_section,
        study="nefesi",
        title="Neuron Features and selectivity indexes (nefesi)",
        conclusion=" ".join(sentences),
        body_html="\n".join(body),
        summary=summary,
        units=units,
    )
