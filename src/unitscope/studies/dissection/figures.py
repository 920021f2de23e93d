"""The dissection study's figures: detectors and concepts by depth, the rotation experiment, and each layer's
top units with their top activating images (unit mask and best concept's mask outlined)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.fsutil import atomic_path  # noqa: E402
from unitscope.report.plotting import FIGURE_WIDTH, MIN_FONT, save_figure, write_png
from unitscope.studies.dissection.units import chosen_units, study_units, unit_image_name  # noqa: E402

if TYPE_CHECKING:  # annotations only: drawing needs no concept-set code
    from unitscope.data.concepts import ConceptDataset

CATEGORY_COLORS = {"object": "#4477aa", "color": "#ee6677", "part": "#228833", "material": "#ccbb44"}
UNIT_EDGE, CONCEPT_EDGE = "#ffdd00", "#00e5ff"
WIDTH = FIGURE_WIDTH  # at the report's DPI a figure fits the text column
FONT = MIN_FONT
IMAGE_WIDTH = 2.6  # inches per top activating image, when the row fits in WIDTH


def _image_grid(k: int) -> tuple[float, float]:
    """(figure width, width of one image) for rows of `k` images: at most WIDTH wide."""
    width = min(max(IMAGE_WIDTH * k, 6.5), WIDTH)
    return width, min(IMAGE_WIDTH, width / k)


def _category_color(category: str, index: int) -> str:
    return CATEGORY_COLORS.get(category, plt.get_cmap("tab10")(index % 10))


def _tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# units


def draw_unit_images(axes, unit, tallies: dict[str, np.ndarray], concepts: ConceptDataset, *, layer: str) -> None:
    """One unit's top activating images, one per axes: the unit's mask (its upsampled map > T_k, or >= T_k where
    T_k is saturated, as the tally counts it) outlined in yellow and its best concept's mask in cyan. Shared by the
    per-layer and the per-unit figures."""
    from unitscope.studies.dissection.dissect import mask_cutoffs, upsample  # torch: only the figures need it

    shape = tuple(int(x) for x in tallies["mask_shape"])
    top_images, top_maps = tallies[f"{layer}/top_images"], tallies[f"{layer}/top_maps"]
    saturated = tallies.get(f"{layer}/saturated")  # absent from tallies written before the rule: `>` everywhere
    cutoff = mask_cutoffs(
        tallies[f"{layer}/thresholds"][unit.unit], None if saturated is None else saturated[unit.unit]
    )
    masks = upsample(_tensor(top_maps[unit.unit]), shape).numpy() > cutoff
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


def _saturated(units: pd.DataFrame) -> np.ndarray:
    """Per row: whether the unit's threshold is its maximum (False for tables without `saturated_threshold`)."""
    column = units["saturated_threshold"] if "saturated_threshold" in units else pd.Series(False, index=units.index)
    return column.to_numpy(dtype=bool)


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
    width, image = _image_grid(k)
    fig, axes = plt.subplots(
        len(shown), k, figsize=(width, 0.8 * image * len(shown) + 0.8), squeeze=False, layout="constrained"
    )
    for row, unit in enumerate(shown.itertuples()):
        draw_unit_images(axes[row], unit, tallies, concepts, layer=layer)
        label = f"unit {unit.unit}\n{unit.concept or '-'} ({unit.category or '-'})\nIoU {unit.iou:.3f}"
        axes[row, 0].set_ylabel(label, fontsize=FONT)
    ties = " or ≥ T where T is the unit's maximum" if _saturated(shown).any() else ""
    fig.suptitle(
        f"{model} · {layer}: top {len(shown)} units by IoU, each with its {k} top activating images\n"
        f"(of N = {len(tallies['image_ids'])}); yellow: unit mask (upsampled map > T{ties}), cyan: its best concept",
        fontsize=FONT,
    )
    save_figure(fig, path)


def unit_figure(
    unit, tallies: dict[str, np.ndarray], concepts: ConceptDataset, *, model: str, layer: str, quantile: float
):
    """One unit: its top activating images in a row, unit mask (yellow) and best concept's mask (cyan) outlined."""
    k = tallies[f"{layer}/top_images"].shape[1]
    width, image = _image_grid(k)
    fig, axes = plt.subplots(1, k, figsize=(width, 0.8 * image + 1.0), squeeze=False, layout="constrained")
    draw_unit_images(axes[0], unit, tallies, concepts, layer=layer)
    rule = (
        "≥ T, its top {:g} quantile and its maximum"
        if getattr(unit, "saturated_threshold", False)
        else "> T, its top {:g} quantile"
    )
    fig.suptitle(
        f"{model} · {layer} · unit {unit.unit}: best concept {unit.concept or '-'} ({unit.category or '-'}), "
        f"IoU {unit.iou:.3f}\nits {k} top activating images (of N = {len(tallies['image_ids'])}, highest peak "
        f"first)\nyellow: unit mask (upsampled map {rule.format(quantile)}), cyan: concept mask",
        fontsize=FONT,
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
            write_png(fig, temp / names[-1])
    return names


# ------------------------------------------------------------------------------------------------
# layers and rotations


def depth_figure(layers: pd.DataFrame, categories: list[str], n_images: int, path: str | os.PathLike) -> None:
    """Per model (columns): detectors (top) and distinct detected concepts (bottom) per layer, by category."""
    models = list(dict.fromkeys(layers["model"]))
    fig, axes = plt.subplots(
        2, len(models), figsize=(min(4.2 * len(models), WIDTH), 5.6), squeeze=False, layout="constrained"
    )
    for col, model in enumerate(models):
        table = layers[layers["model"] == model].sort_values("depth")
        for row, (prefix, ylabel) in enumerate(
            [("detectors", "detector units (IoU > threshold)"), ("unique_per_category", "distinct concepts detected")]
        ):
            _depth_bars(axes[row, col], table, categories, prefix, ylabel if col == 0 else None)
            if row == 0:
                axes[row, col].set_title(model, fontsize=FONT + 1)
    axes[0, 0].legend(fontsize=FONT)
    fig.suptitle(f"Layers by depth, left to right (N = {n_images} images)", fontsize=FONT + 1)
    save_figure(fig, path)


def _depth_bars(ax, table: pd.DataFrame, categories: list[str], prefix: str, ylabel: str | None) -> None:
    """One model's layers (x) with their `<prefix>_<category>` counts stacked by category, totals on top."""
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for index, category in enumerate(categories):
        values = table[f"{prefix}_{category}"].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, color=_category_color(category, index), label=category)
        bottom += values
    for xi, total, units in zip(x, bottom, table["units"], strict=True):
        text = f"{int(total)}/{units}" if prefix == "detectors" else f"{int(total)}"
        ax.text(xi, total, text, ha="center", va="bottom", fontsize=FONT)
    ax.set_xticks(x, table["layer"], rotation=30, ha="right", fontsize=FONT)
    ax.tick_params(axis="y", labelsize=FONT)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT)
    ax.margins(y=0.15)


def rotation_figure(rotation: pd.DataFrame, path: str | os.PathLike) -> None:
    """Unique concepts, detector units and mean best IoU against the rotation fraction alpha:
    each seed's value (dots) and the mean over seeds with its min-max range."""
    panels = [
        ("detectors", "detector units"),
        ("unique_best", "distinct concepts (best label)"),
        ("mean_best_iou", "mean best IoU over units"),
    ]
    seeds = rotation["seed"].nunique()
    model, layer = rotation["model"].iloc[0], rotation["layer"].iloc[0]
    units = int(rotation["units"].iloc[0])
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 3.4), layout="constrained")
    for ax, (column, label) in zip(axes, panels, strict=True):
        grouped = rotation.groupby("alpha")[column]
        alphas = np.array(sorted(rotation["alpha"].unique()))
        mean, low, high = grouped.mean()[alphas], grouped.min()[alphas], grouped.max()[alphas]
        ax.fill_between(alphas, low, high, color="#4477aa", alpha=0.25, label="min-max over seeds")
        ax.plot(alphas, mean, color="#4477aa", marker="o", label=f"mean of {seeds} seeds")
        ax.scatter(rotation["alpha"], rotation[column], s=8, color="#222222", zorder=3, label="one seed")
        ax.set_xlabel("alpha", fontsize=FONT)
        ax.set_title(label, fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
    axes[0].legend(fontsize=FONT)
    fig.suptitle(
        f"{model} · {layer} ({units} units): dissection of the units Q^alpha A\n"
        f"(alpha 0: original units, 1: fully rotated; {seeds} random rotations Q)",
        fontsize=FONT + 1,
    )
    save_figure(fig, path)
