"""The report section of the dissection study: its summary, the units it singles out, its card on the landing
page (`finding_of`), and the context that templates/dissection*.j2 word.

Every number is read from the stage outputs (results/dissection/...); the direction of a change (a count that
did not change is said not to change) is decided here, the sentences are in the templates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.report.render import ci, fixed, pct, render, render_text
from unitscope.report.sections import ANSWER_CHARS, finding, finding_number, table_rows, unit_hrefs
from unitscope.studies.dissection.outputs import BOOTSTRAP_RESAMPLES
from unitscope.studies.dissection.units import STUDY_UNITS_PER_LAYER, study_units, unit_image_name

if TYPE_CHECKING:  # annotations only
    from unitscope.studies.dissection.plan import SectionSettings

STUDY = "dissection"
TITLE = "Network dissection: units that detect concepts"
STUDY_DIR = Path(__file__).resolve().parent
HEADLINE = ("detectors", "unique_best", "unique_per_category", "mean_best_iou")  # numbers with 95% intervals
QUESTION = (
    "Which units detect human-labelled concepts, and does a random rotation of a layer's basis change how many "
    "detectors there are (Bau et al.'s rotation experiment)?"
)


def relative_figure(path: str | os.PathLike) -> str:
    """A figure's path as the report page sees it (relative to results/report/)."""
    parts = Path(path).as_posix().split("results/report/", 1)
    return parts[1] if len(parts) == 2 else Path(path).as_posix()


def _known(row: dict, name: str) -> bool:
    """Whether the layer row has `name` (layer tables written before a column existed lack it)."""
    return row.get(name) is not None and not pd.isna(row.get(name))


def _interval(row: dict, name: str) -> list[float] | None:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return None if low is None or pd.isna(low) else [low, high]


# ------------------------------------------------------------------------------------------------
# summary


def layer_entry(row: dict, of_layer: pd.DataFrame, categories: list[str]) -> dict:
    """One layer's numbers in the summary: counts, per-category detectors, detected concepts, intervals."""
    detected = of_layer[of_layer["detector"]]["concept"].value_counts()
    entry = {
        key: row[key]
        for key in ("units", "detectors", "unique_best", "unique_per_category", "mean_best_iou", "empty_units")
    }
    entry.update({f"detectors_{c}": int(row[f"detectors_{c}"]) for c in categories})
    entry["concepts_detected"] = {str(k): int(v) for k, v in detected.items()}
    if _known(row, "saturated_units"):
        entry["saturated_units"] = int(row["saturated_units"])
        entry["saturated_detectors"] = int(row["saturated_detectors"])
    for name in HEADLINE:
        if pd.notna(row.get(f"{name}_ci_low")):
            entry[f"{name}_ci95"] = [row[f"{name}_ci_low"], row[f"{name}_ci_high"]]
    return entry


def rotation_summary(rotation: pd.DataFrame) -> dict:
    out = {}
    for alpha, group in rotation.groupby("alpha"):
        entry = {"seeds": int(group["seed"].nunique())}
        for column in ("detectors", "unique_best", "unique_per_category", "mean_best_iou"):
            values = group[column].to_numpy(dtype=float)
            entry[column] = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "min": float(values.min()),
                "max": float(values.max()),
            }
        out[f"{alpha:g}"] = entry
    return out


def section_summary(
    layers: pd.DataFrame,
    units: pd.DataFrame,
    tallies: dict,
    rotation: pd.DataFrame | None,
    settings: SectionSettings,
) -> dict:
    """The study's headline numbers (results/summary.json): the data, every layer, the rotation experiment."""
    categories = [str(c) for c in tallies["categories"]]
    summary = {
        "images": len(tallies["image_ids"]),
        "concept_source": settings.kind,
        "concepts": {c: int((tallies["concept_categories"] == c).sum()) for c in categories},
        "mask_shape": [int(x) for x in tallies["mask_shape"]],
        "quantile": settings.quantile,
        "iou_threshold": settings.iou_threshold,
        "layers": {},
    }
    for model, table in layers.groupby("model", sort=False):
        for row in table.sort_values("depth").to_dict("records"):
            of_layer = units[(units["model"] == model) & (units["layer"] == row["layer"])]
            summary["layers"][f"{model}/{row['layer']}"] = layer_entry(row, of_layer, categories)
    if rotation is not None and len(rotation):
        summary["rotation"] = {
            "model": rotation["model"].iloc[0],
            "layer": rotation["layer"].iloc[0],
            "mask_size": settings.rotation_mask_size,
            "seeds": int(rotation["seed"].nunique()),
            "alphas": rotation_summary(rotation),
        }
    return summary


def saturated_layers(layers: pd.DataFrame, units: pd.DataFrame) -> list[dict] | None:
    """Per layer (by model, then depth): how many units have their threshold at their maximum activation (their
    mask is `>= T_k`), how many of those are detectors, and those detectors' concepts (most frequent first, ties
    alphabetical). None when the layer table predates the count."""
    if "saturated_units" not in layers or layers["saturated_units"].isna().any() or "saturated_threshold" not in units:
        return None
    entries = []
    for model, table in layers.groupby("model", sort=False):
        for row in table.sort_values("depth").to_dict("records"):
            mine = units[(units["model"] == model) & (units["layer"] == row["layer"])]
            chosen = mine[mine["saturated_threshold"].astype(bool) & mine["detector"].astype(bool)]
            counts = chosen["concept"].value_counts()
            concepts = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
            entries.append(
                {
                    "model": model,
                    "layer": row["layer"],
                    "units": int(row["units"]),
                    "saturated": int(row["saturated_units"]),
                    "detectors": int(row["saturated_detectors"]),
                    "concepts": [(str(name), int(count)) for name, count in concepts],
                }
            )
    return entries


# ------------------------------------------------------------------------------------------------
# what the conclusion says


def _change(before: float, after: float, digits: int) -> dict:
    """A change for the `change` macro: its direction (stays, falls, rises) at `digits` decimals."""
    if round(before, digits) == round(after, digits):
        direction = "stays"
    else:
        direction = "falls" if after < before else "rises"
    return {"direction": direction, "before": before, "after": after, "digits": digits}


def model_findings(layers: pd.DataFrame, units: pd.DataFrame) -> list[dict]:
    """Per model: its first and last layers' detectors, and the concepts most often detected in its last layer."""
    findings = []
    for model, table in layers.groupby("model", sort=False):
        table = table.sort_values("depth")
        first, last = table.iloc[0], table.iloc[-1]
        clauses = []
        for row in [first] if len(table) == 1 else [first, last]:
            clause = {key: row[key] for key in ("layer", "units", "detectors", "unique_best")}
            clauses.append({**clause, "share": row["detectors"] / row["units"], "ci": _interval(row, "detectors")})
        top = units[(units["model"] == model) & (units["layer"] == last["layer"]) & units["detector"]]
        common = top["concept"].value_counts().head(3)
        findings.append(
            {"model": model, "clauses": clauses, "last_layer": last["layer"], "common": list(common.items())}
        )
    return findings


def rotation_findings(summary: dict, rotation: pd.DataFrame) -> dict:
    """The rotation experiment from alpha 0 to the largest alpha: detectors, distinct concepts, mean best IoU."""
    alphas = sorted(summary["alphas"], key=float)
    start, end = summary["alphas"][alphas[0]], summary["alphas"][alphas[-1]]

    def change(column: str, digits: int) -> dict:
        return _change(start[column]["mean"], end[column]["mean"], digits)

    return {
        "units": int(rotation["units"].iloc[0]),
        "model": summary["model"],
        "layer": summary["layer"],
        "alpha": float(alphas[-1]),
        "seeds": end["seeds"],
        "mask_size": summary["mask_size"],
        "detectors": change("detectors", 1),
        "detectors_range": (end["detectors"]["min"], end["detectors"]["max"]),
        "distinct": change("unique_best", 1),
        "iou": change("mean_best_iou", 4),
    }


# ------------------------------------------------------------------------------------------------
# the card on the landing page, and the figures' captions


def figure_texts(figures: dict, *, n_images: int, rotation: dict | None) -> dict:
    """Caption (what to look at first) and alt text of each figure the section shows, as {"caption", "alt"}:
    "depth", "rotation" (None without the experiment) and "units" ({"<model>/<layer>": ...}), worded by
    templates/dissection_figure_text.txt.j2. `rotation`: `rotation_findings`."""

    def texts(name: str, **context) -> dict:
        return {
            part: render_text("dissection_figure_text.txt.j2", STUDY_DIR, figure=name, part=part, **context)
            for part in ("caption", "alt")
        }

    units = {}
    for key in figures.get("units", {}):
        model, layer = key.split("/", 1)
        units[key] = texts("units", model=model, layer=layer, n_images=n_images)
    return {
        "depth": texts("depth", n_images=n_images),
        "rotation": texts("rotation", rotation=rotation, n_images=n_images) if rotation else None,
        "units": units,
    }


def headline_layer(layers: pd.DataFrame, rotation: dict | None) -> dict:
    """The layer the card reports: the deepest dissected layer of the rotation experiment's model, or of the
    first dissected model when there is no rotation experiment or its model is not dissected."""
    models = list(dict.fromkeys(layers["model"]))
    model = rotation["model"] if rotation is not None and rotation["model"] in models else models[0]
    return layers[layers["model"] == model].sort_values("depth").iloc[-1].to_dict()


def most_detected(units: pd.DataFrame, model: str, layer: str) -> dict:
    """The concept(s) most of a layer's detectors detect: names (ties in alphabetical order) and how many units."""
    mine = units[(units["model"] == model) & (units["layer"] == layer) & units["detector"].astype(bool)]
    counts = mine["concept"].value_counts()
    if not len(counts):
        return {"names": [], "count": 0}
    top = int(counts.max())
    return {"names": sorted(str(name) for name, count in counts.items() if count == top), "count": top}


def _mask_change(rotation: dict, mask_shape) -> str | None:
    """Whether the rotation experiment's masks are "coarser" or "finer" than the dissection's (None: the same, or
    not known), which is why its unrotated detector count may differ from the layer's."""
    size, own = rotation["mask_size"], min(int(x) for x in mask_shape)
    if size is None or int(size) == own:
        return None
    return "coarser" if int(size) < own else "finer"


def card_numbers(layer: dict, rotated: dict | None, n_images: int) -> list[dict]:
    """The card's numbers: the layer's share of detectors (95% bootstrap interval), the units detecting its most
    detected concept (a count), and the mean detector count after the rotation (min–max over seeds)."""
    numbers = [
        finding_number(
            f"share of {layer['layer']} units that detect a concept (95% bootstrap interval)",
            pct(layer["share"]),
            interval=ci(layer["ci"], percent=True) if layer["ci"] else None,
            n=f"N = {n_images} images, {layer['units']} units",
        )
    ]
    if layer["concepts"]["names"]:
        numbers.append(
            finding_number(
                f"{layer['layer']} detectors of {' and '.join(layer['concepts']['names'][:2])}, the most detected",
                fixed(layer["concepts"]["count"], 0),
                n=f"of {layer['detectors']} detectors",
            )
        )
    if rotated is not None:
        change = rotated["detectors"]
        numbers.append(
            finding_number(
                f"detectors after a random rotation of {rotated['layer']} (alpha {rotated['alpha']:g}; unrotated "
                f"{fixed(change['before'], 1)}): mean, min–max over seeds",
                fixed(change["after"], 1),
                interval=ci(rotated["detectors_range"], digits=0),
                n=f"N = {rotated['seeds']} random rotations, {n_images} images",
            )
        )
    return numbers


def finding_of(
    *,
    layers: pd.DataFrame,
    units: pd.DataFrame,
    summary: dict,
    rotation: dict | None,
    figures: dict,
    texts: dict,
) -> dict:
    """The study's card: the share of detectors (95% bootstrap interval) in the deepest dissected layer and its
    most detected concept, and whether a random rotation of the rotated layer's basis changes the mean number of
    detectors (`rotation_findings`' rule: the means at alpha 0 and the largest alpha differ at one decimal).
    Null when the layer has no detector or the rotation leaves the count unchanged. `summary`: `section_summary`;
    `rotation`: `rotation_findings` (None without the experiment); `figures` and `texts`: the section's figures
    and their `figure_texts`."""
    row = headline_layer(layers, rotation)
    bounds = _interval(row, "detectors")
    layer = {
        "model": row["model"],
        "layer": row["layer"],
        "units": int(row["units"]),
        "detectors": int(row["detectors"]),
        "share": row["detectors"] / row["units"],
        "ci": None if bounds is None else [b / row["units"] for b in bounds],
        "concepts": most_detected(units, row["model"], row["layer"]),
    }
    rotated = None
    if rotation is not None and rotation["alpha"] > 0:
        rotated = {
            **rotation,
            "same_model": rotation["model"] == row["model"],
            "same_layer": (rotation["model"], rotation["layer"]) == (row["model"], row["layer"]),
            "masks": _mask_change(rotation, summary["mask_shape"]),
        }
    answer = render_text("dissection_answer.txt.j2", STUDY_DIR, layer=layer, rotation=rotated, brief=False)
    if len(answer) > ANSWER_CHARS:  # long model or layer names: the same sentence without its details
        answer = render_text("dissection_answer.txt.j2", STUDY_DIR, layer=layer, rotation=rotated, brief=True)
    shown = "rotation" if rotated is not None and figures.get("rotation") else "depth"
    figure = {"src": figures[shown], **texts[shown]} if figures.get(shown) else None
    null = layer["detectors"] == 0 or (rotated is not None and rotated["detectors"]["direction"] == "stays")
    numbers = card_numbers(layer, rotated, summary["images"])
    return finding(question=QUESTION, answer=answer, numbers=numbers, figure=figure, null=null)


# ------------------------------------------------------------------------------------------------
# tables


def layer_table(layers: pd.DataFrame, categories: list[str], threshold: float) -> dict:
    """Per layer: units, detectors with their interval, distinct concepts, mean best IoU, detectors by category."""
    view = layers.copy()
    view["detectors_interval"] = [ci(_interval(r, "detectors"), digits=0) for r in view.to_dict("records")]
    columns = {
        "model": "model",
        "layer": "layer",
        "units": "units",
        "detectors": f"detectors (IoU > {threshold:g})",
        "detectors_interval": "detectors, 95% bootstrap interval",
        "unique_best": "distinct concepts, best label",
        "unique_per_category": "distinct concepts, per-category sum",
        "mean_best_iou": "mean best IoU",
        "empty_units": "units whose mask never fires",
    }
    if "saturated_units" in view:
        columns["saturated_units"] = "units with T at their maximum (mask ≥ T)"
    for category in categories:
        view[f"detectors_{category}"] = view[f"detectors_{category}"].astype(int)
        columns[f"detectors_{category}"] = f"{category} detectors"
    header, rows = table_rows(view, labels=columns, float_format="{:.3f}")
    return {"header": header, "rows": rows}


def units_table(top: pd.DataFrame) -> dict | None:
    """The units the study singles out, each linked to its unit page (None when there are none)."""
    if not len(top):
        return None
    labels = {
        "model": "model",
        "layer": "layer",
        "unit": "unit",
        "concept": "best concept",
        "category": "category",
        "iou": "IoU",
        "runner_up": "runner-up",
        "runner_up_iou": "runner-up IoU",
    }
    links = {"unit": unit_hrefs(top["model"], top["layer"], top["unit"])}
    header, rows = table_rows(top, links=links, labels=labels, float_format="{:.3f}")
    return {"header": header, "rows": rows}


def rotation_table(alphas: dict) -> dict:
    """Per alpha: seeds, and the mean ± sd over seeds of detectors, distinct concepts and mean best IoU."""
    rows = []
    for alpha in sorted(alphas, key=float):
        entry = alphas[alpha]
        spread = {
            label: f"{fixed(entry[column]['mean'], digits)} ± {fixed(entry[column]['sd'], digits)}"
            for label, column, digits in [
                ("detectors (mean ± sd)", "detectors", 1),
                ("distinct concepts (mean ± sd)", "unique_best", 2),
                ("mean best IoU (mean ± sd)", "mean_best_iou", 4),
            ]
        }
        rows.append({"alpha": alpha, "seeds": entry["seeds"], **spread})
    header, cells = table_rows(pd.DataFrame(rows), float_format="{:.3f}")
    return {"header": header, "rows": cells}


# ------------------------------------------------------------------------------------------------
# the section


def listed_units(
    top: pd.DataFrame, settings: SectionSettings, n_images: int, unit_images: dict[str, str]
) -> list[dict]:
    """The section's units (for the unit pages): facts, and the unit's figure where its layer has a folder."""
    listed = []
    for row in top.itertuples():
        unit = {
            "model": row.model,
            "layer": row.layer,
            "channel": int(row.unit),
            "facts": {
                "dissection concept": f"{row.concept} ({row.category})",
                "dissection IoU": round(float(row.iou), 4),
                "dissection runner-up": f"{row.runner_up} ({row.runner_up_iou:.3f})",
            },
        }
        if getattr(row, "saturated_threshold", False):
            unit["facts"]["dissection threshold"] = "its maximum activation (mask: map at or above it)"
        folder = unit_images.get(f"{row.model}/{row.layer}")
        if folder is not None:
            caption = unit_image_caption(
                row, n_images=n_images, top_images=settings.top_images, quantile=settings.quantile
            )
            unit["images"] = [
                {"src": f"{folder}/{unit_image_name(row.model, row.layer, row.unit)}", "caption": caption}
            ]
        listed.append(unit)
    return listed


def unit_image_caption(unit, *, n_images: int, top_images: int, quantile: float) -> str:
    """Caption of a study unit's figure (`unit`: a row of the units table with model, layer, unit, concept,
    category and iou, and `saturated_threshold` when the table has it)."""
    return render_text(
        "dissection_unit_caption.html.j2",
        STUDY_DIR,
        unit=unit,
        k=min(int(top_images), int(n_images)),
        n_images=n_images,
        quantile=quantile,
        saturated=bool(getattr(unit, "saturated_threshold", False)),
    )


def build_section(
    *,
    layers: pd.DataFrame,
    units: pd.DataFrame,
    tallies: dict[str, np.ndarray],
    rotation: pd.DataFrame | None,
    settings: SectionSettings,
    figures: dict,
    unit_images: dict[str, str] | None = None,
) -> dict:
    """(conclusion, body_html, summary, units, finding) of the section, all from the numbers. `figures`: "depth"
    and "rotation" (a path or None) and "units" ({"<model>/<layer>": path}), relative to results/report/;
    `unit_images` maps "<model>/<layer>" to the folder (relative to results/report/) of that layer's per-unit
    figures; each listed unit of such a layer gets its figure as an image on its unit page."""
    summary = section_summary(layers, units, tallies, rotation, settings)
    top = study_units(units)
    figures = {"depth": None, "rotation": None, "units": {}, **figures}
    rotated = rotation_findings(summary["rotation"], rotation) if "rotation" in summary else None
    texts = figure_texts(figures, n_images=summary["images"], rotation=rotated)
    context = {
        "n_images": summary["images"],
        "kind": summary["concept_source"],
        "concept_counts": summary["concepts"],
        "shape": summary["mask_shape"],
        "quantile": settings.quantile,
        "iou_threshold": settings.iou_threshold,
        "color_concepts": settings.color_concepts,
        "models": model_findings(layers, units),
        "rotation": rotated,
    }
    conclusion = render_text("dissection_conclusion.html.j2", STUDY_DIR, **context)
    body = render(
        "dissection.html.j2",
        STUDY_DIR,
        conclusion=conclusion,
        layer_table=layer_table(layers, [str(c) for c in tallies["categories"]], settings.iou_threshold),
        units_table=units_table(top),
        rotation_table=rotation_table(summary["rotation"]["alphas"]) if "rotation" in summary else None,
        per_layer=STUDY_UNITS_PER_LAYER,
        resamples=BOOTSTRAP_RESAMPLES,
        saturated=saturated_layers(layers, units),
        figures=figures,
        texts=texts,
        **context,
    )
    listed = listed_units(top, settings, summary["images"], unit_images or {})
    card = finding_of(layers=layers, units=units, summary=summary, rotation=rotated, figures=figures, texts=texts)
    return {"conclusion": conclusion, "body_html": body, "summary": summary, "units": listed, "finding": card}
