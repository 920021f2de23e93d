"""The actmax study's figures (results/report/figures/actmax/): shortcut evaluation, example images, objectives,
optimisation curves, colour vs shape, polysemanticity and interpolation."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.report.plotting import FIGURE_WIDTH, MIN_FONT, save_figure
from unitscope.studies.actmax.grids import display_normalize, display_tile  # noqa: E402
from unitscope.studies.actmax.polysemanticity import most_polysemantic  # noqa: E402

__all__ = [
    "FIGURES",
    "color_shape_figure",
    "curves_figure",
    "draw_figures",
    "evaluation_figure",
    "examples_figure",
    "interpolation_figure",
    "objectives_figure",
    "polysemanticity_figure",
]

FIGURES = ("evaluation", "examples", "objectives", "curves", "color_vs_shape", "polysemanticity", "interpolation")
LAYER_COLORS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
# Sizes for a 960-px text column at plotting.DPI (110): at most 8.4 in wide before bbox_inches="tight" trims or
# grows the margins; no text under 9 pt. Image grids shrink their tiles to fit the width.
MAX_WIDTH = FIGURE_WIDTH
FONT = MIN_FONT
TITLE_FONT = 10
TILE = 0.95  # the largest tile of an image grid, in inches


def _tile(columns: int, margin: float) -> float:
    """The side of one tile of an image grid with `columns` columns and `margin` inches of labels beside it."""
    return min(TILE, (MAX_WIDTH - margin) / max(columns, 1))


def _grid(rows: int, cols: int, tile: float, *, left: float, row_extra: float, top: float):
    """An image grid of rows x cols tiles of `tile` inches, `left` inches of row labels and `top` inches of title,
    each row `row_extra` inches taller than its tile (for the tiles' titles)."""
    width, height = tile * cols + left, (tile + row_extra) * rows + top
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=0.99, top=1 - top / height, bottom=0.1 / height)
    return fig, axes


def _short(objective: str) -> str:
    return objective.replace("class_conditional", "class-cond.")


def draw_figures(inputs, paths: Mapping[str, str], rho: float) -> None:
    """Every figure of FIGURES to its path in `paths`, from the report's inputs (`section.ReportInputs`)."""
    metrics = inputs.metrics
    channel_metrics = metrics[metrics["objective"] == "channel"]
    if channel_metrics.empty:
        channel_metrics = metrics
    evaluation_figure(inputs.evaluation, rho, paths["evaluation"])
    examples_figure(inputs.runs, paths["examples"])
    objectives_figure(inputs.runs, paths["objectives"])
    curves_figure(inputs.runs, paths["curves"])
    color_shape_figure(inputs.probe, channel_metrics, inputs.reference, paths["color_vs_shape"])
    polysemanticity_figure(inputs.units, inputs.runs, paths["polysemanticity"])
    interpolation_figure(inputs.interpolation, inputs.interp_images, paths["interpolation"])


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(display_tile(display_normalize(image[None])[0]), cmap="gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def evaluation_figure(evaluation: list[dict], rho: float, path) -> None:
    sets = [row["set"] for row in evaluation]
    fig, (left, right) = plt.subplots(1, 2, figsize=(MAX_WIDTH, 3.4), gridspec_kw={"wspace": 0.3})
    accuracy = np.array([row["accuracy"] for row in evaluation])
    low = accuracy - np.array([row["accuracy_ci95"][0] for row in evaluation])
    high = np.array([row["accuracy_ci95"][1] for row in evaluation]) - accuracy
    left.bar(sets, accuracy, yerr=[low, high], color="#4477aa", capsize=4)
    left.axhline(0.1, color="grey", ls=":", lw=1, label="chance (10 classes)")
    for x, value in enumerate(accuracy):
        left.text(x, value + high[x] + 0.03, f"{100 * value:.1f}%", ha="center", fontsize=FONT)
    left.set_ylim(0, 1.3)
    left.set_ylabel("accuracy (95% Wilson CI)")
    left.set_title(f"Accuracy, N = {evaluation[0]['n']} digits per set (rho = {rho:g})", fontsize=FONT)
    left.legend(fontsize=FONT, loc="upper right")
    fraction = np.array([row["error_color_fraction"] for row in evaluation], dtype=float)
    lows = [row["error_color_ci95"][0] for row in evaluation]
    highs = [row["error_color_ci95"][1] for row in evaluation]
    errors = [np.nan_to_num(fraction - lows), np.nan_to_num(np.array(highs) - fraction)]
    right.bar(sets, np.nan_to_num(fraction), yerr=errors, color="#ee6677", capsize=4)
    right.axhline(1 / 9, color="grey", ls=":", lw=1, label="chance (1 of 9 wrong classes)")
    for x, row in enumerate(evaluation):
        count = f"{row['errors_as_color_class']}/{row['errors']}"
        right.text(x, 0.02, count, ha="center", fontsize=FONT, color="white")
    right.set_ylim(0, 1.3)
    right.set_ylabel("wrong predictions = colour's class")
    right.set_title("Errors that name the class of the digit's colour", fontsize=FONT)
    right.legend(fontsize=FONT, loc="upper right")
    save_figure(fig, path)


def examples_figure(runs: Mapping[str, tuple[dict, pd.DataFrame]], path, objective: str = "channel") -> None:
    """Per layer: chosen channels (rows) x seeds (columns), first init, first regulariser setting."""
    layers = list(runs)
    panels = []
    for layer in layers:
        run, table = runs[layer]
        subset = table[table["objective"] == objective]
        if subset.empty:
            subset = table
        subset = subset[(subset["init"] == subset["init"].iloc[0]) & (subset["l2"] == subset["l2"].iloc[0])]
        subset = subset[subset["tv"] == subset["tv"].iloc[0]]
        channels = list(dict.fromkeys(subset["channel"]))
        seeds = sorted(subset["seed"].unique())
        panels.append((layer, run, subset, channels, seeds))
    rows = max(len(p[3]) for p in panels)
    cols = sum(len(p[4]) for p in panels) + len(panels) - 1  # one blank column between layers
    tile = _tile(cols, 0.6)
    fig, axes = _grid(rows, cols, tile, left=0.6, row_extra=0.3, top=0.9)
    for ax in axes.ravel():
        ax.axis("off")
    offset = 0
    for layer, run, subset, channels, seeds in panels:
        for r, channel in enumerate(channels):
            for c, seed in enumerate(seeds):
                match = subset[(subset["channel"] == channel) & (subset["seed"] == seed)]
                if match.empty:
                    continue
                ax = axes[r, offset + c]
                ax.axis("on")
                _show(ax, run["images"][match.index[0]])
                ax.set_title(f"{match['final_activation'].iloc[0]:.3g}", fontsize=FONT, pad=1)
                if c == 0:
                    ax.set_ylabel(f"ch {channel}", fontsize=FONT)
                if r == 0 and c == len(seeds) // 2:
                    ax.set_title(f"{layer}\n{match['final_activation'].iloc[0]:.3g}", fontsize=FONT, pad=1)
        offset += len(seeds) + 1
    fig.suptitle(
        f"Objective {objective}: one image per seed (columns)\nnumber = final activation; display-normalised",
        fontsize=TITLE_FONT,
    )
    save_figure(fig, path)


def objectives_figure(runs: Mapping[str, tuple[dict, pd.DataFrame]], path, seeds: int = 3) -> None:
    """Per layer, its first chosen channel under every objective (first neuron, first init), first seeds."""
    layers = list(runs)
    blocks = []
    for layer in layers:
        run, table = runs[layer]
        channel = table["channel"].iloc[0]
        subset = table[(table["channel"] == channel) & (table["init"] == table["init"].iloc[0])]
        objectives = list(dict.fromkeys(subset["objective"]))
        blocks.append((layer, run, subset, channel, objectives))
    cols = max(len(b[4]) for b in blocks) * seeds
    tile = _tile(cols, 0.6)
    fig, axes = _grid(len(blocks), cols, tile, left=0.6, row_extra=0.5, top=0.6)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (layer, run, subset, channel, objectives) in enumerate(blocks):
        for k, objective in enumerate(objectives):
            rows = subset[subset["objective"] == objective]
            first = rows.iloc[0]
            rows = rows[(rows["y"] == first["y"]) & (rows["x"] == first["x"])].sort_values("seed").head(seeds)
            for s, (index, row) in enumerate(rows.iterrows()):
                ax = axes[r, k * seeds + s]
                ax.axis("on")
                _show(ax, run["images"][index])
                where = f" ({row['y']},{row['x']})" if row["y"] >= 0 else ""
                label = f"{_short(objective)}{where}" if s == 0 else ""
                ax.set_title(f"{label}\n{row['final_activation']:.3g}", fontsize=FONT, pad=1, loc="left")
                if k == 0 and s == 0:
                    ax.set_ylabel(f"{layer} ch {channel}", fontsize=FONT)
    fig.suptitle(
        f"Objectives A–D on one channel per layer (seeds 0–{seeds - 1}); number = final unit activation",
        fontsize=TITLE_FONT,
    )
    save_figure(fig, path)


def curves_figure(runs: Mapping[str, tuple[dict, pd.DataFrame]], path) -> None:
    layers = list(runs)
    fig, axes = plt.subplots(
        1, len(layers), figsize=(min(MAX_WIDTH, 3.4 * len(layers)), 3.0), squeeze=False, gridspec_kw={"wspace": 0.35}
    )
    for ax, layer in zip(axes[0], layers, strict=True):
        run, table = runs[layer]
        curves = run["objective_curve"]
        steps = np.arange(1, curves.shape[0] + 1)
        for k, objective in enumerate(dict.fromkeys(table["objective"])):
            columns = table.index[table["objective"] == objective].to_numpy()
            values = curves[:, columns]
            median = np.median(values, axis=1)
            q1, q3 = np.percentile(values, [25, 75], axis=1)
            color = LAYER_COLORS[k % len(LAYER_COLORS)]
            ax.plot(steps, median, color=color, lw=1.2, label=objective)
            ax.fill_between(steps, q1, q3, color=color, alpha=0.2)
        ax.set_xlabel("Adam step", fontsize=FONT)
        ax.set_title(f"{layer}: median and IQR\nover {len(table)} runs", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
    axes[0, 0].set_ylabel("objective value", fontsize=FONT)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    save_figure(fig, path)


def color_shape_figure(probe: pd.DataFrame, metrics: pd.DataFrame, reference: pd.DataFrame, path) -> None:
    channels = probe[probe["kind"] == "channel"]
    layers = list(dict.fromkeys(channels["layer"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(MAX_WIDTH, 3.8), gridspec_kw={"wspace": 0.4})
    rng = np.random.default_rng(0)
    for k, layer in enumerate(layers):
        values = channels.loc[channels["layer"] == layer, "color_index"].dropna().to_numpy()
        left.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=8, color=LAYER_COLORS[k], alpha=0.7)
        left.hlines(np.median(values) if len(values) else np.nan, k - 0.3, k + 0.3, color="black", lw=2)
    left.axhline(0.5, color="grey", ls=":", lw=1)
    left.set_xticks(range(len(layers)), [f"{layer}\n(N = {(channels['layer'] == layer).sum()})" for layer in layers])
    left.set_ylim(0, 1)
    left.set_ylabel("colour index\n(1 = colour only, 0 = digit only)", fontsize=FONT)
    left.set_title("From data: colour vs digit swap\n(bar: median; dotted: 0.5)", fontsize=FONT)
    left.tick_params(labelsize=FONT)
    right.scatter(
        reference["edge_energy"],
        reference["color_concentration"],
        s=4,
        color="lightgrey",
        label=f"real digits (N = {len(reference)})",
    )
    for k, layer in enumerate(dict.fromkeys(metrics["layer"])):
        subset = metrics[metrics["layer"] == layer]
        right.scatter(
            subset["edge_energy"],
            subset["color_concentration"],
            s=10,
            color=LAYER_COLORS[k % len(LAYER_COLORS)],
            label=f"{layer} (N = {len(subset)})",
        )
    right.set_xlabel("edge energy\n(mean Sobel magnitude of brightness)", fontsize=FONT)
    right.set_ylabel("colour concentration\n(saturation × hue concentration)", fontsize=FONT)
    right.set_title("From synthesised images\n(channel objective)", fontsize=FONT)
    right.tick_params(labelsize=FONT)
    right.legend(fontsize=FONT)
    save_figure(fig, path)


def polysemanticity_figure(
    units: pd.DataFrame, runs: Mapping[str, tuple[dict, pd.DataFrame]], path, examples: int = 4
) -> None:
    """Left: every unit's score by layer and objective (flagged in red); right: the seed images of the most
    polysemantic units, one row each, labelled in a column of their own."""
    objectives = list(dict.fromkeys(units["objective"]))
    layers = list(dict.fromkeys(units["layer"]))
    ranked = most_polysemantic(units, examples)
    seeds = int(units["n_seeds"].max())
    ratios = [3.0, 2.0] + [1.0] * seeds
    tile = MAX_WIDTH / sum(ratios)
    fig = plt.figure(figsize=(MAX_WIDTH, max(3.6, (tile + 0.15) * len(ranked) + 0.8)))
    grid = fig.add_gridspec(max(1, len(ranked)), seeds + 2, width_ratios=ratios)
    left = fig.add_subplot(grid[:, 0])
    for k, objective in enumerate(objectives):
        for j, layer in enumerate(layers):
            subset = units[(units["objective"] == objective) & (units["layer"] == layer)]
            x = j + (k - (len(objectives) - 1) / 2) * 0.18
            colors = np.where(subset["flagged"], "#cc3311", LAYER_COLORS[k % len(LAYER_COLORS)])
            left.scatter(np.full(len(subset), x), subset["score"], s=10, c=colors, alpha=0.8)
        left.scatter([], [], color=LAYER_COLORS[k % len(LAYER_COLORS)], s=10, label=_short(objective))
    left.scatter([], [], color="#cc3311", s=10, label="flagged")
    left.set_xticks(range(len(layers)), layers)
    left.set_xlim(-0.6, len(layers) - 0.4)
    left.set_ylim(-0.05, 1.05)
    left.tick_params(labelsize=FONT)
    left.set_ylabel("score = share of unrelated seed pairs", fontsize=FONT)
    left.set_title(f"Polysemanticity (N = {len(units)} units)", fontsize=FONT)
    left.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    for r, (_, unit) in enumerate(ranked.iterrows()):
        run, _table = runs[unit["layer"]]
        label = fig.add_subplot(grid[r, 1])
        label.axis("off")
        where = f" ({unit['y']},{unit['x']})" if unit["y"] >= 0 else ""
        flag = ", flagged" if unit["flagged"] else ""
        name = f"{unit['layer']} ch {unit['channel']}\n{_short(unit['objective'])}{where}"
        text = f"{name}\nscore {unit['score']:.2f}{flag}"
        label.text(
            1.0,
            0.5,
            text,
            ha="right",
            va="center",
            fontsize=FONT,
            transform=label.transAxes,
        )
        for c, index in enumerate(unit["rows"][:seeds]):
            _show(fig.add_subplot(grid[r, 2 + c]), run["images"][index])
    save_figure(fig, path)


def interpolation_figure(interpolation: pd.DataFrame, images: Mapping[str, np.ndarray], path) -> None:
    """One row per unit: the mixes (left block) and the re-optimised images (right block)."""
    if interpolation.empty:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "No unit had seed pairs to interpolate.", ha="center", va="center", fontsize=TITLE_FONT)
        save_figure(fig, path)
        return
    keys = list(dict.fromkeys(interpolation["key"]))
    n_alphas = interpolation.groupby("key").size().max()
    cols = 2 * n_alphas + 1
    tile = _tile(cols, 1.5)
    fig, axes = _grid(len(keys), cols, tile, left=1.5, row_extra=0.5, top=0.7)
    for ax in axes.ravel():
        ax.axis("off")
    for r, key in enumerate(keys):
        rows = interpolation[interpolation["key"] == key].sort_values("alpha")
        layer = rows["layer"].iloc[0]
        for c, (_, row) in enumerate(rows.iterrows()):
            position = int(row["image_index"])
            for block, (image, title) in enumerate(
                (
                    (images[f"{layer}_starts"][position], f"α={row['alpha']:.2f}\n{row['activation_before']:.3g}"),
                    (images[f"{layer}_finals"][position], f"{row['activation_after']:.3g}\n{row['lands_at']}"),
                )
            ):
                ax = axes[r, c + block * (n_alphas + 1)]
                ax.axis("on")
                _show(ax, image)
                ax.set_title(title, fontsize=FONT, pad=1)
                if c == 0 and block == 0:
                    layer_name, channel, objective, y, x = key.split("|")[:5]
                    where = f" ({y},{x})" if int(y) >= 0 else ""
                    label = f"{layer_name} ch {channel}\n{_short(objective)}{where}"
                    ax.set_ylabel(label, fontsize=FONT, rotation=0, ha="right", va="center")
    fig.suptitle(
        "Left: mixes of a unit's two least similar seed images; right: each mix re-optimised\n"
        "(numbers: unit activation; a/b/between/alike: where it ends)",
        fontsize=TITLE_FONT,
    )
    save_figure(fig, path)
