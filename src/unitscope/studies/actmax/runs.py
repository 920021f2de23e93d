"""One layer's optimisation runs: the chosen units read back (units.json), the rows to optimise (every unit,
objective, neuron, init, regulariser and seed), and the arrays and table a finished batch is saved as
(runs/<layer>.npz, .parquet)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.fsutil import atomic_path

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import OptimizationSettings

__all__ = ["GROUP_COLUMNS", "chosen_neurons", "load_run", "read_selection", "save_run", "unit_rows"]

# Columns that identify one unit-run up to its seed (the polysemanticity groups, one image grid each).
GROUP_COLUMNS = ("layer", "channel", "objective", "y", "x", "target_class", "init", "l2", "tv")


def unit_rows(layer_selection: Mapping, optimization: OptimizationSettings) -> list[dict]:
    """Every (unit, objective, neuron, init, regulariser, seed) of one layer, in a fixed order."""
    return [
        row
        for unit in layer_selection["units"]
        for objective in optimization.objectives
        for row in _objective_rows(unit, objective, optimization)
    ]


def _objective_rows(unit: Mapping, objective: str, optimization: OptimizationSettings) -> list[dict]:
    """One unit's runs under one objective: its neurons (neuron objectives), inits (only the first unless the
    objective is in `init_objectives`), regularisers and seeds, nested in that order."""
    inits = list(optimization.inits)
    positions = unit["neurons"] if objective in ("neuron", "class_conditional") else [[-1, -1]]
    run_inits = inits if objective in optimization.init_objectives else inits[:1]
    seeds = range(int(optimization.seeds))
    return [
        {
            "channel": unit["channel"],
            "objective": objective,
            "y": y,
            "x": x,
            "target_class": unit["target_class"] if objective == "class_conditional" else -1,
            "class_weight": float(optimization.class_weight),
            "seed": seed,
            "init": init,
            "l2": float(regulariser["l2"]),
            "tv": float(regulariser["tv"]),
        }
        for (y, x), init, regulariser, seed in itertools.product(positions, run_inits, optimization.regularisers, seeds)
    ]


def read_selection(units_path, layer: str | None = None) -> dict:
    """The chosen units per layer from units.json; with `layer`, an error naming the file unless it has that
    layer."""
    selection = json.loads(Path(units_path).read_text())["layers"]
    if layer is not None and layer not in selection:
        raise ValueError(
            f"actmax: layer {layer!r} has no chosen units in {units_path} (layers: {', '.join(selection)})"
        )
    return selection


def chosen_neurons(selection: Mapping) -> dict[str, list[tuple[int, int, int]]]:
    """{layer: [(channel, y, x) of every chosen neuron]}."""
    return {
        layer: [(u["channel"], y, x) for u in chosen["units"] for y, x in u["neurons"]]
        for layer, chosen in selection.items()
    }


def save_run(result, npz_path, table_path, *, extra: Mapping | None = None) -> pd.DataFrame:
    """An optimisation result (`render.ActmaxResult`) as arrays (.npz: images, snapshots, curves, seconds) and
    its table (.parquet: one row per run), with `extra` columns; returns the table."""
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
    """The arrays and the table `save_run` wrote."""
    with np.load(npz_path) as arrays:
        run = {key: arrays[key] for key in arrays.files}
    return run, pd.read_parquet(table_path)
