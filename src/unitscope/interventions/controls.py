"""Control channel sets for an intervention on a set of units: random sets of the same size, and sets matched to
it on mean activation (drawn without its units), each seeded per purpose."""

from __future__ import annotations

import numpy as np

from unitscope.interventions.errors import InterventionError
from unitscope.stats import derived_rng


def random_sets(
    n_channels: int, size: int, n_draws: int, rng: np.random.Generator, exclude: np.ndarray | None = None
) -> np.ndarray:
    """[n_draws, size] channel sets drawn uniformly without replacement from all channels, or from all but
    `exclude` (a labelled set's own units) when given."""
    if size == 0 or n_draws == 0:
        return np.zeros((n_draws, size), dtype=np.int64)
    if exclude is None:
        return np.stack([rng.choice(n_channels, size=size, replace=False) for _ in range(n_draws)]).astype(np.int64)
    pool = np.setdiff1d(np.arange(n_channels), np.asarray(exclude, dtype=np.int64))
    if len(pool) < size:
        raise InterventionError(f"random controls of {size} units need {size} units outside the set; {len(pool)} left")
    return pool[np.stack([rng.choice(len(pool), size=size, replace=False) for _ in range(n_draws)])]


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
        raise InterventionError(
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
    channel_mean: np.ndarray,
    chosen: np.ndarray,
    *,
    n_random: int,
    n_matched: int,
    candidates: int,
    seed: int,
    purpose: str,
    random_without_chosen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(random draws, activation-matched draws), each [draws, |chosen|], seeded by `seed` and `purpose` (a study's
    name and what the set is, so each set gets its own draws). Matched draws never hold a chosen unit; random ones
    only with `random_without_chosen`. No matched draw when more channels are chosen than left unchosen."""
    rng = derived_rng(seed, f"{purpose}/random")
    exclude = chosen if random_without_chosen else None
    random_draws = random_sets(len(channel_mean), len(chosen), n_random, rng, exclude=exclude)
    try:
        rng = derived_rng(seed, f"{purpose}/matched")
        matched_draws = matched_sets(channel_mean, chosen, n_matched, candidates, rng)
    except InterventionError as err:  # more selected than unselected channels: no matched control exists
        print(f"matched controls skipped: {err}", flush=True)
        matched_draws = np.zeros((0, len(chosen)), dtype=np.int64)
    return random_draws, matched_draws
