"""Figures of the faces study, drawn from its Parquet tables; each states N and what is plotted."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.fsutil import atomic_path  # noqa: E402

SET_COLOURS = {
    "both rules": "#aa3377",
    "top percentile only": "#ee6677",
    "contrast only": "#4477aa",
    "neither": "#bbbbbb",
}
NULL_COLOURS = {"random": "#bbbbbb", "matched": "#66ccee"}
METRIC_LABELS = {
    "fixed_accuracy": "fixed-readout accuracy",
    "retrained_accuracy": "retrained-probe accuracy (CV)",
    "downstream_fixed_accuracy": "downstream fixed-readout accuracy",
    "downstream_retrained_accuracy": "downstream retrained accuracy (CV)",
    "kl_faces": "KL(intact || condition), faces (nats)",
    "kl_nonfaces": "KL(intact || condition), non-faces (nats)",
    "kl_face_ratio": "KL faces / KL non-faces",
    "pca_pc1": "PC1 share of face variance",
}


def save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _membership(table: pd.DataFrame) -> np.ndarray:
    top, contrast = table["top_percentile"].to_numpy(), table["contrast"].to_numpy()
    return np.select(
        [top & contrast, top, contrast], ["both rules", "top percentile only", "contrast only"], default="neither"
    )


def selection_figure(
    table: pd.DataFrame, *, face_dataset: str, layer: str, percentile: float, fdr: float, path
) -> None:
    """Left: channels by mean face activation (selected highlighted) with their non-face means; right: d' vs q."""
    nonface_sets = [c.removeprefix("q_") for c in table.columns if c.startswith("q_")]
    n_faces = int(table[f"n_{face_dataset}"].iloc[0])
    membership = _membership(table)
    order = np.argsort(-table["face_mean"].to_numpy(), kind="stable")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    rank = np.arange(1, len(table) + 1)
    left.plot(rank, table["face_mean"].to_numpy()[order], color="#222222", lw=1, label="faces")
    left.scatter(rank, table["nonface_mean"].to_numpy()[order], s=3, color="#999999", label="non-faces (mean of sets)")
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
    left.set_xlabel(f"channel rank by mean face activation (of {len(table)})")
    left.set_ylabel("mean activation (spatial mean)")
    left.set_title(f"{layer}: channels by face activation (N faces = {n_faces})", fontsize=9)
    left.legend(fontsize=7)
    worst_q = table[[f"q_{name}" for name in nonface_sets]].max(axis=1).clip(lower=1e-300)
    for label, colour in SET_COLOURS.items():
        chosen = membership == label
        right.scatter(
            table["d_min"][chosen], -np.log10(worst_q[chosen]), s=6, color=colour, label=f"{label} ({chosen.sum()})"
        )
    right.axhline(-np.log10(fdr), color="k", ls="--", lw=0.8, label=f"q = {fdr:g}")
    right.set_xlabel(f"smallest d' (faces vs {', '.join(nonface_sets)})")
    right.set_ylabel("-log10 largest BH q (one-sided Welch)")
    right.set_title("Contrast rule: faces > every non-face set", fontsize=9)
    right.legend(fontsize=7, loc="upper left")
    save(fig, path)


def pca_figure(table: pd.DataFrame, *, levels: list[float], layer: str, path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(table["component"], table["cumulative"], color="#4477aa", lw=1.5)
    for level in levels:
        reached = table.loc[table["cumulative"] >= level - 1e-12, "component"]
        if len(reached):
            n = int(reached.iloc[0])
            ax.axhline(level, color="#999999", lw=0.7, ls=":")
            ax.plot([n], [level], "o", color="#ee6677", ms=4)
            ax.annotate(f"{level:.0%}: {n} PCs", (n, level), textcoords="offset points", xytext=(6, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"PCA of faces' {layer} means (N = {int(table['n_images'].iloc[0])} faces, "
        f"{int(table['n_channels'].iloc[0])} channels)",
        fontsize=9,
    )
    save(fig, path)


def interventions_figure(
    conditions: pd.DataFrame, controls: pd.DataFrame, path, curves: pd.DataFrame | None = None
) -> None:
    """Per metric (rows) and mode (columns): control null histograms, the selected set and intact; last
    row: the faces' cumulative explained variance under intact, lesion and keep-only (when given)."""
    metrics = [m for m in METRIC_LABELS if m in controls["metric"].unique()]
    n_rows = len(metrics) + (curves is not None)
    fig, axes = plt.subplots(n_rows, 2, figsize=(10, 2.1 * n_rows), squeeze=False)
    intact = conditions[conditions["family"] == "intact"].iloc[0]
    n_faces, n_nonfaces = int(intact["n_faces"]), int(intact["n_nonfaces"])
    for row, metric in enumerate(metrics):
        for col, mode in enumerate(("lesion", "keep_only")):
            _null_panel(axes[row, col], conditions, controls, intact, metric, mode)
            if row == 0:
                axes[row, col].legend(fontsize=6)
    if curves is not None:
        _pca_panels(*axes[-1], curves)
    set_size = int(conditions.loc[conditions["family"] == "selected", "set_size"].iloc[0])
    fig.suptitle(
        f"{intact['model']} {intact['layer']}: {set_size} selected channels ({intact['ablation']} ablation); "
        f"N = {n_faces} faces, {n_nonfaces} non-faces",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, path)


def _null_panel(ax, conditions: pd.DataFrame, controls: pd.DataFrame, intact: pd.Series, metric: str, mode: str):
    """One metric and mode: histograms of the control draws, the selected set (red) and intact (dashed)."""
    in_mode = conditions[conditions["mode"].isin([mode, "none"])]
    values = in_mode[metric].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    pad = 0.05 * (high - low) if high > low else 0.01 * max(abs(high), 1.0)
    bins = np.linspace(low - pad, high + pad, 31)  # shared by both controls, covering every marker
    for family, colour in NULL_COLOURS.items():
        null = conditions.loc[(conditions["family"] == family) & (conditions["mode"] == mode), metric].dropna()
        if len(null):
            ax.hist(null, bins=bins, color=colour, alpha=0.7, label=f"{family} (n = {len(null)})")
    chosen = conditions.loc[(conditions["family"] == "selected") & (conditions["mode"] == mode), metric]
    if len(chosen) and np.isfinite(chosen.iloc[0]):
        ax.axvline(chosen.iloc[0], color="#cc3311", lw=2, label="selected")
    if np.isfinite(intact[metric]):
        ax.axvline(intact[metric], color="k", ls="--", lw=1, label="intact")
    rows = controls[(controls["metric"] == metric) & (controls["mode"] == mode)]
    p_text = ", ".join(f"p({r.control}) = {r.p_value:.3g}" for r in rows.itertuples())
    ax.set_title(f"{mode.replace('_', '-')}: {p_text}", fontsize=8)
    ax.set_xlabel(METRIC_LABELS[metric], fontsize=8)
    ax.set_ylabel("draws", fontsize=8)
    ax.tick_params(labelsize=7)


def _pca_panels(left, right, curves: pd.DataFrame) -> None:
    """The faces' cumulative (left) and per-component (right) explained variance per condition."""
    for name, colour in (("intact", "k"), ("lesion", "#cc3311"), ("keep_only", "#4477aa")):
        curve = curves[curves["condition"] == name]
        left.plot(curve["component"], curve["cumulative"], color=colour, lw=1.2, label=name.replace("_", "-"))
        shown = curve[curve["explained_variance_ratio"] > 1e-6]  # drop the numerically null tail
        right.plot(shown["component"], shown["explained_variance_ratio"], color=colour, lw=1.2)
    left.set_xscale("log")
    left.set_xlabel("principal components (faces' activations)", fontsize=8)
    left.set_ylabel("cumulative explained variance", fontsize=8)
    left.legend(fontsize=6)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("principal component", fontsize=8)
    right.set_ylabel("explained variance ratio", fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=7)


def probes_figure(table: pd.DataFrame, path) -> None:
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(table), 3.4))
    x = np.arange(len(table))
    accuracy = table["accuracy"].to_numpy()
    yerr = np.clip([accuracy - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - accuracy], 0, None)
    ax.errorbar(x, accuracy, yerr=yerr, fmt="o", color="#4477aa", capsize=3, label="CV accuracy (95% Wilson)")
    for i, folds in enumerate(table["fold_accuracies"]):
        ax.scatter(np.full(len(folds), i + 0.12), folds, s=8, color="#999999", label="folds" if i == 0 else None)
    ax.axhline(table["chance"].iloc[0], color="k", ls=":", lw=0.8, label="majority class")
    ax.set_xticks(
        x, [f"{layer}\n({c} ch)" for layer, c in zip(table["layer"], table["n_channels"], strict=True)], fontsize=7
    )
    ax.set_ylabel("face vs non-face accuracy")
    ax.set_title(
        f"Linear probe per layer (N = {int(table['n_images'].iloc[0])} images, {int(table['n_faces'].iloc[0])} faces)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)


def categories_figure(categories: pd.DataFrame, selectivity: pd.DataFrame, path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    datasets = list(dict.fromkeys(categories["dataset"]))
    width = 0.38
    for offset, (set_name, colour) in zip(
        (-width / 2, width / 2), (("selected", "#cc3311"), ("all channels", "#999999")), strict=True
    ):
        rows = categories[categories["channel_set"] == set_name].set_index("dataset").loc[datasets]
        x = np.arange(len(datasets)) + offset
        left.bar(x, rows["mean"], width, color=colour, label=f"{set_name} ({int(rows['n_channels'].iloc[0])} ch)")
        yerr = np.clip([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]], 0, None)
        left.errorbar(x, rows["mean"], yerr=yerr, fmt="none", color="k", capsize=3)
    n_images = categories.drop_duplicates("dataset").set_index("dataset").loc[datasets, "n_images"]
    left.set_xticks(np.arange(len(datasets)), [f"{d}\n(N = {n})" for d, n in n_images.items()], fontsize=8)
    left.set_ylabel("mean activation over the set's channels")
    left.set_title("Mean activation per image set (95% bootstrap CI over images)", fontsize=9)
    left.legend(fontsize=7)
    bins = np.linspace(-1, 1, 41)
    right.hist(selectivity["selectivity_index"], bins=bins, color="#bbbbbb", label=f"all ({len(selectivity)})")
    chosen = selectivity[selectivity["selected"]]
    right.hist(chosen["selectivity_index"], bins=bins, color="#cc3311", label=f"selected ({len(chosen)})")
    right.set_xlabel("face-selectivity index (face - non-face) / (|face| + |non-face|)")
    right.set_ylabel("channels")
    right.set_title("Per-channel face selectivity", fontsize=9)
    right.legend(fontsize=7)
    save(fig, path)


def heatmap_figure(images: np.ndarray, maps: np.ndarray, table: pd.DataFrame, channels: list[int], path) -> None:
    """Rows: channels; columns: example images; each map (bilinear-upsampled) over its image, one
    colour scale per channel so faces and non-faces are comparable."""
    n_channels, n_images = len(channels), images.shape[0]
    fig, axes = plt.subplots(n_channels, n_images, figsize=(1.5 * n_images, 1.6 * n_channels + 0.4), squeeze=False)
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
                ax.set_title(str(record["dataset"]), fontsize=7)
            ax.set_xlabel(f"mean {record['mean']:.2f}", fontsize=6, labelpad=1)
            if col == 0:
                ax.set_ylabel(f"ch {channel}\n(max {vmax:.2f})", fontsize=7)
    fig.suptitle("Top face channels' maps over example images (seeded draw; colour scale per channel)", fontsize=9)
    fig.tight_layout()
    save(fig, path)
