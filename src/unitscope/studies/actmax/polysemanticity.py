"""Polysemanticity from the seeds of one unit-run: its seed images compared pairwise in pixel space, in colour
(hue histogram) and in the unit's own layer; each pair ranked against pairs of images of different units, and a
unit flagged when its seeds give unrelated patterns. Scoring works on the similarity matrices (`similarity`
computes them in torch), so the report stage ranks units without importing torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

__all__ = ["ALIKE_RMS", "SPACES", "most_polysemantic", "polysemanticity"]

SPACES = ("pixel", "color", "activation")
# Images closer than this (RMS pixel difference, pixels in [0, 1]) count as alike.
ALIKE_RMS = 0.05


def polysemanticity(
    table: pd.DataFrame,
    similarities: Mapping[str, torch.Tensor],
    *,
    group_columns: Sequence[str],
    unit_columns: Sequence[str] = ("layer", "channel", "y", "x"),
    flag_fraction: float = 0.4,
    converged_fraction: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score each unit-run (rows of `table` sharing `group_columns`, one row per seed) from the similarity
    matrices over all rows (same order as `table`).

    Each seed pair's similarity is ranked, per space, among the similarities of pairs of images of different
    units (differing in `unit_columns`: another channel or neuron, not merely another init) in the same layer
    and objective (the 'unrelated' reference); a pair whose mean rank over the three
    spaces falls below the median of that reference is 'unrelated'. score = share of unrelated seed pairs.
    A unit is flagged polysemantic when score >= flag_fraction (0.4 = 4 of 10 pairs for 5 seeds: as many as
    when one seed's image is unrelated to all the others) and every seed reached at least `converged_fraction`
    of the best seed's final activation (so a run that failed to climb is not read as a second meaning).
    Returns (per-unit table, per-pair table).
    """
    table = table.reset_index(drop=True)
    keys = _joined(table, group_columns)
    pairs = _seed_pairs(table, keys, {space: similarities[space].numpy() for space in SPACES}, unit_columns)
    thresholds = {"flag_fraction": flag_fraction, "converged_fraction": converged_fraction}
    unit_rows = [
        _unit_row(key, group, pairs[pairs["key"] == key] if len(pairs) else pairs, group_columns, **thresholds)
        for key, group in table.groupby(keys, sort=False)
    ]
    return pd.DataFrame(unit_rows), pairs


def _joined(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Each row's values of `columns` as one '|'-joined key."""
    return table[list(columns)].astype(str).agg("|".join, axis=1).to_numpy()


def _seed_pairs(table: pd.DataFrame, keys: np.ndarray, matrices: Mapping[str, np.ndarray], unit_columns):
    """One row per pair of seeds of one unit-run, with each space's similarity and its rank among the pairs of
    different units in the same layer and objective (the reference)."""
    identities = _joined(table, [column for column in unit_columns if column in table.columns])
    context = (table["layer"].astype(str) + "|" + table["objective"].astype(str)).to_numpy()
    n = len(table)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    same_unit = keys[:, None] == keys[None, :]
    same_identity = identities[:, None] == identities[None, :]
    same_context = context[:, None] == context[None, :]
    pair_rows = []
    for ctx in np.unique(context):
        in_ctx = context == ctx
        reference_mask = upper & same_context & ~same_identity & in_ctx[:, None]
        within_mask = upper & same_unit & in_ctx[:, None]
        references = {space: np.sort(matrices[space][reference_mask]) for space in SPACES}
        for i, j in zip(*np.nonzero(within_mask), strict=True):
            pair_rows.append(_pair_row(table, keys, int(i), int(j), matrices, references))
    return pd.DataFrame(pair_rows)


def _mid_rank(reference: np.ndarray, value: float) -> float:
    """Share of `reference` (sorted) below `value`, ties counted half (a value shared by many sits mid-way)."""
    if not len(reference):
        return np.nan
    below = np.searchsorted(reference, value, side="left")
    return (below + 0.5 * (np.searchsorted(reference, value, side="right") - below)) / len(reference)


def _pair_row(table, keys, i: int, j: int, matrices, references) -> dict:
    row = {"key": keys[i], "i": i, "j": j, "seed_i": int(table.at[i, "seed"])}
    row["seed_j"] = int(table.at[j, "seed"])
    ranks = []
    for space in SPACES:
        value = matrices[space][i, j]
        row[f"{space}_similarity"] = float(value)
        rank = _mid_rank(references[space], value)
        row[f"{space}_rank"] = float(rank)
        ranks.append(rank)
    row["mean_rank"] = float(np.mean(ranks))
    row["unrelated"] = bool(row["mean_rank"] < 0.5)
    row["n_reference_pairs"] = int(len(references["pixel"]))
    return row


def _unit_row(
    key: str, group: pd.DataFrame, unit_pairs: pd.DataFrame, group_columns, *, flag_fraction, converged_fraction
) -> dict:
    """One unit-run: its score, mean similarities per space, final activations, whether it converged and
    whether it is flagged."""
    first = group.iloc[0]
    activation = group["final_activation"].to_numpy()
    best = float(activation.max())
    converged = bool(best > 0 and (activation >= converged_fraction * best).all())
    score = float(unit_pairs["unrelated"].mean()) if len(unit_pairs) else float("nan")
    row = {column: first[column] for column in group_columns}
    row.update(
        {
            "key": key,
            "n_seeds": int(len(group)),
            "n_pairs": int(len(unit_pairs)),
            "score": score,
            "unrelated_pairs": int(unit_pairs["unrelated"].sum()) if len(unit_pairs) else 0,
            **{
                f"{space}_similarity": float(unit_pairs[f"{space}_similarity"].mean()) if len(unit_pairs) else np.nan
                for space in SPACES
            },
            "min_final_activation": float(activation.min()),
            "max_final_activation": best,
            "converged": converged,
            "flagged": bool(converged and len(unit_pairs) and score >= flag_fraction),
            "rows": [int(i) for i in group.index],
        }
    )
    return row


def most_polysemantic(units: pd.DataFrame, count: int) -> pd.DataFrame:
    """Flagged unit-runs first (highest score), then the converged ones whose seeds vary most (score, then the
    lowest mean pixel similarity); one per channel, none whose seed images are all alike."""
    eligible = units[units["converged"] & (units["n_pairs"] > 0) & (units["pixel_similarity"] < 1 - ALIKE_RMS)]
    order = eligible.assign(_varied=-eligible["pixel_similarity"])
    order = order.sort_values(["flagged", "score", "_varied"], ascending=False)
    order = order.drop_duplicates(["layer", "channel"])
    return order.head(count).drop(columns="_varied")
