"""Interpolation between two seed images of one unit: mixes of its two least similar seed images, each
re-optimised; a dip in activation between them and mixes that fall back to one end point mean two separate
optima (a polysemantic unit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from unitscope.studies.actmax.polysemanticity import ALIKE_RMS
from unitscope.studies.actmax.render import optimize_inputs, unit_activation
from unitscope.studies.actmax.specs import UnitSpecs

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import InterpolationSettings

__all__ = ["interpolate_seeds"]


def interpolate_seeds(
    model,
    layer_table: pd.DataFrame,
    images: torch.Tensor,
    units: pd.DataFrame,
    pairs: pd.DataFrame,
    settings: InterpolationSettings,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Re-optimise mixes of the two least similar seed images of each chosen unit (one batch per layer).

    `settings`: alphas, steps, lr, topk, l2_center (the caller chose `units`). Returns one row per mix (unit key,
    alpha, activation before and after, distances to the end points, where it lands), the mixes and the
    re-optimised images.
    """
    specs, starts, frame = _mixes(layer_table, images, units, pairs, [float(a) for a in settings.alphas])
    layer = str(layer_table["layer"].iloc[0])
    before = unit_activation(model, layer, specs, starts, topk=settings.topk)
    result = optimize_inputs(
        model,
        layer,
        specs,
        steps=settings.steps,
        lr=settings.lr,
        topk=settings.topk,
        l2_center=settings.l2_center,
        snapshot_every=0,
        init_images=starts,
        progress=False,
    )
    frame["layer"] = layer
    frame["image_index"] = np.arange(len(frame))  # row in this layer's interpolation image arrays
    frame["activation_before"] = before
    frame["activation_after"] = result.final_unit
    _where_they_land(frame, images, result.images)
    return frame, starts.numpy(), result.images.numpy()


def _mixes(layer_table: pd.DataFrame, images: torch.Tensor, units: pd.DataFrame, pairs: pd.DataFrame, alphas):
    """Per unit, its least similar seed pair (lowest mean rank) mixed at each alpha: the specs (the unit's run,
    started from the mix), the mixed images and one row per mix (key, alpha, the two seed rows)."""
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
    return UnitSpecs.from_rows(rows), torch.stack(starts), pd.DataFrame(meta)


def _where_they_land(frame: pd.DataFrame, images: torch.Tensor, finals: torch.Tensor) -> None:
    """RMS distances of each re-optimised mix to its two end points, and `lands_at`: 'a' or 'b' when nearer to
    that end than half the end points' distance, 'alike' when the end points differ by < ALIKE_RMS, else
    'between'."""
    after = finals.flatten(1)
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
