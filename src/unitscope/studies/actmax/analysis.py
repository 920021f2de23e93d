"""What the synthesised images say, per layer and for the study: image metrics (colour vs stroke structure, at the
start and at the end), polysemanticity with its interpolation check, and the colour-vs-shape table that joins the
data probe with the images; written as the analysis folder.

Artifacts (results/actmax/analysis/): runs.csv (every run), image_metrics.parquet, reference_metrics.parquet
(real coloured digits), polysemanticity.parquet (per unit-run), seed_pairs.parquet, interpolation.parquet and
interpolation.npz (mixes and re-optimised images per layer), color_vs_shape.parquet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from unitscope.fsutil import atomic_path
from unitscope.studies.actmax.activations import layer_activations
from unitscope.studies.actmax.color_shape import color_shape_table
from unitscope.studies.actmax.image_metrics import image_color_shape
from unitscope.studies.actmax.interpolation import interpolate_seeds
from unitscope.studies.actmax.polysemanticity import most_polysemantic, polysemanticity
from unitscope.studies.actmax.runs import GROUP_COLUMNS, load_run
from unitscope.studies.actmax.similarity import seed_similarities

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import AnalysisSettings

__all__ = ["LayerAnalysis", "analyse_layer", "combine_layers", "write_analysis"]


@dataclass
class LayerAnalysis:
    """One layer's runs (table), image metrics, polysemanticity (units, seed pairs) and interpolation (rows and
    images, keyed '<layer>_starts' / '<layer>_finals'; empty when no unit was interpolated)."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    units: pd.DataFrame
    pairs: pd.DataFrame
    interpolation: pd.DataFrame | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)


def analyse_layer(model, npz_path, table_path, settings: AnalysisSettings) -> LayerAnalysis:
    """Image metrics and polysemanticity of one layer's runs; then the interpolation of its most polysemantic
    units (when `settings.interpolation.units` > 0 and a unit has seed pairs)."""
    run, table = load_run(npz_path, table_path)
    layer = str(table["layer"].iloc[0])
    images = torch.from_numpy(run["images"]).float()
    table = table.reset_index(drop=True)
    end_metrics = image_color_shape(images)
    start_metrics = image_color_shape(torch.from_numpy(run["snapshots"][0]).float() / 255)
    metrics = pd.concat(
        [table[list(GROUP_COLUMNS) + ["seed"]], end_metrics, start_metrics.add_prefix("start_")], axis=1
    )
    activations = layer_activations(model, images, [layer])[layer]
    units, pairs = polysemanticity(
        table,
        seed_similarities(images, activations, hue_bins=settings.hue_bins),
        group_columns=GROUP_COLUMNS,
        flag_fraction=settings.flag_fraction,
        converged_fraction=settings.converged_fraction,
    )
    result = LayerAnalysis(runs=table, metrics=metrics, units=units, pairs=pairs)
    interpolation = settings.interpolation
    if interpolation.units > 0 and len(pairs):
        chosen = most_polysemantic(units, interpolation.units)
        if len(chosen):
            frame, starts, finals = interpolate_seeds(model, table, images, chosen, pairs, interpolation)
            result.interpolation = frame.merge(chosen[["key", "flagged", "score"]], on="key")
            result.images = {f"{layer}_starts": starts, f"{layer}_finals": finals}
    return result


def combine_layers(
    layers: Sequence[LayerAnalysis], reference: pd.DataFrame, probe: pd.DataFrame, *, seed: int
) -> dict[str, pd.DataFrame]:
    """The study's tables, by file name: every layer's rows together, the real digits' metrics (`reference`)
    and the colour-vs-shape table (the probe with the channel-objective images' metrics)."""
    interpolations = [layer.interpolation for layer in layers if layer.interpolation is not None]
    image_metrics = pd.concat([layer.metrics for layer in layers], ignore_index=True)
    chosen_images = image_metrics[image_metrics["objective"] == "channel"]
    if chosen_images.empty:
        chosen_images = image_metrics
    return {
        "runs.csv": pd.concat([layer.runs for layer in layers], ignore_index=True),
        "image_metrics.parquet": image_metrics,
        "reference_metrics.parquet": reference,
        "polysemanticity.parquet": pd.concat([layer.units for layer in layers], ignore_index=True),
        "seed_pairs.parquet": pd.concat([layer.pairs for layer in layers], ignore_index=True),
        "interpolation.parquet": pd.concat(interpolations, ignore_index=True) if interpolations else pd.DataFrame(),
        "color_vs_shape.parquet": color_shape_table(probe, chosen_images, seed=seed),
    }


def write_analysis(out_dir, tables: Mapping[str, pd.DataFrame], layers: Sequence[LayerAnalysis]) -> None:
    """The analysis folder, written whole: the tables (CSV or Parquet by name) and interpolation.npz."""
    images = {key: value for layer in layers for key, value in layer.images.items()}
    with atomic_path(Path(out_dir)) as temp:
        temp.mkdir()
        for name, table in tables.items():
            if name.endswith(".csv"):
                table.to_csv(temp / name, index=False)
            else:
                table.to_parquet(temp / name, index=False)
        with open(temp / "interpolation.npz", "wb") as handle:
            np.savez_compressed(handle, **images)
