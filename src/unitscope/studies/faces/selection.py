"""Face-selective units: selection, PCA and category comparison from the activation stores.

The study asks which channels of one layer respond most to faces and whether they are necessary,
sufficient and specific for telling faces from non-faces. This module holds what needs only the
stored per-image channel means `[N, C]` (no network): loading the face and non-face stores, the two
selection rules, PCA of the faces' means, the category comparison, and the random draws used as
controls by the interventions (`unitscope.studies.faces.interventions`).

Selection rules:
- top percentile (the seed study's rule): the ceil(C * p / 100) channels with the highest mean face
  activation, in that order (ties broken by channel index);
- contrast: one-sided Welch t-tests, faces > each non-face set, Benjamini-Hochberg over channels
  within each comparison; a channel is selected when it is significant against every non-face set
  (an intersection-union test, so no further correction is needed). Effect size: d' (difference of
  means over the root mean of the two variances).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
from scipy import stats

from unitscope.errors import UnitscopeError
from unitscope.fsutil import atomic_path
from unitscope.stats import benjamini_hochberg


class FacesError(UnitscopeError, ValueError):
    """Inputs of the faces study do not fit together; the message is one line."""


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CategoryMeans:
    """Per-image channel means of the face set and the non-face sets, stacked (faces first)."""

    means: np.ndarray  # [N, C] float32
    dataset: np.ndarray  # [N] dataset name of each image
    image_id: np.ndarray  # [N]
    face_dataset: str
    nonface_datasets: tuple[str, ...]

    @property
    def is_face(self) -> np.ndarray:
        return self.dataset == self.face_dataset

    @property
    def n_channels(self) -> int:
        return int(self.means.shape[1])

    def of(self, dataset: str) -> np.ndarray:
        return self.means[self.dataset == dataset]


def load_category_means(stores: dict[str, str | os.PathLike], face_dataset: str, layer: str) -> CategoryMeans:
    """Read `means` and `image_id` of each store ({dataset: path}, the face set among them)."""
    if face_dataset not in stores:
        raise FacesError(f"no activation store for the face dataset {face_dataset!r} (have {', '.join(stores)})")
    order = [face_dataset, *[name for name in stores if name != face_dataset]]
    means, names, ids = [], [], []
    for name in order:
        group = zarr.open_group(store=str(stores[name]), mode="r")
        stored_layer = group.attrs.get("layer")
        if stored_layer is not None and stored_layer != layer:
            raise FacesError(f"store {stores[name]} holds layer {stored_layer!r}, expected {layer!r}")
        block = np.asarray(group["means"][:], dtype=np.float32)
        if means and block.shape[1] != means[0].shape[1]:
            raise FacesError(
                f"store {stores[name]} has {block.shape[1]} channels, but {stores[order[0]]} has {means[0].shape[1]}"
            )
        if not np.isfinite(block).all():
            raise FacesError(f"store {stores[name]}: means contain NaN or infinite values")
        means.append(block)
        names.append(np.full(len(block), name, dtype=object))
        ids.append(np.asarray(group["image_id"][:].tolist(), dtype=object))
    return CategoryMeans(
        means=np.concatenate(means),
        dataset=np.concatenate(names),
        image_id=np.concatenate(ids),
        face_dataset=face_dataset,
        nonface_datasets=tuple(order[1:]),
    )


def derived_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose of this study, derived from the config seed (stable across runs)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(zlib.crc32(purpose.encode()),)))


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        table.to_parquet(temp, index=False)


# ---------------------------------------------------------------------------------------------- statistics


def top_percentile(face_means: np.ndarray, percentile: float) -> np.ndarray:
    """Channels of the top `percentile` % by mean face activation, highest first (ties: lower index first).

    `face_means` is [N, C] (per-image means) or [C] (already averaged). Count: ceil(C * percentile / 100).
    """
    channel_mean = face_means.mean(axis=0) if face_means.ndim == 2 else face_means
    n_channels = channel_mean.shape[0]
    count = min(n_channels, math.ceil(n_channels * percentile / 100 - 1e-9))
    order = np.lexsort((np.arange(n_channels), -channel_mean.astype(np.float64)))
    return order[:count]


def welch_greater(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column Welch t and one-sided p (mean of a > mean of b). Columns constant in both sets: t 0, p 1."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    constant = (a.var(axis=0) == 0) & (b.var(axis=0) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.ttest_ind(a, b, axis=0, equal_var=False, alternative="greater")
    t = np.where(constant, 0.0, np.nan_to_num(result.statistic, nan=0.0))
    p = np.where(constant, 1.0, np.nan_to_num(result.pvalue, nan=1.0))
    return t, p


def dprime(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column (mean a - mean b) / sqrt((var a + var b) / 2); 0 where both variances are 0."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    spread = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    diff = a.mean(axis=0) - b.mean(axis=0)
    return np.divide(diff, spread, out=np.zeros_like(diff), where=spread > 0)


def selectivity_index(face_mean: np.ndarray, nonface_mean: np.ndarray) -> np.ndarray:
    """(face - non-face) / (|face| + |non-face|) per channel, in [-1, 1]; 0 where both are 0."""
    denominator = np.abs(face_mean) + np.abs(nonface_mean)
    diff = (face_mean - nonface_mean).astype(np.float64)
    return np.divide(diff, denominator, out=np.zeros_like(diff), where=denominator > 0)


def jaccard(a, b) -> float:
    a, b = set(map(int, a)), set(map(int, b))
    return len(a & b) / len(a | b) if a | b else float("nan")


def selection_table(data: CategoryMeans, *, percentile: float, fdr: float) -> pd.DataFrame:
    """One row per channel: means per set, Welch t / p / BH q / d' per non-face set, and both rules' picks."""
    faces = data.of(data.face_dataset)
    n_channels = data.n_channels
    table = pd.DataFrame({"channel": np.arange(n_channels), "face_mean": faces.mean(axis=0).astype(np.float64)})
    table["face_rank"] = pd.Series(-table["face_mean"]).rank(method="first").astype(int).to_numpy()
    significant = np.ones(n_channels, dtype=bool)
    d_values = []
    for name in data.nonface_datasets:
        other = data.of(name)
        t, p = welch_greater(faces, other)
        q = benjamini_hochberg(p)
        d = dprime(faces, other)
        table[f"{name}_mean"] = other.mean(axis=0)
        table[f"t_{name}"], table[f"p_{name}"], table[f"q_{name}"], table[f"d_{name}"] = t, p, q, d
        significant &= (q < fdr) & (t > 0)
        d_values.append(d)
    nonfaces = data.means[~data.is_face]
    table["nonface_mean"] = np.mean([data.of(name).mean(axis=0) for name in data.nonface_datasets], axis=0)
    table["t_nonface"], table["p_nonface"] = welch_greater(faces, nonfaces)
    table["d_nonface"] = dprime(faces, nonfaces)
    table["d_min"] = np.min(d_values, axis=0)
    table["selectivity_index"] = selectivity_index(table["face_mean"].to_numpy(), table["nonface_mean"].to_numpy())
    top = top_percentile(table["face_mean"].to_numpy(), percentile)
    table["top_percentile"] = False
    table.loc[top, "top_percentile"] = True
    table["contrast"] = significant
    return table


def selected_channels(table: pd.DataFrame, rule: str) -> np.ndarray:
    """The channels a rule picked, in its order: top percentile by face mean; contrast by smallest d' (desc)."""
    if rule == "top_percentile":
        picked = table[table["top_percentile"]].sort_values(["face_mean", "channel"], ascending=[False, True])
    elif rule == "contrast":
        picked = table[table["contrast"]].sort_values(["d_min", "channel"], ascending=[False, True])
    else:
        raise FacesError(f"config key faces.selection.use: unknown rule {rule!r} (top_percentile, contrast)")
    return picked["channel"].to_numpy(dtype=np.int64)


def pca_spectrum(means: np.ndarray) -> np.ndarray:
    """Explained-variance ratio of every principal component of `means` [N, C] (centred, not scaled)."""
    centred = means.astype(np.float64) - means.mean(axis=0, dtype=np.float64)
    singular = np.linalg.svd(centred, compute_uv=False)
    variance = singular**2
    total = variance.sum()
    return variance / total if total > 0 else np.zeros_like(variance)


def components_for(cumulative: np.ndarray, level: float) -> int:
    """Smallest number of components whose cumulative explained variance reaches `level` (0 if none)."""
    reached = np.nonzero(cumulative >= level - 1e-12)[0]
    return int(reached[0] + 1) if len(reached) else 0


# ---------------------------------------------------------------------------------------------- control draws


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
