"""Which channels of one layer respond most to faces: the two selection rules over the stored channel means.

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

import numpy as np
import pandas as pd

from unitscope.stats import benjamini_hochberg
from unitscope.studies.faces.inputs import CategoryMeans, FacesError


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
    from scipy import stats  # seconds to import: the section and category stages use this module without it

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


def rule_agreement(table: pd.DataFrame) -> dict:
    """How many channels each rule picked, how many both did, and their Jaccard index."""
    top, contrast = selected_channels(table, "top_percentile"), selected_channels(table, "contrast")
    return {
        "top_percentile": len(top),
        "contrast": len(contrast),
        "overlap": len(set(top) & set(contrast)),
        "jaccard": jaccard(top, contrast),
    }


def read_selection(path: str | os.PathLike, rule: str, n_channels: int, layer: str) -> np.ndarray:
    """The channels `rule` picked in the selection table at `path`, which must list the stores' `n_channels`."""
    table = pd.read_parquet(path)
    if len(table) != n_channels:
        raise FacesError(f"{path} lists {len(table)} channels, the stores at {layer!r} have {n_channels}")
    return selected_channels(table, rule)
