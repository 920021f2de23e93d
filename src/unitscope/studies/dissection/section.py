"""Figures and the report section of the dissection study.

Every number in the text is read from the stage outputs (results/dissection/...); sentences are
built from them, including their direction (a count that did not change is said not to change).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.data.concepts import ConceptDataset, open_concepts  # noqa: E402
from unitscope.fsutil import atomic_path  # noqa: E402
from unitscope.report.sections import html_table, unit_hrefs, write_section  # noqa: E402

STUDY = "dissection"
TITLE = "Network dissection: units that detect concepts"
CATEGORY_COLORS = {"object": "#4477aa", "color": "#ee6677", "part": "#228833", "material": "#ccbb44"}
UNIT_EDGE, CONCEPT_EDGE = "#ffdd00", "#00e5ff"
STUDY_UNITS_PER_LAYER = 3  # detectors per layer the section singles out (table, unit pages, per-unit figures)


def _write_png(fig, path: str | os.PathLike) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        _write_png(fig, temp)


def _category_color(category: str, index: int) -> str:
    return CATEGORY_COLORS.get(category, plt.get_cmap("tab10")(index % 10))


def load_tallies(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


# ------------------------------------------------------------------------------------------------
# figures


def chosen_units(units: pd.DataFrame, n_units: int) -> pd.DataFrame:
    """The layer's units to show: highest best-concept IoU first."""
    return units.sort_values(["iou", "unit"], ascending=[False, True], kind="stable").head(n_units)


def study_units(units: pd.DataFrame, per_layer: int = STUDY_UNITS_PER_LAYER) -> pd.DataFrame:
    """The units the study singles out (its table, their unit pages and per-unit figures): in each (model, layer)
    the `per_layer` detectors with the highest IoU (ties: lower unit first); rows ordered by IoU, highest first."""
    detectors = units[units["detector"].astype(bool)]
    ordered = detectors.sort_values(["iou", "unit"], ascending=[False, True], kind="stable")
    return ordered.groupby(["model", "layer"], sort=False).head(per_layer)


def unit_image_name(model: str, layer: str, unit: int) -> str:
    """File name of one study unit's figure inside its layer's directory of unit figures."""
    return f"{model}__{layer}__{int(unit)}.png"


def draw_unit_images(axes, unit, tallies: dict[str, np.ndarray], concepts: ConceptDataset, *, layer: str) -> None:
    """One unit's top activating images, one per axes: the unit's mask (its upsampled map > T_k) outlined in
    yellow and its best concept's mask in cyan. Shared by the per-layer and the per-unit figures."""
    from unitscope.studies.dissection.dissect import upsample  # torch: only the figures need it

    shape = tuple(int(x) for x in tallies["mask_shape"])
    top_images, top_maps = tallies[f"{layer}/top_images"], tallies[f"{layer}/top_maps"]
    masks = upsample(_tensor(top_maps[unit.unit]), shape).numpy() > tallies[f"{layer}/thresholds"][unit.unit]
    code = dict(zip(tallies["concept_names"], tallies["concept_codes"], strict=True)).get(unit.concept)
    for col, ax in enumerate(axes):
        index = int(top_images[unit.unit, col])
        ax.imshow(np.asarray(concepts.image(index).resize(shape[::-1])))
        if masks[col].any():
            ax.contour(masks[col].astype(float), levels=[0.5], colors=[UNIT_EDGE], linewidths=1.2)
        if code is not None:
            concept_mask = (concepts.annotation(index, shape).pixels == code).any(0)
            if concept_mask.any():
                ax.contour(concept_mask.astype(float), levels=[0.5], colors=[CONCEPT_EDGE], linewidths=0.9)
        ax.set_xticks([])
        ax.set_yticks([])


def top_units_figure(
    units: pd.DataFrame,
    tallies: dict[str, np.ndarray],
    concepts: ConceptDataset,
    *,
    model: str,
    layer: str,
    n_units: int,
    path: str | os.PathLike,
) -> None:
    """Rows: the layer's top units by IoU; columns: each unit's top activating images, with the unit's
    mask (upsampled map > T_k, yellow) and its best concept's mask (cyan) outlined."""
    of_layer = units[units["layer"] == layer]
    shown = chosen_units(of_layer, n_units)
    k = tallies[f"{layer}/top_images"].shape[1]
    fig, axes = plt.subplots(len(shown), k, figsize=(max(2.6 * k, 6.5), 2.1 * len(shown) + 0.8), squeeze=False)
    for row, unit in enumerate(shown.itertuples()):
        draw_unit_images(axes[row], unit, tallies, concepts, layer=layer)
        label = f"unit {unit.unit}\n{unit.concept or '-'} ({unit.category or '-'})\nIoU {unit.iou:.3f}"
        axes[row, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(
        f"{model} · {layer}: top {len(shown)} units by IoU, each with its {k} top activating images\n"
        f"(of N = {len(tallies['image_ids'])}); yellow: unit mask (upsampled map > T), cyan: its best concept",
        fontsize=8,
    )
    _save(fig, path)


def unit_figure(
    unit, tallies: dict[str, np.ndarray], concepts: ConceptDataset, *, model: str, layer: str, quantile: float
):
    """One unit: its top activating images in a row, unit mask (yellow) and best concept's mask (cyan) outlined."""
    k = tallies[f"{layer}/top_images"].shape[1]
    fig, axes = plt.subplots(1, k, figsize=(max(2.6 * k, 6.5), 2.9), squeeze=False)
    draw_unit_images(axes[0], unit, tallies, concepts, layer=layer)
    fig.suptitle(
        f"{model} · {layer} · unit {unit.unit}: best concept {unit.concept or '-'} ({unit.category or '-'}), "
        f"IoU {unit.iou:.3f}\nits {k} top activating images (of N = {len(tallies['image_ids'])}, highest peak "
        f"first); yellow: unit mask (upsampled map > T, its top {quantile:g} quantile), cyan: concept mask",
        fontsize=8,
    )
    return fig


def write_unit_images(
    units: pd.DataFrame,
    tallies: dict[str, np.ndarray],
    concepts: ConceptDataset,
    *,
    model: str,
    layer: str,
    quantile: float,
    out_dir: str | os.PathLike,
) -> list[str]:
    """The directory of one layer's per-unit figures, one per unit of `study_units`, written whole; their names."""
    shown = study_units(units[(units["model"] == model) & (units["layer"] == layer)])
    names = []
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        for unit in shown.itertuples():
            names.append(unit_image_name(model, layer, unit.unit))
            fig = unit_figure(unit, tallies, concepts, model=model, layer=layer, quantile=quantile)
            _write_png(fig, temp / names[-1])
    return names


def _tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def depth_figure(layers: pd.DataFrame, categories: list[str], n_images: int, path: str | os.PathLike) -> None:
    """Per model (columns): detectors (top) and distinct detected concepts (bottom) per layer, by category."""
    models = list(dict.fromkeys(layers["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 5.6), squeeze=False)
    for col, model in enumerate(models):
        table = layers[layers["model"] == model].sort_values("depth")
        x = np.arange(len(table))
        for row, (prefix, ylabel) in enumerate(
            [("detectors", "detector units (IoU > threshold)"), ("unique_per_category", "distinct concepts detected")]
        ):
            ax = axes[row, col]
            bottom = np.zeros(len(table))
            for index, category in enumerate(categories):
                values = table[f"{prefix}_{category}"].to_numpy(dtype=float)
                ax.bar(x, values, bottom=bottom, color=_category_color(category, index), label=category)
                bottom += values
            for xi, total, units in zip(x, bottom, table["units"], strict=True):
                text = f"{int(total)}/{units}" if prefix == "detectors" else f"{int(total)}"
                ax.text(xi, total, text, ha="center", va="bottom", fontsize=7)
            ax.set_xticks(x, table["layer"], rotation=30, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.margins(y=0.15)
            if row == 0:
                ax.set_title(f"{model} (layers by depth; N = {n_images} images)", fontsize=9)
                ax.legend(fontsize=7)
    _save(fig, path)


def rotation_figure(rotation: pd.DataFrame, path: str | os.PathLike) -> None:
    """Unique concepts, detector units and mean best IoU against the rotation fraction alpha:
    each seed's value (dots) and the mean over seeds with its min-max range."""
    panels = [
        ("unique_best", "distinct concepts (best label)"),
        ("detectors", "detector units"),
        ("mean_best_iou", "mean best IoU over units"),
    ]
    seeds = rotation["seed"].nunique()
    model, layer = rotation["model"].iloc[0], rotation["layer"].iloc[0]
    units = int(rotation["units"].iloc[0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, (column, label) in zip(axes, panels, strict=True):
        grouped = rotation.groupby("alpha")[column]
        alphas = np.array(sorted(rotation["alpha"].unique()))
        mean, low, high = grouped.mean()[alphas], grouped.min()[alphas], grouped.max()[alphas]
        ax.fill_between(alphas, low, high, color="#4477aa", alpha=0.25, label="min-max over seeds")
        ax.plot(alphas, mean, color="#4477aa", marker="o", label=f"mean of {seeds} seeds")
        ax.scatter(rotation["alpha"], rotation[column], s=8, color="#222222", zorder=3, label="one seed")
        ax.set_xlabel("alpha")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{model} · {layer} ({units} units): dissection of the units Q^alpha A "
        f"(alpha 0: original units, 1: fully rotated; {seeds} random rotations Q)",
        fontsize=10,
    )
    _save(fig, path)


def run_unit_figures(
    *,
    units_path,
    tallies_path,
    layer,
    model,
    n_units,
    concepts_config,
    data_dir,
    resources_dir,
    seed,
    quantile,
    out_path,
    images_dir,
) -> list[str]:
    """The layer's figure of its top `n_units` units (out_path) and the directory of its study units' figures
    (images_dir); returns the latter's file names."""
    concepts = open_concepts(concepts_config, data_dir=data_dir, resources_dir=resources_dir, seed=seed)
    units, tallies = pd.read_parquet(units_path), load_tallies(tallies_path)
    top_units_figure(units, tallies, concepts, model=model, layer=layer, n_units=n_units, path=out_path)
    names = write_unit_images(units, tallies, concepts, model=model, layer=layer, quantile=quantile, out_dir=images_dir)
    print(f"{model} {layer}: {len(names)} unit figures in {images_dir}", flush=True)
    return names


# ------------------------------------------------------------------------------------------------
# section


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _change(before: float, after: float, unit: str = "", digits: int = 0) -> str:
    if round(before, digits) == round(after, digits):
        return f"stays at {before:.{digits}f}{unit}"
    verb = "falls" if after < before else "rises"
    return f"{verb} from {before:.{digits}f}{unit} to {after:.{digits}f}{unit}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _layer_clause(row) -> str:
    """'d of K units of <layer> (p%; 95% CI a–b detectors, bootstrap over images) are detectors covering u
    distinct concepts'."""
    detectors_ci = _interval(row, "detectors", prefix="; ", suffix=" detectors, bootstrap over images")
    share = f"{row['detectors'] / row['units']:.0%}{detectors_ci}"
    verb = "is a detector" if row["detectors"] == 1 else "are detectors"
    covering = f" covering {_plural(int(row['unique_best']), 'distinct concept')}" if row["detectors"] else ""
    return f"{row['detectors']} of {row['units']} units of {row['layer']} ({share}) {verb}{covering}"


def _interval(row, name: str, digits: int = 0, prefix: str = " (", suffix: str = "") -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if low is None or pd.isna(low):
        return ""
    return f"{prefix}95% CI {low:.{digits}f}–{high:.{digits}f}{suffix or (')' if prefix == ' (' else '')}"


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


def build_section(
    *,
    layers: pd.DataFrame,
    units: pd.DataFrame,
    tallies: dict[str, np.ndarray],
    rotation: pd.DataFrame | None,
    settings: dict,
    figures: dict[str, str],
    unit_images: dict[str, str] | None = None,
) -> dict:
    """(conclusion, body_html, summary, units) of the section, all from the numbers. `unit_images` maps
    "<model>/<layer>" to the folder (relative to results/report/) of that layer's per-unit figures; each listed
    unit of such a layer gets its figure as an image on its unit page."""
    categories = [str(c) for c in tallies["categories"]]
    n_images = len(tallies["image_ids"])
    shape = [int(x) for x in tallies["mask_shape"]]
    threshold = settings["iou_threshold"]
    concept_counts = {c: int((tallies["concept_categories"] == c).sum()) for c in categories}
    concepts_text = ", ".join(f"{n} {c}" for c, n in concept_counts.items())

    summary = {
        "images": n_images,
        "concept_source": settings["concepts"]["kind"],
        "concepts": concept_counts,
        "mask_shape": shape,
        "quantile": settings["quantile"],
        "iou_threshold": threshold,
        "layers": {},
    }
    sentences = [
        f"Network dissection on {n_images} {settings['concepts']['kind']} images ({concepts_text} concepts, "
        f"masks {shape[0]}×{shape[1]}, unit threshold at the top {settings['quantile']:g} quantile, detector "
        f"if IoU > {threshold:g})."
    ]
    for model, table in layers.groupby("model", sort=False):
        table = table.sort_values("depth")
        for row in table.to_dict("records"):
            of_layer = units[(units["model"] == model) & (units["layer"] == row["layer"])]
            detected = of_layer[of_layer["detector"]]["concept"].value_counts()
            entry = {
                key: row[key]
                for key in ("units", "detectors", "unique_best", "unique_per_category", "mean_best_iou", "empty_units")
            }
            entry.update({f"detectors_{c}": int(row[f"detectors_{c}"]) for c in categories})
            entry["concepts_detected"] = {str(k): int(v) for k, v in detected.items()}
            for name in ("detectors", "unique_best", "unique_per_category", "mean_best_iou"):
                if pd.notna(row.get(f"{name}_ci_low")):
                    entry[f"{name}_ci95"] = [row[f"{name}_ci_low"], row[f"{name}_ci_high"]]
            summary["layers"][f"{model}/{row['layer']}"] = entry
        first, last = table.iloc[0], table.iloc[-1]
        top = units[(units["model"] == model) & (units["layer"] == last["layer"]) & units["detector"]]
        common = top["concept"].value_counts()
        common_text = ", ".join(f"{name} ({count})" for name, count in common.head(3).items()) or "none"
        share = "; ".join(_layer_clause(row) for row in ([first] if len(table) == 1 else [first, last]))
        detail = (
            f"the concepts most often detected in {last['layer']} are {common_text}"
            if len(common)
            else f"no unit of {last['layer']} detects a concept"
        )
        sentences.append(f"In {model}, {share}; {detail}.")
    if rotation is not None and len(rotation):
        rot = rotation_summary(rotation)
        alphas = sorted(rot, key=float)
        start, end = rot[alphas[0]], rot[alphas[-1]]
        r_model, r_layer = rotation["model"].iloc[0], rotation["layer"].iloc[0]
        summary["rotation"] = {
            "model": r_model,
            "layer": r_layer,
            "mask_size": settings["rotation"]["mask_size"],
            "seeds": int(rotation["seed"].nunique()),
            "alphas": rot,
        }
        sentences.append(
            f"Rotating the {int(rotation['units'].iloc[0])} units of {r_model} {r_layer} by a random rotation "
            f"(alpha = {float(alphas[-1]):g}, {end['seeds']} seeds, masks with shorter side "
            f"{settings['rotation']['mask_size'] or 'native'}): the number of detectors "
            f"{_change(start['detectors']['mean'], end['detectors']['mean'], digits=1)} "
            f"(seeds {end['detectors']['min']:.0f}–{end['detectors']['max']:.0f}), the number of distinct concepts "
            f"{_change(start['unique_best']['mean'], end['unique_best']['mean'], digits=1)} and the mean best IoU "
            f"{_change(start['mean_best_iou']['mean'], end['mean_best_iou']['mean'], digits=4)}."
        )
    conclusion = " ".join(sentences)

    body = [f"<p>{html.escape(conclusion)}</p>", _method_html(settings, n_images, shape)]
    layer_view = layers.copy()
    layer_view["detectors (95% CI)"] = [
        f"{r['detectors']}" + _interval(r, "detectors") for r in layer_view.to_dict("records")
    ]
    columns = {
        "model": "model",
        "layer": "layer",
        "units": "units",
        "detectors (95% CI)": f"detectors (IoU > {threshold:g})",
        "unique_best": "distinct concepts, best label",
        "unique_per_category": "distinct concepts, per-category sum",
        "mean_best_iou": "mean best IoU",
        "empty_units": "units whose mask never fires",
    }
    for category in categories:
        layer_view[f"detectors_{category}"] = layer_view[f"detectors_{category}"].astype(int)
        columns[f"detectors_{category}"] = f"{category} detectors"
    body.append(
        html_table(
            layer_view,
            labels=columns,
            caption=f"Per layer (N = {n_images} images; intervals: 95% bootstrap over images, "
            f"{'200'} resamples, thresholds held fixed).",
            float_format="{:.3f}",
        )
    )
    if "depth" in figures:
        body.append(
            f'<figure><img src="{figures["depth"]}" alt="detectors by depth"><figcaption>Detector units (top) and '
            f"distinct concepts detected (bottom; NetDissect's per-category count) per layer, by concept category "
            f"(N = {n_images} images).</figcaption></figure>"
        )
    top = study_units(units)
    if len(top):
        body.append(
            html_table(
                top,
                links={"unit": unit_hrefs(top["model"], top["layer"], top["unit"])},
                float_format="{:.3f}",
                labels={
                    "model": "model",
                    "layer": "layer",
                    "unit": "unit",
                    "concept": "best concept",
                    "category": "category",
                    "iou": "IoU",
                    "runner_up": "runner-up",
                    "runner_up_iou": "runner-up IoU",
                },
                caption=f"The {STUDY_UNITS_PER_LAYER} detectors with the highest IoU in each layer (ties: lower unit "
                "first; every unit: results/dissection/<model>/units.parquet); a unit links to its page, which shows "
                "its top activating images with its mask and its concept's mask outlined.",
            )
        )
    for key, src in figures.items():
        if key.startswith("units:"):
            model, layer = key.split(":", 1)[1].split("/", 1)
            body.append(
                f'<figure><img src="{src}" alt="top units {html.escape(layer)}"><figcaption>{html.escape(model)} '
                f"<code>{html.escape(layer)}</code>: the units with the highest IoU, each with its top activating "
                f"images (of N = {n_images}); yellow outlines the unit mask (upsampled map above its threshold), "
                f"cyan its best concept's mask.</figcaption></figure>"
            )
    if rotation is not None and len(rotation):
        rot_rows = []
        for alpha in sorted(summary["rotation"]["alphas"], key=float):
            entry = summary["rotation"]["alphas"][alpha]
            rot_rows.append(
                {
                    "alpha": alpha,
                    "seeds": entry["seeds"],
                    "detectors": f"{entry['detectors']['mean']:.1f} ± {entry['detectors']['sd']:.1f}",
                    "unique": f"{entry['unique_best']['mean']:.2f} ± {entry['unique_best']['sd']:.2f}",
                    "iou": f"{entry['mean_best_iou']['mean']:.4f} ± {entry['mean_best_iou']['sd']:.4f}",
                }
            )
        body.append(
            html_table(
                pd.DataFrame(rot_rows),
                labels={
                    "alpha": "alpha",
                    "seeds": "seeds",
                    "detectors": "detectors (mean ± sd)",
                    "unique": "distinct concepts (mean ± sd)",
                    "iou": "mean best IoU (mean ± sd)",
                },
                float_format="{:.3f}",
                caption=f"Rotation of {summary['rotation']['model']} {summary['rotation']['layer']}: Q^alpha applied "
                f"to the channel axis before thresholding, thresholds recomputed (alpha = 0 is the unrotated layer, "
                f"shared by all seeds).",
            )
        )
        if "rotation" in figures:
            body.append(
                f'<figure><img src="{figures["rotation"]}" alt="rotation"><figcaption>Dissection of rotated units '
                f"against the rotation fraction alpha: each seed (dots), mean over seeds (line) and min–max range "
                f"(band); N = {n_images} images.</figcaption></figure>"
            )
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
        folder = (unit_images or {}).get(f"{row.model}/{row.layer}")
        if folder is not None:
            caption = unit_image_caption(
                row, n_images=n_images, top_images=settings["top_images"], quantile=settings["quantile"]
            )
            unit["images"] = [
                {"src": f"{folder}/{unit_image_name(row.model, row.layer, row.unit)}", "caption": caption}
            ]
        listed.append(unit)
    return {"conclusion": conclusion, "body_html": "\n".join(body), "summary": summary, "units": listed}


def unit_image_caption(unit, *, n_images: int, top_images: int, quantile: float) -> str:
    """Caption of a study unit's figure (`unit`: a row of the units table with model, layer, unit, concept,
    category and iou)."""
    k = min(int(top_images), int(n_images))
    return (
        f"{unit.model} {unit.layer} unit {int(unit.unit)}: its {_plural(k, 'top activating image')} of "
        f"N = {n_images} (highest peak activation first). Yellow outlines the unit's mask (its activation map, "
        f"upsampled to mask resolution, above its threshold T, the top {quantile:g} quantile of its activations "
        f"over all N images); cyan outlines the mask of its best concept, {unit.concept} ({unit.category}), "
        f"IoU {float(unit.iou):.3f} over the N images."
    )


def _method_html(settings: dict, n_images: int, shape: list[int]) -> str:
    colors = (
        " Color concepts: each pixel gets the nearest of 11 color-name prototypes (xkcd survey colors) in CIELAB "
        "by lightness and hue, black/grey/white below chroma 12 — a stand-in for Broden's learned color naming."
        if settings["concepts"]["kind"] == "camvid" and settings["concepts"].get("colors", True)
        else ""
    )
    return (
        "<p class='muted'>Method: each frame is resized to the model's input scale (shorter side = its "
        "preprocessing resize) without cropping; T<sub>k</sub> is the exact top "
        f"{settings['quantile']:g} quantile of unit k's activations over all positions of all {n_images} images; "
        f"the unit mask is the bilinearly upsampled map (to {shape[0]}×{shape[1]}) above T<sub>k</sub>; IoU sums "
        "intersections and unions over the dataset, on images annotated for the concept's category; void pixels "
        "(CamVid id 11) carry no concept." + colors + "</p>"
    )


def run_section(
    *,
    layer_paths,
    unit_paths,
    tallies_path,
    rotation_path,
    settings,
    figures,
    unit_figures,
    unit_image_dirs,
    out_path,
) -> dict:
    """Draw the depth (and rotation) figures at the paths in `figures` and write the section; figure
    paths in the HTML are relative to results/report/. `unit_image_dirs` maps "<model>/<layer>" to the folder
    of that layer's per-unit figures, which must hold exactly one figure per unit the section lists."""
    layers = pd.concat([pd.read_parquet(p) for p in layer_paths], ignore_index=True)
    units = pd.concat([pd.read_parquet(p) for p in unit_paths], ignore_index=True)
    rotation = pd.read_parquet(rotation_path) if rotation_path else None
    tallies = load_tallies(tallies_path)
    depth_figure(layers, [str(c) for c in tallies["categories"]], len(tallies["image_ids"]), figures["depth"])
    if rotation is not None:
        rotation_figure(rotation, figures["rotation"])
    shown = {key: relative_figure(path) for key, path in figures.items()}
    parts = build_section(
        layers=layers,
        units=units,
        tallies=tallies,
        rotation=rotation,
        settings=settings,
        figures={**shown, **unit_figures},
        unit_images={key: relative_figure(path) for key, path in unit_image_dirs.items()},
    )
    check_unit_images(parts["units"], unit_image_dirs)
    return write_section(out_path, study=STUDY, title=TITLE, **parts)


def check_unit_images(listed: list[dict], unit_image_dirs: dict[str, str | os.PathLike]) -> None:
    """Every listed unit's layer has a folder of per-unit figures, and each folder holds exactly the figures of
    the units the section lists for its layer."""
    without = sorted({f"{u['model']}/{u['layer']}" for u in listed} - set(unit_image_dirs))
    if without:
        raise ValueError(f"no folder of unit figures for {', '.join(without)}")
    for key, folder in unit_image_dirs.items():
        model, layer = key.split("/", 1)
        expected = {
            unit_image_name(model, layer, unit["channel"])
            for unit in listed
            if (unit["model"], unit["layer"]) == (model, layer)
        }
        found = {path.name for path in Path(folder).glob("*.png")}
        if found != expected:
            raise ValueError(
                f"{folder}: unit figures {sorted(found)} do not match the section's units of {model} {layer} "
                f"{sorted(expected)}"
            )


def relative_figure(path: str | os.PathLike) -> str:
    """A figure's path as the report page sees it (relative to results/report/)."""
    parts = Path(path).as_posix().split("results/report/", 1)
    return parts[1] if len(parts) == 2 else Path(path).as_posix()
