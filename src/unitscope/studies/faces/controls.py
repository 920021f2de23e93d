"""The controls of the interventions: random and activation-matched channel sets of the selected set's size,
and the selected set compared with each control family's null distribution (one-sided empirical p-values)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unitscope.stats import empirical_p
from unitscope.studies.faces.inputs import FacesError, derived_rng


def random_sets(n_channels: int, size: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws, size] channel sets drawn uniformly without replacement from all channels."""
    if size == 0:
        return np.zeros((n_draws, 0), dtype=np.int64)
    return np.stack([rng.choice(n_channels, size=size, replace=False) for _ in range(n_draws)]).astype(np.int64)


def matched_sets(
    channel_mean: np.ndarray, selected: np.ndarray, n_draws: int, n_candidates: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_draws, |selected|] unselected channels matched to the selected ones on mean activation.

    A draw visits the selected channels in random order and gives each a random one of its
    `n_candidates` nearest unselected channels in `channel_mean` not yet taken in that draw. When the
    selected channels are the most active ones, their neighbours are few and draws overlap heavily
    (the report states how many distinct sets there are and how well they match).
    """
    selected = np.asarray(selected, dtype=np.int64)
    pool = np.setdiff1d(np.arange(len(channel_mean)), selected)
    if len(selected) == 0:
        return np.zeros((n_draws, 0), dtype=np.int64)
    if len(pool) < len(selected):
        raise FacesError(
            f"matched controls need at least as many unselected channels as selected ones "
            f"({len(pool)} unselected, {len(selected)} selected); use fewer selected channels"
        )
    distance = np.abs(channel_mean[pool][None, :] - channel_mean[selected][:, None])  # [S, pool]
    by_distance = np.argsort(distance, axis=1, kind="stable")  # indices into pool, nearest first
    k = min(n_candidates, len(pool))
    draws = np.empty((n_draws, len(selected)), dtype=np.int64)
    for draw in range(n_draws):
        taken = np.zeros(len(pool), dtype=bool)
        for position in rng.permutation(len(selected)):
            nearest_free = by_distance[position][~taken[by_distance[position]]]
            choice = nearest_free[rng.integers(min(k, len(nearest_free)))]
            taken[choice] = True
            draws[draw, position] = pool[choice]
    return draws


def draw_controls(
    channel_mean: np.ndarray, chosen: np.ndarray, *, n_random: int, n_matched: int, candidates: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(random draws, activation-matched draws), each [draws, |chosen|]; no matched draw when more channels
    are selected than left unselected."""
    random_draws = random_sets(len(channel_mean), len(chosen), n_random, derived_rng(seed, "faces/random"))
    try:
        matched_draws = matched_sets(channel_mean, chosen, n_matched, candidates, derived_rng(seed, "faces/matched"))
    except FacesError as err:  # more selected than unselected channels: no matched control exists
        print(f"matched controls skipped: {err}", flush=True)
        matched_draws = np.zeros((0, len(chosen)), dtype=np.int64)
    return random_draws, matched_draws


# For each metric, the direction in which the selected set's effect is "stronger" than a control's,
# for (lesion, keep-only): a lesion that hurts more, a keep-only set that preserves more.
METRIC_DIRECTIONS = {
    "fixed_accuracy": ("lower", "higher"),
    "retrained_accuracy": ("lower", "higher"),
    "downstream_fixed_accuracy": ("lower", "higher"),
    "downstream_retrained_accuracy": ("lower", "higher"),
    "kl_faces": ("higher", "lower"),
    "kl_nonfaces": ("higher", "lower"),
    "kl_face_ratio": ("higher", "lower"),
    "pca_pc1": ("two-sided", "two-sided"),
}


def control_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """Selected set versus each control family's null distribution, per mode and metric.

    A channel set drawn twice is one piece of evidence: the null is over distinct sets (`n_distinct`),
    so a degenerate control (e.g. matched draws that can only pick the same channels) cannot give a
    small p-value by repetition.
    """
    metrics = [m for m in METRIC_DIRECTIONS if m in conditions] + [c for c in conditions if c.startswith("pca_n")]
    rows = []
    for mode_index, mode in enumerate(("lesion", "keep_only")):
        chosen = conditions[(conditions["family"] == "selected") & (conditions["mode"] == mode)]
        for family in ("random", "matched"):
            drawn = conditions[(conditions["family"] == family) & (conditions["mode"] == mode)]
            if "channels" in drawn:
                distinct = drawn["channels"].map(lambda channels: tuple(sorted(channels))).duplicated()
                null_rows = drawn[~distinct.to_numpy()]
            else:
                null_rows = drawn
            for metric in metrics:
                value = float(chosen[metric].iloc[0])
                null = null_rows[metric].to_numpy(dtype=np.float64)
                null = null[np.isfinite(null)]
                if not np.isfinite(value) or len(null) == 0:
                    continue
                direction = METRIC_DIRECTIONS.get(metric, ("two-sided", "two-sided"))[mode_index]
                rows.append(
                    {
                        "mode": mode,
                        "control": family,
                        "metric": metric,
                        "selected": value,
                        "intact": float(conditions.loc[conditions["family"] == "intact", metric].iloc[0]),
                        "null_mean": float(null.mean()),
                        "null_low": float(np.percentile(null, 2.5)),
                        "null_high": float(np.percentile(null, 97.5)),
                        "n_draws": len(drawn),
                        "n_distinct": len(null),
                        "direction": direction,
                        "p_value": empirical_p(value, null, direction),
                    }
                )
    return pd.DataFrame(rows)
