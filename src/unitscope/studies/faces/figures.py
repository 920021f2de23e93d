"""Figures of the faces study, drawn from its Parquet tables; each states N and what is plotted.

Sizes fit the report's text column: at the report's DPI (110) a figure is at most `WIDTH` inches wide
(<= 960 px with bbox_inches="tight"), and no text is smaller than `FONT` points.
"""

from __future__ import annotations

import functools
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from unitscope.report.plotting import (
    FIGURE_WIDTH,
    MIN_FONT,
    save_figure,  # noqa: E402
)
from unitscope.report.render import p_value  # noqa: E402

WIDTH = FIGURE_WIDTH
FONT = MIN_FONT

SET_COLOURS = {
    "both rules": "#aa3377",
    "top percentile only": "#ee6677",
    "contrast only": "#4477aa",
    "neither": "#bbbbbb",
}
NULL_COLOURS = {"random": "#bbbbbb", "matched": "#66ccee"}
NULL_NAMES = {"random": "random", "matched": "activation-matched"}
SELECTED_COLOUR, BAND_COLOUR = "#cc3311", "#fbe3c0"
# The interventions figure's rows, in this order: first the readouts of the three verdicts (fixed readout:
# necessary; retrained probe: sufficient; KL ratio: specific), then the rest.
METRIC_LABELS = {
    "fixed_accuracy": "fixed-readout accuracy",
    "retrained_accuracy": "retrained-probe accuracy (CV)",
    "kl_face_ratio": "KL faces / KL non-faces",
    "kl_faces": "KL(intact || condition), faces (nats)",
    "kl_nonfaces": "KL(intact || condition), non-faces (nats)",
    "downstream_fixed_accuracy": "downstream fixed-readout accuracy",
    "downstream_retrained_accuracy": "downstream retrained accuracy (CV)",
    "pca_pc1": "PC1 share of face variance",
}
METRIC_WORDS = {  # the rows in plain words (the figure's alt text)
    "fixed_accuracy": "fixed-readout accuracy",
    "retrained_accuracy": "retrained-probe accuracy",
    "kl_face_ratio": "faces / non-faces KL ratio",
    "kl_faces": "KL divergence on faces",
    "kl_nonfaces": "KL divergence on non-faces",
    "downstream_fixed_accuracy": "downstream fixed-readout accuracy",
    "downstream_retrained_accuracy": "downstream retrained accuracy",
    "pca_pc1": "PC1 share of the faces' variance",
}

STYLE = {
    "font.size": FONT,
    "axes.titlesize": FONT,
    "axes.labelsize": FONT,
    "legend.fontsize": FONT,
    "xtick.labelsize": FONT,
    "ytick.labelsize": FONT,
    "figure.titlesize": FONT + 1,
}


def styled(draw):
    """Draw a figure with the study's font sizes (`STYLE`), leaving matplotlib's global settings alone."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def save(fig, path: str | os.PathLike) -> None:
    save_figure(fig, path)


def _membership(table: pd.DataFrame) -> np.ndarray:
    top, contrast = table["top_percentile"].to_numpy(), table["contrast"].to_numpy()
    return np.select(
        [top & contrast, top, contrast], ["both rules", "top percentile only", "contrast only"], default="neither"
    )


@styled
def selection_figure(
    table: pd.DataFrame, *, face_dataset: str, layer: str, percentile: float, fdr: float, path
) -> None:
    """Left: channels by mean face activation (selected highlighted) with their non-face means; right: d' vs q."""
    nonface_sets = [c.removeprefix("q_") for c in table.columns if c.startswith("q_")]
    n_faces = int(table[f"n_{face_dataset}"].iloc[0])
    membership = _membership(table)
    order = np.argsort(-table["face_mean"].to_numpy(), kind="stable")
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 3.8))
    rank = np.arange(1, len(table) + 1)
    left.plot(rank, table["face_mean"].to_numpy()[order], color="#222222", lw=1, label="faces")
    left.scatter(rank, table["nonface_mean"].to_numpy()[order], s=3, color="#999999", label="non-faces (mean)")
    top = table["top_percentile"].to_numpy()[order]
    left.scatter(
        rank[top],
        table["face_mean"].to_numpy()[order][top],
        s=10,
        color=SET_COLOURS["top percentile only"],
        label=f"top {percentile:g}% ({top.sum()})",
        zorder=3,
    )
    left.set_xscale("log")
    left.set_xlabel(f"channel rank by face activation (of {len(table)})")
    left.set_ylabel("mean activation (spatial mean)")
    left.set_title(f"{layer}: channels by face activation\n(N = {n_faces} faces)")
    left.legend()
    worst_q = table[[f"q_{name}" for name in nonface_sets]].max(axis=1).clip(lower=1e-300)
    for label, colour in SET_COLOURS.items():
        chosen = membership == label
        right.scatter(
            table["d_min"][chosen], -np.log10(worst_q[chosen]), s=6, color=colour, label=f"{label} ({chosen.sum()})"
        )
    right.axhline(-np.log10(fdr), color="k", ls="--", lw=0.8, label=f"q = {fdr:g}")
    right.set_xlabel(f"smallest d' (faces vs {', '.join(nonface_sets)})")
    right.set_ylabel("-log10 largest BH q (one-sided Welch)")
    right.set_title("Contrast rule:\nfaces > every non-face set")
    right.legend(loc="upper left")
    fig.tight_layout()
    save(fig, path)


@styled
def pca_figure(table: pd.DataFrame, *, levels: list[float], layer: str, path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(table["component"], table["cumulative"], color="#4477aa", lw=1.5)
    for level in levels:
        reached = table.loc[table["cumulative"] >= level - 1e-12, "component"]
        if len(reached):
            n = int(reached.iloc[0])
            ax.axhline(level, color="#999999", lw=0.7, ls=":")
            ax.plot([n], [level], "o", color="#ee6677", ms=4)
            ax.annotate(f"{level:.0%}: {n} PCs", (n, level), textcoords="offset points", xytext=(6, -12))
    ax.set_xscale("log")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"PCA of faces' {layer} means (N = {int(table['n_images'].iloc[0])} faces, "
        f"{int(table['n_channels'].iloc[0])} channels)"
    )
    save(fig, path)


def interventions_metrics(controls: pd.DataFrame) -> list[str]:
    """The readouts the interventions figure draws, one row each, in `METRIC_LABELS` order."""
    present = set(controls["metric"].unique())
    return [metric for metric in METRIC_LABELS if metric in present]


@styled
def interventions_figure(
    conditions: pd.DataFrame,
    controls: pd.DataFrame,
    path,
    curves: pd.DataFrame | None = None,
    bands: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Per metric (rows, the verdicts' readouts first) and mode (columns): control null histograms, the selected
    set and intact, with `bands` ({metric: (low, high)}, the intact 95% interval of an accuracy) shaded; last
    row: the faces' cumulative and per-component explained variance under intact, lesion and keep-only."""
    metrics = interventions_metrics(controls)
    bands = bands or {}
    n_rows = len(metrics) + (curves is not None)
    fig, axes = plt.subplots(n_rows, 2, figsize=(WIDTH, 0.9 + 1.8 * n_rows), squeeze=False, layout="constrained")
    intact = conditions[conditions["family"] == "intact"].iloc[0]
    n_faces, n_nonfaces = int(intact["n_faces"]), int(intact["n_nonfaces"])
    for row, metric in enumerate(metrics):
        for col, mode in enumerate(("lesion", "keep_only")):
            _null_panel(axes[row, col], conditions, controls, intact, metric, mode, bands.get(metric))
    if curves is not None:
        _pca_panels(*axes[-1], curves)
    set_size = int(conditions.loc[conditions["family"] == "selected", "set_size"].iloc[0])
    title = (
        f"{intact['model']} {intact['layer']}: {set_size} selected channels ({intact['ablation']} ablation); "
        f"N = {n_faces} faces, {n_nonfaces} non-faces"
    )
    fig.legend(
        handles=_null_legend(conditions),
        loc="outside upper center",
        ncol=3,
        frameon=False,
        title=title,
        title_fontsize=FONT + 1,
    )
    save(fig, path)


VERDICT_PANELS = (  # the card's figure: the one readout and mode each verdict rests on
    ("necessary?", "fixed_accuracy", "lesion"),
    ("sufficient?", "retrained_accuracy", "keep_only"),
    ("face-specific?", "kl_face_ratio", "lesion"),
)


@styled
def verdicts_figure(
    conditions: pd.DataFrame, controls: pd.DataFrame, path, bands: dict[str, tuple[float, float]] | None = None
) -> None:
    """The three verdicts in one row (the landing page's card): for each, the panel of the interventions figure
    it rests on (control nulls, the selected set, intact and its 95% interval)."""
    bands = bands or {}
    panels = [(q, m, mode) for q, m, mode in VERDICT_PANELS if m in set(controls["metric"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH, 3.1), squeeze=False, layout="constrained")
    intact = conditions[conditions["family"] == "intact"].iloc[0]
    for ax, (question, metric, mode) in zip(axes[0], panels, strict=True):
        _null_panel(ax, conditions, controls, intact, metric, mode, bands.get(metric))
        ax.set_title(f"{question}\n{ax.get_title()}")
    fig.legend(handles=_null_legend(conditions), loc="outside upper center", ncol=3, frameon=False)
    save(fig, path)


def _null_legend(conditions: pd.DataFrame) -> list:
    """One legend for every panel: the controls (with their draws), the selected set, intact and its band."""
    handles = []
    for family, colour in NULL_COLOURS.items():
        draws = int(((conditions["family"] == family) & (conditions["mode"] == "lesion")).sum())
        handles.append(Patch(color=colour, alpha=0.7, label=f"{NULL_NAMES[family]} sets ({draws} draws)"))
    return [
        *handles,
        Line2D([], [], color=SELECTED_COLOUR, lw=2, label="selected channels"),
        Line2D([], [], color="k", ls="--", lw=1, label="intact network"),
        Patch(color=BAND_COLOUR, label="intact 95% interval (accuracies)"),
    ]


def _null_panel(
    ax,
    conditions: pd.DataFrame,
    controls: pd.DataFrame,
    intact: pd.Series,
    metric: str,
    mode: str,
    band: tuple[float, float] | None = None,
):
    """One metric and mode: histograms of the control draws, the selected set (red), intact (dashed) and its
    95% interval (shaded band), when given."""
    drawn = conditions["family"].isin(["intact", "selected", *NULL_COLOURS])  # not the single-channel lesions
    in_mode = conditions[drawn & conditions["mode"].isin([mode, "none"])]
    values = in_mode[metric].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    pad = 0.05 * (high - low) if high > low else 0.01 * max(abs(high), 1.0)
    bins = np.linspace(low - pad, high + pad, 31)  # shared by both controls, covering every marker
    if band is not None and all(np.isfinite(band)):
        ax.axvspan(*band, color=BAND_COLOUR, zorder=0)
    for family, colour in NULL_COLOURS.items():
        null = conditions.loc[(conditions["family"] == family) & (conditions["mode"] == mode), metric].dropna()
        if len(null):
            ax.hist(null, bins=bins, color=colour, alpha=0.7)
    chosen = conditions.loc[(conditions["family"] == "selected") & (conditions["mode"] == mode), metric]
    if len(chosen) and np.isfinite(chosen.iloc[0]):
        ax.axvline(chosen.iloc[0], color=SELECTED_COLOUR, lw=2)
    if np.isfinite(intact[metric]):
        ax.axvline(intact[metric], color="k", ls="--", lw=1)
    rows = controls[(controls["metric"] == metric) & (controls["mode"] == mode)]
    p_text = ", ".join(f"{r.control} {p_value(r.p_value)}" for r in rows.itertuples())
    ax.set_title(f"{mode.replace('_', '-')}: p {p_text}")
    ax.set_xlabel(METRIC_LABELS[metric])
    ax.set_ylabel("draws")


def _pca_panels(left, right, curves: pd.DataFrame) -> None:
    """The faces' cumulative (left) and per-component (right) explained variance per condition."""
    for name, colour in (("intact", "k"), ("lesion", SELECTED_COLOUR), ("keep_only", "#4477aa")):
        curve = curves[curves["condition"] == name]
        left.plot(curve["component"], curve["cumulative"], color=colour, lw=1.2, label=name.replace("_", "-"))
        shown = curve[curve["explained_variance_ratio"] > 1e-6]  # drop the numerically null tail
        right.plot(shown["component"], shown["explained_variance_ratio"], color=colour, lw=1.2)
    left.set_xscale("log")
    left.set_xlabel("principal components (faces)")
    left.set_ylabel("cumulative expl. variance")
    left.legend()
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("principal component")
    right.set_ylabel("explained variance ratio")


@styled
def probes_figure(table: pd.DataFrame, path) -> None:
    fig, ax = plt.subplots(figsize=(min(WIDTH, 3.0 + 1.1 * len(table)), 3.4))
    x = np.arange(len(table))
    accuracy = table["accuracy"].to_numpy()
    yerr = np.clip([accuracy - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - accuracy], 0, None)
    ax.errorbar(x, accuracy, yerr=yerr, fmt="o", color="#4477aa", capsize=3, label="CV accuracy (95% Wilson)")
    for i, folds in enumerate(table["fold_accuracies"]):
        ax.scatter(np.full(len(folds), i + 0.12), folds, s=8, color="#999999", label="folds" if i == 0 else None)
    ax.axhline(table["chance"].iloc[0], color="k", ls=":", lw=0.8, label="majority class")
    ax.set_xticks(x, [f"{layer}\n({c} ch)" for layer, c in zip(table["layer"], table["n_channels"], strict=True)])
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_ylabel("face vs non-face accuracy")
    ax.set_title(
        f"Linear probe per layer\n(N = {int(table['n_images'].iloc[0])} images, {int(table['n_faces'].iloc[0])} faces)"
    )
    ax.legend(loc="lower right")
    save(fig, path)


@styled
def categories_figure(categories: pd.DataFrame, selectivity: pd.DataFrame, path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 3.8))
    datasets = list(dict.fromkeys(categories["dataset"]))
    width = 0.38
    for offset, (set_name, colour) in zip(
        (-width / 2, width / 2), (("selected", SELECTED_COLOUR), ("all channels", "#999999")), strict=True
    ):
        rows = categories[categories["channel_set"] == set_name].set_index("dataset").loc[datasets]
        x = np.arange(len(datasets)) + offset
        left.bar(x, rows["mean"], width, color=colour, label=f"{set_name} ({int(rows['n_channels'].iloc[0])} ch)")
        yerr = np.clip([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]], 0, None)
        left.errorbar(x, rows["mean"], yerr=yerr, fmt="none", color="k", capsize=3)
    n_images = categories.drop_duplicates("dataset").set_index("dataset").loc[datasets, "n_images"]
    left.set_xticks(np.arange(len(datasets)), [f"{d}\n(N = {n})" for d, n in n_images.items()])
    left.set_ylabel("mean activation over the set's channels")
    left.set_title("Mean activation per image set\n(95% bootstrap interval over images)")
    left.legend()
    bins = np.linspace(-1, 1, 41)
    right.hist(selectivity["selectivity_index"], bins=bins, color="#bbbbbb", label=f"all ({len(selectivity)})")
    chosen = selectivity[selectivity["selected"]]
    right.hist(chosen["selectivity_index"], bins=bins, color=SELECTED_COLOUR, label=f"selected ({len(chosen)})")
    right.set_xlabel("face-selectivity index\n(face - non-face) / (|face| + |non-face|)")
    right.set_ylabel("channels")
    right.set_title("Per-channel face selectivity")
    right.legend()
    fig.tight_layout()
    save(fig, path)


@styled
def heatmap_figure(images: np.ndarray, maps: np.ndarray, table: pd.DataFrame, channels: list[int], path) -> None:
    """Rows: channels; columns: example images; each map (bilinear-upsampled) over its image, one
    colour scale per channel so faces and non-faces are comparable."""
    n_channels, n_images = len(channels), images.shape[0]
    side = min(1.5, (WIDTH - 0.9) / n_images)  # the channel labels take about 0.9 in
    fig, axes = plt.subplots(n_channels, n_images, figsize=(0.9 + side * n_images, (side + 0.35) * n_channels + 0.6))
    axes = np.asarray(axes).reshape(n_channels, n_images)
    for row, channel in enumerate(channels):
        vmax = max(float(maps[:, row].max()), 1e-6)
        for col in range(n_images):
            ax = axes[row, col]
            ax.imshow(images[col])
            ax.imshow(maps[col, row], cmap="inferno", alpha=0.55, vmin=0, vmax=vmax)
            record = table[(table["image_index"] == col) & (table["channel"] == channel)].iloc[0]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(str(record["dataset"]))
            ax.set_xlabel(f"mean {record['mean']:.2f}", labelpad=1)
            if col == 0:
                ax.set_ylabel(f"ch {channel}\n(max {vmax:.2f})")
    fig.suptitle("Top face channels' maps over example images\n(seeded draw; colour scale per channel)")
    fig.tight_layout()
    save(fig, path)
