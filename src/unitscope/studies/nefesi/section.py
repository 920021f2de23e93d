"""The nefesi study's report section: the headline numbers per layer (summary.json) and the context that
templates/nefesi.html.j2 words (the body), nefesi_sentence.txt.j2 (each model's sentence: the conclusion),
nefesi_answer.txt.j2 (the finding card's answer, `finding_of`), nefesi_histograms_caption.txt.j2 (the index
histograms' caption and alt text, in the body and on the card) and nefesi_unit_caption.txt.j2 (each singled-out
unit's figure caption).

Every sentence rests on numbers computed here: means over channels with 95% percentile-bootstrap intervals,
shares with Wilson intervals, and the sample sizes (channels, exemplars, images) they rest on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from unitscope.report.render import ci, fixed, pct, render, render_text
from unitscope.report.sections import ANSWER_CHARS, finding, finding_number, table_rows, unit_hrefs
from unitscope.stats import wilson_interval
from unitscope.studies.nefesi.figures import INDEX_COLUMNS, RESAMPLES, mean_interval
from unitscope.studies.nefesi.storage import read_json

STUDY_DIR = Path(__file__).parent
TITLE = "Neuron Features and selectivity indexes (nefesi)"
# nefesi 1.0.4's own index functions, run side by side with these on ResNet-56 (issue 17: the same model, images,
# top-100 exemplars and receptive-field boxes): what the section's Definitions part states about each index.
NEFESI_104 = {
    "model": "ResNet-56",
    "orientation_r": {"layer1": 0.68, "layer3": 0.90},
    "color_r": (0.97, 0.99),
    "verdicts_agree": {"layer3": 0.55, "layer2": 0.84},
    "verdict_threshold": 0.1,
    "inverted_greys": 84,
    "grey_images": 500,
    "nf_correlation": (0.46, 0.75),
}
QUESTION = (
    "How do the selectivity indexes (color, orientation, symmetry, class) of a model's channels change from the "
    "first to the last analysed layer?"
)


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
        mean, interval, n = mean_interval(table[column].to_numpy(dtype=float))
        summary[f"{name}_index_mean"] = mean
        summary[f"{name}_index_ci95"] = interval
        summary[f"{name}_index_n"] = n
    coloured = alive[alive["color_index"].notna()]  # none for a grayscale model: its colour index is NaN
    selective = int((coloured["color_index"] > color_threshold).sum())
    summary["color_selective"] = selective
    summary["color_selective_share"] = selective / len(coloured) if len(coloured) else None
    summary["color_selective_ci95"] = list(wilson_interval(selective, len(coloured))) if len(coloured) else None
    summary["mean_population_code"] = float(alive["population_code"].mean()) if len(alive) else None
    summary["mean_top_class_share"] = float(alive["top_class_share"].mean()) if len(alive) else None
    summary["probe_windows"] = info["forwards"]
    summary["probe_seconds"] = info["seconds"]
    summary["channels_per_second"] = info["channels"] / info["seconds"] if info["seconds"] else None
    summary["identity_max_abs_error"] = info["identity_max_abs_error"]
    return summary


@dataclass
class ModelResults:
    """What the section reads about one target model: per layer its index table, layer.json and summary; its
    hierarchy.json and the records of its image decompositions."""

    name: str
    layers: list[str]
    tables: dict[str, pd.DataFrame]
    infos: dict[str, dict]
    summaries: dict[str, dict]
    tree: dict
    records: list[dict]

    @classmethod
    def read(cls, name: str, entry: dict, color_threshold: float) -> ModelResults:
        """`entry`: the model's files (plan.NefesiPlan.section_models)."""
        layers = list(entry["layers"])
        tables = {layer: pd.read_parquet(path) for layer, path in zip(layers, entry["tables"], strict=True)}
        infos = {layer: read_json(path) for layer, path in zip(layers, entry["infos"], strict=True)}
        summaries = {layer: layer_summary(tables[layer], infos[layer], color_threshold) for layer in layers}
        records = [read_json(path) for path in entry["decompositions"]]
        return cls(name, layers, tables, infos, summaries, read_json(entry["tree"]), records)


# ----------------------------------------------------------------------------------------------
# context of the templates


def comparison(first: dict, last: dict, key: str, percent: bool = False) -> dict:
    """A number of the first and the last layer with their intervals, whether these overlap, and whether both
    exist and are disjoint (`apart`: the number changes beyond its intervals, the finding's rule)."""
    mean_key, ci_key = (f"{key}_share", f"{key}_ci95") if percent else (f"{key}_mean", f"{key}_ci95")
    a, b = first[mean_key], last[mean_key]
    if a is None or b is None:
        return {"available": False}
    ci_a, ci_b = first[ci_key], last[ci_key]
    overlap = bool(ci_a and ci_b and ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1])
    return {
        "available": True,
        "first": a,
        "first_ci": ci_a,
        "last": b,
        "last_ci": ci_b,
        "overlap": overlap,
        "apart": bool(ci_a and ci_b) and not overlap,
        "percent": percent,
    }


def sentence_context(results: ModelResults, color_threshold: float) -> dict:
    """The model's sentence: each index from the shallowest to the deepest analysed layer."""
    first, last = results.summaries[results.layers[0]], results.summaries[results.layers[-1]]
    return {
        "model": results.name,
        "first_layer": results.layers[0],
        "last_layer": results.layers[-1],
        "first": first,
        "last": last,
        "threshold": color_threshold,
        "color": comparison(first, last, "color_index"),
        "selective": comparison(first, last, "color_selective", percent=True),
        "orientation": comparison(first, last, "orientation_index"),
        "symmetry": comparison(first, last, "symmetry_index"),
        "class_": comparison(first, last, "class_index"),
    }


def index_changes(results: ModelResults) -> dict:
    """The finding's view of one model: each index's mean from the first to the last analysed layer (`comparison`),
    split into those that change beyond their 95% intervals (`changed`: disjoint intervals, the largest change
    first), those that do not (`steady`) and those without values (`missing`: no colour index on grayscale input)."""
    first, last = results.summaries[results.layers[0]], results.summaries[results.layers[-1]]
    indexes = []
    for name in INDEX_COLUMNS:
        compared = comparison(first, last, f"{name}_index")
        if compared["available"]:
            compared["change"] = compared["last"] - compared["first"]
        n = (first[f"{name}_index_n"], last[f"{name}_index_n"])
        indexes.append({"name": name, "n_first": n[0], "n_last": n[1], **compared})
    shown = sorted((i for i in indexes if i["available"]), key=lambda i: (not i["apart"], -abs(i["change"])))
    changed = [{**i, "direction": "rises" if i["change"] > 0 else "falls"} for i in shown if i["apart"]]
    return {
        "model": results.name,
        "first_layer": results.layers[0],
        "last_layer": results.layers[-1],
        "single": len(results.layers) == 1,
        "indexes": shown,
        "changed": changed,
        "steady": [i["name"] for i in indexes if i["available"] and not i["apart"]],
        "missing": [i["name"] for i in indexes if not i["available"]],
    }


def answer(changes: list[dict]) -> tuple[str, list[dict]]:
    """The finding's sentence and the models it speaks of: every model with its means if that fits the card's
    one sentence, else every model in brief, else the first model (with its means, else in brief)."""
    for models, values in ((changes, True), (changes, False), (changes[:1], True), (changes[:1], False)):
        text = render_text(
            "nefesi_answer.txt.j2", STUDY_DIR, models=models, values=values, more=len(changes) - len(models)
        )
        if len(text) <= ANSWER_CHARS:
            break
    return text, models


def index_number(change: dict, index: dict) -> dict:
    """One card number: an index's mean in the last layer with its interval, the first layer's in the label."""
    model, first, last = change["model"], change["first_layer"], change["last_layer"]
    label = f"{model}: mean {index['name']} index in {last} (95% interval)"
    n = f"N = {index['n_last']} channels of {last}"
    if not change["single"]:
        label += f"; in {first} {fixed(index['first'])} {ci(index['first_ci'])}"
        n += f", {index['n_first']} of {first}"
    return finding_number(label, fixed(index["last"]), n=n, interval=ci(index["last_ci"]))


def finding_of(results: list[ModelResults], histograms: list[str]) -> dict:
    """The study's card: how the mean selectivity indexes change from the first to the last analysed layer.
    `histograms`: each model's index histograms (relative to results/report/), the first model's is the card's
    figure. Its numbers are the first model's three indexes that change most (beyond their intervals first); it
    is null when no index of the models it speaks of changes beyond its intervals."""
    changes = [index_changes(model) for model in results]
    text, shown = answer(changes)
    first = changes[0]
    numbers = [index_number(first, index) for index in first["indexes"][:3]]
    texts = histograms_text(results[0])
    return finding(
        question=QUESTION,
        answer=text,
        numbers=numbers,
        figure={"src": histograms[0], "caption": texts["caption"], "alt": texts["alt"]},
        null=not any(change["changed"] for change in shown),
    )


def histograms_text(results: ModelResults) -> dict:
    """Caption and alt text of a model's index histograms (in its section and on the card)."""
    h = {
        "model": results.name,
        "layers": results.layers,
        "first": results.layers[0],
        "last": results.layers[-1],
        "channels": {layer: results.summaries[layer]["channels"] for layer in results.layers},
        "top_n": results.summaries[results.layers[0]]["top_n"],
        "images": results.summaries[results.layers[0]]["images"],
    }
    return {
        part: render_text("nefesi_histograms_caption.txt.j2", STUDY_DIR, h=h, alt=part == "alt")
        for part in ("caption", "alt")
    }


def _estimate(mean: float | None, interval: list[float] | None) -> str:
    """'0.17 [0.05, 0.31]' (the interval left out when there is none)."""
    return fixed(mean) + (f" {ci(interval)}" if interval else "")


def _field_text(summary: dict, info: dict):
    """The field's size, or that its units see the whole image (layer.json marks such axes `whole`)."""
    whole = info["receptive_field"].get("whole", [False, False])
    return f"{summary['receptive_field']} (whole image)" if any(whole) else summary["receptive_field"]


def layer_table(results: ModelResults) -> dict:
    """Per layer: channels, field, each index's mean with its interval, the color-selective share, probe work."""
    rows = []
    for layer in results.layers:
        s, info = results.summaries[layer], results.infos[layer]
        share, share_ci = s["color_selective_share"], s["color_selective_ci95"]
        window = info["probe_window"]
        rows.append(
            {
                "layer": layer,
                "channels (dead)": f"{s['channels']} ({s['dead_channels']})",
                "field (px)": _field_text(s, info),
                "color index": _estimate(s["color_index_mean"], s["color_index_ci95"]),
                "color-selective": "n/a (no colour index)"
                if share is None
                else f"{s['color_selective']}/{s['channels'] - s['dead_channels']} = {pct(share, 0)}"
                + (f" {ci(share_ci, percent=True, digits=0)}" if share_ci else ""),
                "orientation index": _estimate(s["orientation_index_mean"], s["orientation_index_ci95"]),
                "symmetry index": _estimate(s["symmetry_index_mean"], s["symmetry_index_ci95"]),
                "class index": _estimate(s["class_index_mean"], s["class_index_ci95"]),
                "population code": fixed(s["mean_population_code"], 1),
                "probe windows": f"{info['forwards']:,} of {window[0]}×{window[1]} px",
                "probe time": f"{fixed(info['seconds'], 0)} s",
            }
        )
    header, cells = table_rows(pd.DataFrame(rows))
    return {"header": header, "rows": cells}


def top_units_table(model: str, tops: list[tuple[str, dict]]) -> dict | None:
    """The channels this study singles out, as (index name, unit) pairs, linked to their unit pages."""
    if not tops:
        return None
    frame = pd.DataFrame(
        {
            "layer": [unit["layer"] for _, unit in tops],
            "highest index": [name for name, _ in tops],
            "channel": [unit["channel"] for _, unit in tops],
            "value": [fixed(unit["facts"][f"nefesi: highest {name} index of its layer"]) for name, unit in tops],
            "NF colours": [unit["facts"]["nefesi NF colours"] for _, unit in tops],
            "top class (share)": [unit["facts"]["nefesi top class"] for _, unit in tops],
        }
    )
    links = {"channel": unit_hrefs([model] * len(tops), frame["layer"], frame["channel"])}
    header, cells = table_rows(frame, links=links)
    return {"header": header, "rows": cells}


def notes_context(results: ModelResults) -> dict:
    """What the numbers rest on: whole-image crops per layer, and per layer the channels whose exemplars come
    from fewer classes than possible."""
    whole = [
        {"layer": layer, "share": info["whole_image_exemplars"] / max(info["exemplar_crops"], 1)}
        for layer, info in results.infos.items()
        if info.get("whole_image_exemplars")
    ]
    layers = []
    for layer in results.layers:
        table = results.tables[layer][~results.tables[layer]["dead"]]
        layers.append(
            {
                "layer": layer,
                "below": int((table["class_M"] < table["class_K"]).sum()),
                "live": len(table),
                "classes": int(table["class_K"].max()) if len(table) else 0,
                "top_share": table["top_class_share"].mean(),
            }
        )
    return {"whole": whole, "layers": layers}


def class_scale(results: ModelResults) -> dict:
    """A model's N (top-N) and K (classes its class index counts against, min(N, classes in the set)), and how the
    two class-index scales relate: with K < N nefesi's (N − M)/(N − 1) lies in [(N − K)/(N − 1), 1], and
    1 − top_n index = (1 − classes index)·(K − 1)/(N − 1)."""
    info = results.infos[results.layers[0]]
    n = int(info["top_n"])
    k = min(n, int(info["classes"]))
    return {
        "model": results.name,
        "n": n,
        "k": k,
        "top_n_low": (n - k) / (n - 1) if n > 1 else None,
        "factor": (k - 1) / (n - 1) if n > 1 else None,
    }


def definitions(settings: dict, contexts: list[dict]) -> dict:
    """What the Definitions part states: the chosen class-index scale and gray (the schema's defaults where
    `settings` does not name them), each model's class scale, and nefesi 1.0.4's side-by-side numbers."""
    return {
        "class_index_scale": settings.get("class_index_scale", "classes"),
        "color_grey": settings.get("color_grey", "luminance"),
        "scales": [context["class_scale"] for context in contexts],
        "nefesi": NEFESI_104,
    }


def model_context(results: ModelResults, figures: dict, tops: list[tuple[str, dict]], settings: dict) -> dict:
    """Everything the body says about one model; `figures`: its figure paths relative to results/report/."""
    tree = results.tree
    return {
        "name": results.name,
        "sentence": render_text(
            "nefesi_sentence.txt.j2", STUDY_DIR, s=sentence_context(results, settings["color_selective_threshold"])
        ),
        "layer_table": layer_table(results),
        "notes": notes_context(results),
        "class_scale": class_scale(results),
        "histograms": {"src": figures["histograms"], **histograms_text(results)},
        "layers": [
            {
                "name": layer,
                "info": results.infos[layer],
                "grid": figures["grids"][layer],
                "top": figures["tops"][layer],
            }
            for layer in results.layers
        ],
        "top_units": top_units_table(results.name, tops),
        "hierarchy": {"src": figures["hierarchy"], **tree, "first_level": tree["tree"]["children"]},
        "decompositions": [
            {"src": src, **record} for record, src in zip(results.records, figures["decompositions"], strict=True)
        ],
    }


def section_body(contexts: list[dict], settings: dict) -> str:
    """The section's HTML body."""
    return render(
        "nefesi.html.j2",
        STUDY_DIR,
        models=contexts,
        settings=settings,
        definitions=definitions(settings, contexts),
        order_by=settings["order_by"],
        order_by_index=settings["order_by"] in INDEX_COLUMNS,
        resamples=RESAMPLES,
    )


def conclusion(contexts: list[dict]) -> str:
    """One sentence per model (plain text: the landing page escapes it)."""
    return " ".join(context["sentence"] for context in contexts)


def attach_unit_images(units: list[dict], drawn: dict, infos: dict[str, dict], units_src: str) -> None:
    """List each unit's figure (drawn by units.draw_unit_figures) in the unit's `images`, with its caption."""
    for unit in units:
        figure = drawn[(unit["layer"], unit["channel"])]
        info = infos[unit["layer"]]
        (row0, row1), (col0, col1) = info["nf_extent"]
        caption = render_text(
            "nefesi_unit_caption.txt.j2",
            STUDY_DIR,
            unit=unit,
            drawn=figure,
            info=info,
            visible=(row1 - row0, col1 - col0),
        )
        unit["images"] = [{"src": f"{units_src}/{figure['file']}", "caption": caption}]


def units_src(out_units: str | os.PathLike, report_dir: str | os.PathLike = "results/report") -> str:
    """The units' figure folder as the report reaches it (relative to results/report/)."""
    return os.path.relpath(out_units, report_dir)
