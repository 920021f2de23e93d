"""The actmax study's stages (called by thin workflow scripts): choose units, probe colour vs shape on data,
optimise one layer's units in one batch, optimise registry-model channels, and analyse the results.

Artifacts (under results/actmax/):
  units.json                      chosen units per layer with the numbers behind the choice
  probe.parquet                   colour-swap vs digit-swap activation changes per channel / neuron
  runs/<layer>.npz, .parquet      images, snapshots, curves; one table row per run
  images/<layer>/                 PNG grids per unit and objective: rows seeds, columns snapshots
  registry/<model>/<layer>.*      the same for registry models (optional; unitscope.studies.actmax.registry)
  analysis/                       polysemanticity, image metrics, interpolation, the run table (CSV)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from unitscope.fsutil import atomic_path, write_text_atomic
from unitscope.runtime import use_threads
from unitscope.studies.actmax.analysis import (
    color_shape_probe,
    color_shape_table,
    image_color_shape,
    layer_activations,
    polysemanticity,
    seed_similarities,
    select_units,
)
from unitscope.studies.actmax.colored_mnist import load_colored_mnist, load_trained_model
from unitscope.studies.actmax.render import ActmaxResult, UnitSpecs, optimize_inputs, unit_activation

__all__ = [
    "GROUP_COLUMNS",
    "load_run",
    "most_polysemantic",
    "run_analysis",
    "run_optimize_layer",
    "run_probe",
    "run_select_units",
    "save_run",
    "unit_rows",
]

# End points of an interpolation closer than this (RMS pixel difference, pixels in [0, 1]) count as alike.
ALIKE_RMS = 0.05
# Columns that identify one unit-run up to its seed (the polysemanticity groups).
GROUP_COLUMNS = ("layer", "channel", "objective", "y", "x", "target_class", "init", "l2", "tv")


def _json(path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=lambda v: v.tolist()) + "\n")


# ----------------------------------------------------------------------------------------------
# units and probe


def run_select_units(
    *, data_path, checkpoint_path, info_path, out_path, layers, channels_per_layer, extra_channels, neurons_per_channel
) -> dict:
    """Stage: units.json. Channels ranked on the unbiased evaluation set; D's target from the biased set."""
    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    unknown = [layer for layer in layers if layer not in dict(model.named_modules()) or not layer]
    if unknown:
        raise ValueError(
            f"actmax.units.layers: {unknown} are not modules of the Colored-MNIST CNN (conv1, conv2, conv3)"
        )
    images, _, _ = data.tensors("unbiased")
    target_images, target_labels, _ = data.tensors("biased")
    selection = select_units(
        model,
        images,
        layers,
        channels_per_layer=channels_per_layer,
        extra_channels=extra_channels,
        neurons_per_channel=neurons_per_channel,
        target_images=target_images,
        target_labels=target_labels,
    )
    for layer, chosen in selection.items():
        if not chosen["units"]:
            raise ValueError(f"actmax.units: no channel chosen for layer {layer} (channels_per_layer 0, no extra)")
        print(f"{layer}: channels {[u['channel'] for u in chosen['units']]}", flush=True)
    _json(out_path, {"selection_set": "unbiased", "target_class_set": "biased", "layers": selection})
    return selection


def run_probe(*, data_path, checkpoint_path, info_path, units_path, out_path, groups, seed) -> pd.DataFrame:
    """Stage: probe.parquet, colour-swap vs digit-swap changes for every channel and every chosen neuron."""
    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    selection = json.loads(Path(units_path).read_text())["layers"]
    neurons = {
        layer: [(u["channel"], y, x) for u in chosen["units"] for y, x in u["neurons"]]
        for layer, chosen in selection.items()
    }
    probe = color_shape_probe(
        model,
        data.digits["unbiased"],
        data.labels["unbiased"],
        list(selection),
        groups=groups,
        seed=seed,
        target=data.target,
        neurons=neurons,
    )
    with atomic_path(out_path) as temp:
        probe.to_parquet(temp, index=False)
    for layer, group in probe[probe["kind"] == "channel"].groupby("layer", sort=False):
        print(f"{layer}: median colour index {group['color_index'].median():.3f} ({len(group)} channels)", flush=True)
    return probe


# ----------------------------------------------------------------------------------------------
# optimisation


def unit_rows(layer_selection: Mapping, optimization: Mapping) -> list[dict]:
    """Every (unit, objective, neuron, init, regulariser, seed) of one layer, in a fixed order."""
    inits, rows = list(optimization["inits"]), []
    for unit in layer_selection["units"]:
        for objective in optimization["objectives"]:
            positions = unit["neurons"] if objective in ("neuron", "class_conditional") else [[-1, -1]]
            run_inits = inits if objective in optimization["init_objectives"] else inits[:1]
            for y, x in positions:
                for init in run_inits:
                    for regulariser in optimization["regularisers"]:
                        for seed in range(int(optimization["seeds"])):
                            rows.append(
                                {
                                    "channel": unit["channel"],
                                    "objective": objective,
                                    "y": y,
                                    "x": x,
                                    "target_class": unit["target_class"] if objective == "class_conditional" else -1,
                                    "class_weight": float(optimization["class_weight"]),
                                    "seed": seed,
                                    "init": init,
                                    "l2": float(regulariser["l2"]),
                                    "tv": float(regulariser["tv"]),
                                }
                            )
    return rows


def save_run(result: ActmaxResult, npz_path, table_path, *, extra: Mapping | None = None) -> pd.DataFrame:
    table = result.table()
    for key, value in (extra or {}).items():
        table[key] = value
    with atomic_path(npz_path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(
            handle,
            images=result.images.numpy().astype(np.float32),
            snapshots=result.snapshots,
            snapshot_steps=np.array(result.snapshot_steps),
            objective_curve=result.objective_curve,
            loss_curve=result.loss_curve,
            seconds=np.float64(result.seconds),
        )
    with atomic_path(table_path) as temp:
        table.to_parquet(temp, index=False)
    return table


def load_run(npz_path, table_path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    with np.load(npz_path) as arrays:
        run = {key: arrays[key] for key in arrays.files}
    return run, pd.read_parquet(table_path)


def display_normalize(images: np.ndarray) -> np.ndarray:
    """uint8 display copy: each image stretched to its own min..max (all channels together, so hues stay)."""
    images = images.astype(np.float32)
    axes = tuple(range(images.ndim - 3, images.ndim))
    low = images.min(axis=axes, keepdims=True)
    high = images.max(axis=axes, keepdims=True)
    stretched = (images - low) / np.maximum(high - low, 1e-6)
    return (stretched * 255).round().astype(np.uint8)


def save_grid(images: np.ndarray, path, *, scale: int = 3, row_labels=None, col_labels=None) -> None:
    """[rows, cols, 3, H, W] -> one PNG (nearest upscaling, 2-px gaps, optional text labels)."""
    rows, cols, _, height, width = images.shape
    cell_h, cell_w, gap = height * scale, width * scale, 2
    left = 34 if row_labels else 0
    top = 12 if col_labels else 0
    canvas = Image.new("RGB", (left + cols * (cell_w + gap), top + rows * (cell_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shown = display_normalize(images)
    for r in range(rows):
        for c in range(cols):
            tile = Image.fromarray(shown[r, c].transpose(1, 2, 0)).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + c * (cell_w + gap), top + r * (cell_h + gap)))
        if row_labels:
            draw.text((2, top + r * (cell_h + gap) + cell_h // 2 - 5), str(row_labels[r]), fill=(0, 0, 0))
    for c, label in enumerate(col_labels or []):
        draw.text((left + c * (cell_w + gap) + 2, 0), str(label), fill=(0, 0, 0))
    with atomic_path(path) as temp:
        canvas.save(temp, format="PNG")


def save_unit_grids(table: pd.DataFrame, snapshots: np.ndarray, snapshot_steps, out_dir) -> int:
    """One grid per unit-run group (rows: seeds, columns: snapshots) under out_dir/ch<C>/; returns the count."""
    out_dir = Path(out_dir)
    count = 0
    for _, group in table.groupby(list(GROUP_COLUMNS[1:]), sort=False):
        first = group.iloc[0]
        position = f"_y{first['y']}x{first['x']}" if first["y"] >= 0 else ""
        target = f"_class{first['target_class']}" if first["target_class"] >= 0 else ""
        name = f"{first['objective']}{position}{target}_{first['init']}_l2-{first['l2']:g}_tv-{first['tv']:g}.png"
        rows = group.index.to_numpy()
        tiles = snapshots[:, rows].transpose(1, 0, 2, 3, 4)  # [seeds, snapshots, 3, H, W]
        save_grid(
            tiles,
            out_dir / f"ch{int(first['channel']):03d}" / name,
            row_labels=[f"s{s}" for s in group["seed"]],
            col_labels=[str(s) for s in snapshot_steps],
        )
        count += 1
    return count


def run_optimize_layer(
    *,
    checkpoint_path,
    info_path,
    units_path,
    layer: str,
    optimization: Mapping,
    npz_path,
    table_path,
    images_dir,
    max_batch: int | None = None,
    threads: int = 1,
) -> pd.DataFrame:
    """Stage: every unit-run of one layer of the Colored-MNIST CNN, optimised together."""
    use_threads(threads)
    model = load_trained_model(checkpoint_path, info_path)
    selection = json.loads(Path(units_path).read_text())["layers"]
    if layer not in selection:
        raise ValueError(
            f"actmax: layer {layer!r} has no chosen units in {units_path} (layers: {', '.join(selection)})"
        )
    specs = UnitSpecs.from_rows(unit_rows(selection[layer], optimization))
    print(f"{layer}: {len(specs)} runs in one batch, {optimization['steps']} steps", flush=True)
    result = optimize_inputs(
        model,
        layer,
        specs,
        image_shape=(3, 28, 28),
        steps=int(optimization["steps"]),
        lr=float(optimization["lr"]),
        topk=int(optimization["topk"]),
        l2_center=float(optimization["l2_center"]),
        snapshot_every=int(optimization["snapshot_every"]),
        max_batch=max_batch,
    )
    table = save_run(result, npz_path, table_path)
    with atomic_path(images_dir) as temp:
        temp.mkdir()
        grids = save_unit_grids(table, result.snapshots, result.snapshot_steps, temp)
    print(f"{layer}: {len(specs)} runs in {result.seconds:.1f} s; {grids} PNG grids", flush=True)
    return table


# ----------------------------------------------------------------------------------------------
# analysis


def _interpolate(model, layer_table: pd.DataFrame, images: torch.Tensor, units: pd.DataFrame, pairs, settings):
    """Re-optimise mixes of the two least similar seed images of each chosen unit (one batch per layer)."""
    alphas = [float(a) for a in settings["alphas"]]
    rows, starts, meta = [], [], []
    for _, unit in units.iterrows():
        unit_pairs = pairs[pairs["key"] == unit["key"]]
        pair = unit_pairs.loc[unit_pairs["mean_rank"].idxmin()]
        first, second = int(pair["i"]), int(pair["j"])
        base = layer_table.loc[first].to_dict()
        for alpha in alphas:
            rows.append({**base, "init": "image", "seed": 0})
            starts.append((1 - alpha) * images[first] + alpha * images[second])
            meta.append({"key": unit["key"], "alpha": alpha, "row_a": first, "row_b": second})
    specs = UnitSpecs.from_rows(rows)
    layer = str(layer_table["layer"].iloc[0])
    starts = torch.stack(starts)
    before = unit_activation(model, layer, specs, starts, topk=settings["topk"])
    result = optimize_inputs(
        model,
        layer,
        specs,
        steps=settings["steps"],
        lr=settings["lr"],
        topk=settings["topk"],
        l2_center=settings["l2_center"],
        snapshot_every=0,
        init_images=starts,
        progress=False,
    )
    frame = pd.DataFrame(meta)
    frame["layer"] = layer
    frame["image_index"] = np.arange(len(frame))  # row in this layer's interpolation image arrays
    frame["activation_before"] = before
    frame["activation_after"] = result.final_unit
    after = result.images.flatten(1)
    end_a = images[torch.from_numpy(frame["row_a"].to_numpy().copy())].flatten(1)
    end_b = images[torch.from_numpy(frame["row_b"].to_numpy().copy())].flatten(1)

    def rms(x, y):
        return (x - y).pow(2).mean(dim=1).sqrt().numpy()

    frame["distance_to_a"], frame["distance_to_b"] = rms(after, end_a), rms(after, end_b)
    frame["distance_a_b"] = rms(end_a, end_b)
    half = frame["distance_a_b"] / 2
    frame["lands_at"] = np.select(
        [
            frame["distance_a_b"] < ALIKE_RMS,
            (frame["distance_to_a"] < frame["distance_to_b"]) & (frame["distance_to_a"] < half),
            (frame["distance_to_b"] <= frame["distance_to_a"]) & (frame["distance_to_b"] < half),
        ],
        ["alike", "a", "b"],
        default="between",
    )
    return frame, starts.numpy(), result.images.numpy()


def most_polysemantic(units: pd.DataFrame, count: int) -> pd.DataFrame:
    """Flagged unit-runs first (highest score), then the converged ones whose seeds vary most (score, then the
    lowest mean pixel similarity); one per channel, none whose seed images are all alike."""
    eligible = units[units["converged"] & (units["n_pairs"] > 0) & (units["pixel_similarity"] < 1 - ALIKE_RMS)]
    order = eligible.assign(_varied=-eligible["pixel_similarity"])
    order = order.sort_values(["flagged", "score", "_varied"], ascending=False)
    order = order.drop_duplicates(["layer", "channel"])
    return order.head(count).drop(columns="_varied")


def run_analysis(
    *,
    data_path,
    checkpoint_path,
    info_path,
    run_paths: Sequence[tuple[str, str]],
    probe_path,
    analysis: Mapping,
    optimization: Mapping,
    out_dir,
    seed: int = 0,
    threads: int = 1,
) -> dict:
    """Stage: image metrics, polysemanticity (+ interpolation), colour-vs-shape table, the full run table."""
    use_threads(threads)
    out_dir = Path(out_dir)
    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    tables, metrics, units, pair_frames, interpolations, interp_images = [], [], [], [], [], {}
    for npz_path, table_path in run_paths:
        run, table = load_run(npz_path, table_path)
        layer = str(table["layer"].iloc[0])
        images = torch.from_numpy(run["images"]).float()
        table = table.reset_index(drop=True)
        tables.append(table)
        image_metrics = image_color_shape(images)
        start_metrics = image_color_shape(torch.from_numpy(run["snapshots"][0]).float() / 255)
        metrics.append(
            pd.concat(
                [table[list(GROUP_COLUMNS) + ["seed"]], image_metrics, start_metrics.add_prefix("start_")], axis=1
            )
        )
        activations = layer_activations(model, images, [layer])[layer]
        similarities = seed_similarities(images, activations, hue_bins=analysis["hue_bins"])
        unit_table, pairs = polysemanticity(
            table,
            similarities,
            group_columns=GROUP_COLUMNS,
            flag_fraction=analysis["flag_fraction"],
            converged_fraction=analysis["converged_fraction"],
        )
        units.append(unit_table)
        pair_frames.append(pairs)
        if analysis["interpolation_units"] > 0 and len(pairs):
            chosen = most_polysemantic(unit_table, analysis["interpolation_units"])
            if len(chosen):
                settings = {
                    "alphas": analysis["interpolation_alphas"],
                    "steps": analysis["interpolation_steps"],
                    "lr": optimization["lr"],
                    "topk": optimization["topk"],
                    "l2_center": optimization["l2_center"],
                }
                frame, starts, finals = _interpolate(model, table, images, chosen, pairs, settings)
                frame = frame.merge(chosen[["key", "flagged", "score"]], on="key")
                interpolations.append(frame)
                interp_images[f"{layer}_starts"] = starts
                interp_images[f"{layer}_finals"] = finals
    reference = image_color_shape(data.tensors("unbiased")[0][:1000])
    runs = pd.concat(tables, ignore_index=True)
    image_metrics = pd.concat(metrics, ignore_index=True)
    unit_table = pd.concat(units, ignore_index=True)
    pairs = pd.concat(pair_frames, ignore_index=True)
    interpolation = pd.concat(interpolations, ignore_index=True) if interpolations else pd.DataFrame()
    probe = pd.read_parquet(probe_path)
    chosen_images = image_metrics[image_metrics["objective"] == "channel"]
    if chosen_images.empty:
        chosen_images = image_metrics
    table = color_shape_table(probe, chosen_images, seed=seed)
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        runs.to_csv(temp / "runs.csv", index=False)
        image_metrics.to_parquet(temp / "image_metrics.parquet", index=False)
        reference.to_parquet(temp / "reference_metrics.parquet", index=False)
        unit_table.to_parquet(temp / "polysemanticity.parquet", index=False)
        pairs.to_parquet(temp / "seed_pairs.parquet", index=False)
        interpolation.to_parquet(temp / "interpolation.parquet", index=False)
        table.to_parquet(temp / "color_vs_shape.parquet", index=False)
        with open(temp / "interpolation.npz", "wb") as handle:
            np.savez_compressed(handle, **interp_images)
    flagged = unit_table[unit_table["flagged"]]
    print(
        f"{len(runs)} runs; {len(unit_table)} units judged for polysemanticity, {len(flagged)} flagged; "
        f"{len(interpolation)} interpolation runs",
        flush=True,
    )
    return {"runs": len(runs), "units": len(unit_table), "flagged": len(flagged)}
