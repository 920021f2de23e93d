"""The actmax study's report section: figures (results/report/figures/actmax/) and results/actmax/section.json.

Every sentence is built from the numbers; the section states sample sizes and intervals and says when a
result is null (no layer colour-dominated, no unit flagged).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.fsutil import atomic_path  # noqa: E402
from unitscope.report.sections import html_table, unit_hrefs, write_section  # noqa: E402
from unitscope.studies.actmax.stages import display_normalize, load_run, most_polysemantic, save_grid  # noqa: E402

__all__ = ["FIGURES", "run_report"]

STUDY = "actmax"
TITLE = "Activation maximisation"
MODEL_NAME = "colored_mnist_cnn"
FIGURES = ("evaluation", "examples", "objectives", "curves", "color_vs_shape", "polysemanticity", "interpolation")
LAYER_COLORS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]


def _save(fig, path) -> None:
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(display_normalize(image[None])[0].transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _ci(interval: Sequence[float]) -> str:
    low, high = interval
    return "n/a" if not (np.isfinite(low) and np.isfinite(high)) else f"{100 * low:.1f}–{100 * high:.1f}%"


def _unit_label(key: str) -> str:
    """'conv2|5|topk|-1|-1|-1|gray_noise|0.01|0.05' -> 'conv2 ch 5, topk, init gray_noise'."""
    layer, channel, objective, y, x, target, init = key.split("|")[:7]
    where = f" at ({y},{x})" if int(y) >= 0 else ""
    target = f" (class {target})" if int(target) >= 0 else ""
    return f"{layer} ch {channel}, {objective}{where}{target}, init {init}"


def _figure_html(name: str, caption: str) -> str:
    return f'<figure><img src="figures/{STUDY}/{name}.png"><figcaption>{html.escape(caption)}</figcaption></figure>'


# ----------------------------------------------------------------------------------------------
# figures


def evaluation_figure(evaluation: list[dict], rho: float, path) -> None:
    sets = [row["set"] for row in evaluation]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    accuracy = np.array([row["accuracy"] for row in evaluation])
    low = accuracy - np.array([row["accuracy_ci95"][0] for row in evaluation])
    high = np.array([row["accuracy_ci95"][1] for row in evaluation]) - accuracy
    left.bar(sets, accuracy, yerr=[low, high], color="#4477aa", capsize=4)
    left.axhline(0.1, color="grey", ls=":", lw=1, label="chance (10 classes)")
    for x, value in enumerate(accuracy):
        left.text(x, value + 0.02, f"{100 * value:.1f}%", ha="center", fontsize=8)
    left.set_ylim(0, 1.3)
    left.set_ylabel("accuracy (95% Wilson CI)")
    left.set_title(f"Accuracy, N = {evaluation[0]['n']} digits per set (rho = {rho:g})", fontsize=9)
    left.legend(fontsize=7, loc="upper right")
    fraction = np.array([row["error_color_fraction"] for row in evaluation], dtype=float)
    lows = [row["error_color_ci95"][0] for row in evaluation]
    highs = [row["error_color_ci95"][1] for row in evaluation]
    errors = [np.nan_to_num(fraction - lows), np.nan_to_num(np.array(highs) - fraction)]
    right.bar(sets, np.nan_to_num(fraction), yerr=errors, color="#ee6677", capsize=4)
    right.axhline(1 / 9, color="grey", ls=":", lw=1, label="chance (1 of 9 wrong classes)")
    for x, row in enumerate(evaluation):
        right.text(x, 0.02, f"{row['errors_as_color_class']}/{row['errors']}", ha="center", fontsize=8, color="white")
    right.set_ylim(0, 1.3)
    right.set_ylabel("wrong predictions = colour's class")
    right.set_title("Errors that name the class of the digit's colour", fontsize=9)
    right.legend(fontsize=7, loc="upper right")
    _save(fig, path)


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
    fig, axes = plt.subplots(rows, cols, figsize=(0.95 * cols + 0.6, 1.0 * rows + 0.6), squeeze=False)
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
                ax.set_title(f"{match['final_activation'].iloc[0]:.3g}", fontsize=6, pad=1)
                if c == 0:
                    ax.set_ylabel(f"{layer} ch {channel}", fontsize=7)
                if r == 0 and c == len(seeds) // 2:
                    ax.set_title(f"{layer}\n{match['final_activation'].iloc[0]:.3g}", fontsize=7, pad=1)
        offset += len(seeds) + 1
    fig.suptitle(
        f"Objective {objective}: one image per seed (columns); number = final activation; display-normalised",
        fontsize=8,
    )
    _save(fig, path)


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
    fig, axes = plt.subplots(len(blocks), cols, figsize=(0.95 * cols + 0.6, 1.15 * len(blocks) + 0.5), squeeze=False)
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
                label = f"{objective}{where}" if s == 0 else ""
                ax.set_title(f"{label}\n{row['final_activation']:.3g}", fontsize=6, pad=1)
                if k == 0 and s == 0:
                    ax.set_ylabel(f"{layer} ch {channel}", fontsize=7)
    fig.suptitle("Objectives A–D on one channel per layer (seeds 0–2); number = final unit activation", fontsize=8)
    _save(fig, path)


def curves_figure(runs: Mapping[str, tuple[dict, pd.DataFrame]], path) -> None:
    layers = list(runs)
    fig, axes = plt.subplots(
        1, len(layers), figsize=(3.6 * len(layers), 3.0), squeeze=False, gridspec_kw={"wspace": 0.35}
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
            ax.plot(steps, median, color=color, lw=1.2, label=f"{objective} (N = {len(columns)})")
            ax.fill_between(steps, q1, q3, color=color, alpha=0.2)
        ax.set_xlabel("Adam step")
        ax.set_ylabel("objective value")
        ax.set_title(f"{layer}: median and IQR over runs", fontsize=9)
        ax.legend(fontsize=6)
    _save(fig, path)


def color_shape_figure(probe: pd.DataFrame, metrics: pd.DataFrame, reference: pd.DataFrame, path) -> None:
    channels = probe[probe["kind"] == "channel"]
    layers = list(dict.fromkeys(channels["layer"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8), gridspec_kw={"wspace": 0.35})
    rng = np.random.default_rng(0)
    for k, layer in enumerate(layers):
        values = channels.loc[channels["layer"] == layer, "color_index"].dropna().to_numpy()
        left.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=8, color=LAYER_COLORS[k], alpha=0.7)
        left.hlines(np.median(values) if len(values) else np.nan, k - 0.3, k + 0.3, color="black", lw=2)
    left.axhline(0.5, color="grey", ls=":", lw=1)
    left.set_xticks(range(len(layers)), [f"{layer}\n(N = {(channels['layer'] == layer).sum()})" for layer in layers])
    left.set_ylim(0, 1)
    left.set_ylabel("colour index (1 = colour only, 0 = digit only)")
    left.set_title("From data: colour swap vs digit swap (bar: median)", fontsize=9)
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
    right.set_xlabel("edge energy (mean Sobel magnitude of brightness)")
    right.set_ylabel("colour concentration\n(saturation × hue concentration)")
    right.set_title("From synthesised images (channel objective)", fontsize=9)
    right.legend(fontsize=7)
    _save(fig, path)


def polysemanticity_figure(
    units: pd.DataFrame, runs: Mapping[str, tuple[dict, pd.DataFrame]], path, examples: int = 4
) -> None:
    objectives = list(dict.fromkeys(units["objective"]))
    layers = list(dict.fromkeys(units["layer"]))
    ranked = most_polysemantic(units, examples)
    seeds = int(units["n_seeds"].max())
    fig = plt.figure(figsize=(4 + 0.9 * seeds, max(3.2, 1.0 * len(ranked) + 0.8)))
    grid = fig.add_gridspec(max(1, len(ranked)), seeds + 4)
    left = fig.add_subplot(grid[:, :3])
    for k, objective in enumerate(objectives):
        for j, layer in enumerate(layers):
            subset = units[(units["objective"] == objective) & (units["layer"] == layer)]
            x = j + (k - (len(objectives) - 1) / 2) * 0.18
            colors = np.where(subset["flagged"], "#cc3311", LAYER_COLORS[k % len(LAYER_COLORS)])
            left.scatter(np.full(len(subset), x), subset["score"], s=10, c=colors, alpha=0.8)
        left.scatter([], [], color=LAYER_COLORS[k % len(LAYER_COLORS)], s=10, label=objective)
    left.scatter([], [], color="#cc3311", s=10, label="flagged")
    left.set_xticks(range(len(layers)), layers)
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("score = share of unrelated seed pairs")
    left.set_title(f"Polysemanticity (N = {len(units)} units)", fontsize=9)
    left.legend(fontsize=6)
    for r, (_, unit) in enumerate(ranked.iterrows()):
        run, _table = runs[unit["layer"]]
        for c, index in enumerate(unit["rows"][:seeds]):
            ax = fig.add_subplot(grid[r, 4 + c])
            _show(ax, run["images"][index])
            if c == 0:
                where = f" ({unit['y']},{unit['x']})" if unit["y"] >= 0 else ""
                flag = "flagged" if unit["flagged"] else "not flagged"
                ax.set_ylabel(
                    f"{unit['layer']} ch {unit['channel']}\n{unit['objective']}{where}\n{unit['score']:.2f}, {flag}",
                    fontsize=6,
                )
    _save(fig, path)


def interpolation_figure(interpolation: pd.DataFrame, images: Mapping[str, np.ndarray], path) -> None:
    """One row per unit: the mixes (left block) and the re-optimised images (right block)."""
    if interpolation.empty:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "No unit had seed pairs to interpolate.", ha="center", va="center")
        _save(fig, path)
        return
    keys = list(dict.fromkeys(interpolation["key"]))
    n_alphas = interpolation.groupby("key").size().max()
    cols = 2 * n_alphas + 1
    fig, axes = plt.subplots(len(keys), cols, figsize=(0.95 * cols + 1.2, 1.15 * len(keys) + 0.7), squeeze=False)
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
                    (images[f"{layer}_finals"][position], f"{row['activation_after']:.3g} {row['lands_at']}"),
                )
            ):
                ax = axes[r, c + block * (n_alphas + 1)]
                ax.axis("on")
                _show(ax, image)
                ax.set_title(title, fontsize=6, pad=1)
                if c == 0 and block == 0:
                    layer_name, channel, objective, y, x = key.split("|")[:5]
                    where = f" ({y},{x})" if int(y) >= 0 else ""
                    short = objective.replace("class_conditional", "class-cond.")
                    ax.set_ylabel(f"{layer_name} ch {channel}\n{short}{where}", fontsize=6)
    fig.suptitle(
        "Left: mixes of a unit's two least similar seed images; right: each mix re-optimised "
        "(numbers: unit activation; a/b/between/alike: where it ends)",
        fontsize=8,
    )
    _save(fig, path)


# ----------------------------------------------------------------------------------------------
# section


def _color_sentence(table: pd.DataFrame) -> tuple[str, list[str]]:
    parts, color_layers = [], []
    for row in table.itertuples():
        low, high = row.median_color_index_ci95
        parts.append(
            f"{row.layer} {row.median_color_index:.2f} (95% CI {low:.2f}–{high:.2f}; "
            f"{row.color_dominated}/{row.n_responsive} channels change more with colour than with digit)"
        )
        if np.isfinite(low) and low > 0.5:
            color_layers.append(row.layer)
    return "; ".join(parts), color_layers


def run_report(
    *,
    evaluation_path,
    model_info_path,
    units_path,
    probe_path,
    analysis_dir,
    run_paths: Mapping[str, tuple[str, str]],
    registry_paths: Sequence[tuple[str, str, str, str]] = (),
    unit_figures_dir,
    figure_paths: Mapping[str, str],
    section_path,
    rho: float,
    settings: Mapping,
) -> dict:
    """Stage: the figures and the section (conclusion, body, summary, units)."""
    evaluation = json.loads(Path(evaluation_path).read_text())
    info = json.loads(Path(model_info_path).read_text())
    selection = json.loads(Path(units_path).read_text())
    probe = pd.read_parquet(probe_path)
    analysis_dir = Path(analysis_dir)
    units = pd.read_parquet(analysis_dir / "polysemanticity.parquet")
    metrics = pd.read_parquet(analysis_dir / "image_metrics.parquet")
    reference = pd.read_parquet(analysis_dir / "reference_metrics.parquet")
    color_table = pd.read_parquet(analysis_dir / "color_vs_shape.parquet")
    interpolation = pd.read_parquet(analysis_dir / "interpolation.parquet")
    with np.load(analysis_dir / "interpolation.npz") as arrays:
        interp_images = {key: arrays[key] for key in arrays.files}
    runs = {layer: load_run(npz, table) for layer, (npz, table) in run_paths.items()}
    all_runs = pd.concat([table for _, table in runs.values()], ignore_index=True)

    channel_metrics = metrics[metrics["objective"] == "channel"]
    if channel_metrics.empty:
        channel_metrics = metrics
    evaluation_figure(evaluation, rho, figure_paths["evaluation"])
    examples_figure(runs, figure_paths["examples"])
    objectives_figure(runs, figure_paths["objectives"])
    curves_figure(runs, figure_paths["curves"])
    color_shape_figure(probe, channel_metrics, reference, figure_paths["color_vs_shape"])
    polysemanticity_figure(units, runs, figure_paths["polysemanticity"])
    interpolation_figure(interpolation, interp_images, figure_paths["interpolation"])

    by_set = {row["set"]: row for row in evaluation}
    biased, unbiased, conflicting = by_set["biased"], by_set["unbiased"], by_set["conflicting"]
    gap = biased["accuracy"] - conflicting["accuracy"]
    color_text, color_layers = _color_sentence(color_table)
    judged = units[units["converged"]]
    flagged = units[units["flagged"]]
    flagged_names = [
        f"{u.layer} ch {u.channel} {u.objective}" + (f" ({u.y},{u.x})" if u.y >= 0 else "") + f" (score {u.score:.2f})"
        for u in flagged.sort_values("score", ascending=False).itertuples()
    ]
    n_seeds = int(units["n_seeds"].max()) if len(units) else 0

    conclusion = (
        f"A {len(info['widths'])}-conv CNN trained on Biased Colored-MNIST (rho = {rho:g}, "
        f"{info['train_images']} training digits) is {_pct(biased['accuracy'])} accurate on biased test digits, "
        f"{_pct(unbiased['accuracy'])} on unbiased and {_pct(conflicting['accuracy'])} on conflicting ones "
        f"(N = {biased['n']} each; gap biased − conflicting {100 * gap:.1f} points); "
        f"{conflicting['errors_as_color_class']} of its {conflicting['errors']} errors on conflicting digits "
        f"({_pct(conflicting['error_color_fraction'])}, chance 11.1%) name the class of the digit's colour. "
        f"Median colour index of the channels (colour-swap / (colour-swap + digit-swap) activation change): "
        f"{color_text}. "
        + (
            f"Layers whose median lies above 0.5 with its whole 95% CI: {', '.join(color_layers)}. "
            if color_layers
            else "No layer has its median colour index above 0.5 with its whole 95% CI. "
        )
        + f"{len(flagged)} of {len(judged)} units judged ({n_seeds} seeds each) are flagged polysemantic"
        + (f": {', '.join(flagged_names[:5])}{' …' if len(flagged_names) > 5 else ''}." if len(flagged) else ".")
    )

    eval_frame = pd.DataFrame(
        [
            {
                "set": row["set"],
                "N": row["n"],
                "accuracy": _pct(row["accuracy"]),
                "95% CI": _ci(row["accuracy_ci95"]),
                "errors": row["errors"],
                "errors = colour's class": f"{row['errors_as_color_class']} ({_pct(row['error_color_fraction'])})",
                "95% CI ": _ci(row["error_color_ci95"]),
                "prediction follows a non-class colour": f"{row['follows_color']}/{row['mismatched_color']}",
            }
            for row in evaluation
        ]
    )
    color_frame = pd.DataFrame(
        [
            {
                "layer": row.layer,
                "channels": row.n_channels,
                "median colour index (95% CI)": f"{row.median_color_index:.3f} "
                f"({row.median_color_index_ci95[0]:.3f}–{row.median_color_index_ci95[1]:.3f})",
                "colour-dominated channels": f"{row.color_dominated}/{row.n_responsive} "
                f"({_pct(row.color_dominated_fraction)}; CI {_ci(row.color_dominated_ci95)})",
                "images": row.n_images,
                "median colour concentration": f"{row.median_color_concentration:.3f}",
                "median edge energy (brightness)": f"{row.median_edge_energy:.3f}",
                "median edge energy (RGB)": f"{row.median_color_edge_energy:.3f}",
                "median dark fraction": f"{row.median_dark_fraction:.2f}",
            }
            for row in color_table.itertuples()
        ]
    )
    reference_line = (
        f"Real coloured digits (N = {len(reference)}) have median colour concentration "
        f"{reference['color_concentration'].median():.3f}, edge energy {reference['edge_energy'].median():.3f} "
        f"(RGB {reference['color_edge_energy'].median():.3f}) and "
        f"dark fraction {reference['dark_fraction'].median():.2f}; the starting images of the runs have median "
        f"colour concentration {metrics['start_color_concentration'].median():.3f} and edge energy "
        f"{metrics['start_edge_energy'].median():.3f}."
    )
    page_units = [  # the units that get a page (their facts are gathered at the end)
        {"model": MODEL_NAME, "layer": layer, "channel": unit["channel"]}
        for layer, chosen in selection["layers"].items()
        for unit in chosen["units"]
    ]
    unit_frame = units.assign(_varied=-units["pixel_similarity"])
    unit_frame = unit_frame.sort_values(["flagged", "score", "_varied"], ascending=False).head(12)
    unit_frame = pd.DataFrame(
        {
            "layer": unit_frame["layer"],
            "channel": unit_frame["channel"],
            "objective": unit_frame["objective"],
            "neuron": [f"({y},{x})" if y >= 0 else "" for y, x in zip(unit_frame["y"], unit_frame["x"], strict=True)],
            "init": unit_frame["init"],
            "score": unit_frame["score"].round(2),
            "pixel sim.": unit_frame["pixel_similarity"].round(2),
            "colour sim.": unit_frame["color_similarity"].round(2),
            "activation sim.": unit_frame["activation_similarity"].round(2),
            "converged": unit_frame["converged"],
            "flagged": unit_frame["flagged"],
        }
    )
    interp_lines = []
    for key, rows in interpolation.groupby("key", sort=False):
        rows = rows.sort_values("alpha")
        ends = rows[rows["alpha"].isin([rows["alpha"].min(), rows["alpha"].max()])]["activation_before"].mean()
        middle = rows.iloc[len(rows) // 2]
        interior = rows[(rows["alpha"] > rows["alpha"].min()) & (rows["alpha"] < rows["alpha"].max())]
        landings = ", ".join(f"α={a:.2f}→{w}" for a, w in zip(interior["alpha"], interior["lands_at"], strict=True))
        status = "flagged" if rows["flagged"].iloc[0] else "not flagged"
        interp_lines.append(
            f"<li>{html.escape(_unit_label(key))} ({status}, "
            f"score {rows['score'].iloc[0]:.2f}): the α={middle['alpha']:.2f} mix starts at "
            f"{middle['activation_before']:.3g} against {ends:.3g} for the two seed images "
            f"(ratio {middle['activation_before'] / ends if ends else float('nan'):.2f}); after "
            f"{settings['interpolation_steps']} steps the mixes reach {interior['activation_after'].min():.3g}–"
            f"{interior['activation_after'].max():.3g} and land at: {html.escape(landings)}.</li>"
        )
    init_table = (
        all_runs[all_runs["objective"] == all_runs["objective"].iloc[0]]
        .groupby(["layer", "init"], sort=False)["final_activation"]
        .agg(["count", "median", "min", "max"])
        .reset_index()
    )
    for column in ("median", "min", "max"):
        init_table[column] = init_table[column].astype(float).round(3)
    with atomic_path(unit_figures_dir) as temp:  # every unit's image, for the unit pages
        temp.mkdir()
        registry_html, registry_summary, registry_units = registry_outputs(registry_paths, temp)
        mnist_images = mnist_unit_images(runs, selection, temp)

    n_runs = len(all_runs)
    body = (
        f"<p>Biased Colored-MNIST: the {info['train_images']} training digits (the 5k MNIST training subset plus a "
        f"seeded half of the 10k test file) get their class colour with probability rho = {rho:g}; the other half "
        f"of the test file ({biased['n']} digits) is coloured three ways: <i>biased</i> (same rule), "
        f"<i>unbiased</i> (uniform colours) and <i>conflicting</i> (never the class colour). The CNN "
        f"(conv1–conv3, widths {info['widths']}, {info['parameters']:,} parameters) was trained for "
        f"{info['epochs']} epochs (seed {info['seed']}).</p>"
        + html_table(eval_frame)
        + _figure_html(
            "evaluation",
            f"Left: accuracy per evaluation set (N = {biased['n']} each, 95% Wilson intervals). Right: share of "
            "wrong predictions that name the class of the image's colour (dotted: 1/9 chance).",
        )
        + f"<p>Units: per layer the {settings['channels_per_layer']} channels with the highest variance of their "
        f"spatial-mean activation over the {next(iter(selection['layers'].values()))['n_images']} unbiased "
        f"evaluation digits (plus requested ones), {settings['neurons_per_channel']} spatial neurons per channel "
        "(the positions that vary most, kept apart) and, for objective D, the class whose biased-set digits drive "
        f"the channel most. {n_runs} runs ({settings['seeds']} seeds each; objectives "
        f"{', '.join(dict.fromkeys(all_runs['objective']))}), each layer optimised as one batch for "
        f"{settings['steps']} Adam steps (lr {settings['lr']}), pixels clamped to [0, 1], model frozen. "
        "PNG grids of every run's snapshots are in <code>results/actmax/images/&lt;layer&gt;/</code>; the table "
        "of every run (layer, unit, objective, regulariser, seed, final activation) is "
        "<code>results/actmax/analysis/runs.csv</code>.</p>"
        + _figure_html(
            "examples",
            "Objective A (channel mean) images of the chosen channels; rows channels, columns seeds; each image is "
            "stretched to its own range for display; number = final activation (pre-ReLU conv output).",
        )
        + _figure_html(
            "objectives",
            "The four objectives on the first chosen channel of each layer (seeds 0–2; B and D at the first "
            "chosen neuron); number = final activation of the unit (for D without the logit term).",
        )
        + _figure_html("curves", f"Objective value per step, median and interquartile range over runs (N = {n_runs}).")
        + "<p>Initialisations (first objective, final activation):</p>"
        + html_table(init_table)
        + "<h3>Colour vs shape</h3><p>From data: for each channel, the mean absolute change of its spatial-mean "
        f"activation when only the colour of a digit changes, against when only the digit changes (colour fixed), "
        f"over {settings['probe_groups']} groups of ten digits × ten colours; colour index = colour change / "
        f"(colour + digit change). From images: colour concentration and edge energy of the channel-objective "
        f"images. {reference_line}</p>"
        + html_table(color_frame)
        + _figure_html(
            "color_vs_shape",
            "Left: colour index of every channel by layer (bar: median). Right: colour concentration against edge "
            "energy of the synthesised channel images, with real coloured digits in grey.",
        )
        + "<h3>Polysemanticity</h3><p>For each unit, its seed images are compared pairwise in pixel space "
        "(1 − RMS difference), in colour (hue-histogram intersection) and in the unit's own layer (cosine of the "
        "rectified activations). Each pair is ranked against pairs of images of different units of the same layer "
        "and objective; a pair whose mean rank is below the median of those is unrelated. Score = share of "
        f"unrelated seed pairs; flagged when score ≥ {settings['flag_fraction']} and every seed reached at least "
        f"{settings['converged_fraction']:.0%} of the best seed's activation. {len(flagged)} of {len(judged)} "
        f"judged units are flagged ({len(units) - len(judged)} not judged: a seed did not converge).</p>"
        + html_table(
            unit_frame,
            links={
                "channel": unit_hrefs(
                    [MODEL_NAME] * len(unit_frame), unit_frame["layer"], unit_frame["channel"], page_units
                )
            },
        )
        + _figure_html(
            "polysemanticity",
            f"Left: score of every unit (N = {len(units)}), flagged in red. Right: seed images of the highest-"
            "scoring converged units.",
        )
        + f"<p>Interpolation ({settings['interpolation_units']} units per layer: flagged ones first, otherwise "
        "those whose seed images vary most): the two least similar seed images of a unit are mixed and each mix "
        "re-optimised; a dip in activation between them and mixes that fall back to one end point mean two "
        "separate optima.</p>"
        + (f"<ul>{''.join(interp_lines)}</ul>" if interp_lines else "<p>No unit was interpolated.</p>")
        + _figure_html(
            "interpolation",
            "One row per unit: the mixes (left) and the re-optimised images (right); numbers = unit activation; "
            "a/b = the end point the re-optimised image is nearer to, when nearer than half the end points' "
            "distance (RMS pixel difference); 'between' otherwise; 'alike' when the end points differ by < 0.05 RMS.",
        )
        + registry_html
    )
    summary = {
        "rho": rho,
        "train_images": info["train_images"],
        "evaluation": {
            row["set"]: {
                "n": row["n"],
                "accuracy": row["accuracy"],
                "accuracy_ci95": row["accuracy_ci95"],
                "errors": row["errors"],
                "errors_as_color_class": row["errors_as_color_class"],
                "error_color_fraction": row["error_color_fraction"],
                "follows_color_fraction": row["follows_color_fraction"],
            }
            for row in evaluation
        },
        "biased_minus_conflicting_accuracy": gap,
        "color_vs_shape": {
            row.layer: {
                "n_channels": row.n_channels,
                "median_color_index": row.median_color_index,
                "median_color_index_ci95": list(row.median_color_index_ci95),
                "color_dominated_fraction": row.color_dominated_fraction,
                "median_color_concentration": row.median_color_concentration,
                "median_edge_energy": row.median_edge_energy,
                "median_color_edge_energy": row.median_color_edge_energy,
            }
            for row in color_table.itertuples()
        },
        "color_layers": color_layers,
        "runs": n_runs,
        "polysemanticity": {
            "units": int(len(units)),
            "judged": int(len(judged)),
            "flagged": int(len(flagged)),
            "flagged_units": flagged_names,
        },
        "registry": registry_summary,
    }
    index_by_channel = probe[probe["kind"] == "channel"].set_index(["layer", "channel"])["color_index"]
    unit_facts = []
    for layer, chosen in selection["layers"].items():
        for unit in chosen["units"]:
            rows = units[(units["layer"] == layer) & (units["channel"] == unit["channel"])]
            channel_rows = rows[rows["objective"] == "channel"]
            facts = {
                "color_index": round(float(index_by_channel.get((layer, unit["channel"]), np.nan)), 3),
                "variance_rank": unit["variance_rank"],
                "polysemantic_flags": f"{int(rows['flagged'].sum())}/{len(rows)} unit-runs",
            }
            if len(channel_rows):
                facts["channel_objective_score"] = round(float(channel_rows["score"].iloc[0]), 2)
                facts["actmax_activation"] = round(float(channel_rows["max_final_activation"].iloc[0]), 3)
            unit_facts.append(
                {
                    "model": MODEL_NAME,
                    "layer": layer,
                    "channel": unit["channel"],
                    "facts": facts,
                    "images": mnist_images.get((layer, int(unit["channel"])), []),
                }
            )
    unit_facts.extend(registry_units)
    write_section(
        section_path,
        study=STUDY,
        title=TITLE,
        conclusion=conclusion,
        body_html=body,
        summary=summary,
        units=unit_facts,
    )
    return summary


def mnist_unit_images(runs: Mapping[str, tuple[dict, pd.DataFrame]], selection: Mapping, out_dir) -> dict:
    """Each chosen Colored-MNIST channel's final channel-objective images (rows: inits, columns: seeds) as
    out_dir/<unit page name>.png; returns {(layer, channel): [image entry for its unit page]}."""
    images = {}
    for layer, chosen in selection["layers"].items():
        run, table = runs[layer]
        for unit in chosen["units"]:
            channel = int(unit["channel"])
            rows = table[(table["channel"] == channel) & (table["objective"] == "channel")]
            if rows.empty:
                continue
            first = rows.iloc[0]  # one regulariser setting (the first) per page image
            rows = rows[(rows["l2"] == first["l2"]) & (rows["tv"] == first["tv"])]
            inits = list(dict.fromkeys(rows["init"]))
            seeds = sorted(set(rows["seed"]))
            position = {(i, s): index for index, i, s in zip(rows.index, rows["init"], rows["seed"], strict=True)}
            tiles = np.stack([[run["images"][position[(i, s)]] for s in seeds] for i in inits])
            name = f"{MODEL_NAME}__{layer}__{channel}.png"
            save_grid(tiles, Path(out_dir) / name, scale=3, col_labels=[f"seed {s}" for s in seeds])
            images[(layer, channel)] = [
                {
                    "src": f"figures/actmax/units/{name}",
                    "caption": f"Images that maximise the mean of {layer} channel {channel} (28×28 px, L2 "
                    f"{first['l2']:g}, TV {first['tv']:g}; rows: start {', '.join(inits)}; columns: seeds); each "
                    "stretched to its own range for display.",
                }
            ]
    return images


def registry_outputs(
    registry_paths: Sequence[tuple[str, str, str, str]], figures_dir
) -> tuple[str, list[dict], list[dict]]:
    """Registry-model runs: the section's HTML, summary rows, and one unit (facts + image) per channel.

    Each channel's final images (rows: objectives, columns: seeds) go to figures_dir/<unit page name>.png
    (figures_dir: an existing folder, which the caller writes whole).
    """
    if not registry_paths:
        return "", [], []
    summary, units, rows = [], [], []
    for model, layer, npz_path, table_path in registry_paths:
        run, table = load_run(npz_path, table_path)
        summary.append(
            {
                "model": model,
                "layer": layer,
                "runs": len(table),
                "parameterization": str(table["parameterization"].iloc[0]),
                "median_final_activation": float(table["final_activation"].median()),
                "median_start_activation": float(table["start_objective"].median()),
            }
        )
        unit_layer = str(table["unit_layer"].iloc[0]) if "unit_layer" in table else layer
        parameterization = str(table["parameterization"].iloc[0])
        where = layer if unit_layer == layer else f"{layer} (inside {unit_layer})"
        for channel, group in table.groupby("channel", sort=False):
            objectives = list(dict.fromkeys(group["objective"]))
            seeds = sorted(set(group["seed"]))
            position = {(o, s): i for i, (o, s) in enumerate(zip(group["objective"], group["seed"], strict=True))}
            tiles = np.stack([[run["images"][group.index[position[(o, s)]]] for s in seeds] for o in objectives])
            name = f"{model}__{unit_layer}__{int(channel)}.png"
            save_grid(tiles, Path(figures_dir) / name, scale=1, col_labels=[f"seed {s}" for s in seeds])
            final = group["final_activation"].astype(float)
            start = group["start_objective"].astype(float)
            units.append(
                {
                    "model": model,
                    "layer": unit_layer,
                    "channel": int(channel),
                    "facts": {
                        "actmax final activation (median over runs)": round(float(final.median()), 3),
                        "actmax start activation (median)": round(float(start.median()), 3),
                        "actmax runs": f"{len(group)} ({', '.join(objectives)}; {len(seeds)} seeds)",
                    },
                    "images": [
                        {
                            "src": f"figures/actmax/units/{name}",
                            "caption": f"Activation maximisation of {model} {where} channel {int(channel)}: final "
                            f"images (rows: objective {', '.join(objectives)}; columns: seeds), {parameterization} "
                            "parameterisation; each image stretched to its own range for display.",
                        }
                    ],
                }
            )
            rows.append(
                {
                    "model": model,
                    "layer": unit_layer,
                    "optimised at": layer,
                    "channel": int(channel),
                    "runs": len(group),
                    "start activation (median)": round(float(start.median()), 3),
                    "final activation (median)": round(float(final.median()), 3),
                }
            )
    frame = pd.DataFrame(rows)
    links = {"channel": unit_hrefs(frame["model"], frame["layer"], frame["channel"])}
    html_text = (
        "<h3>Registry models</h3><p>Channel-level runs on registry models; each channel's images are on its unit "
        "page (PNG grids of the optimisation under <code>results/actmax/images/registry/</code>).</p>"
        + html_table(pd.DataFrame(summary))
        + html_table(frame, links=links)
    )
    return html_text, summary, units


def figure_paths(root: str | os.PathLike) -> dict[str, str]:
    return {name: str(Path(root) / f"{name}.png") for name in FIGURES}
