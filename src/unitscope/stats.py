"""The statistics every study reports with, each defined once: Wilson intervals for proportions,
percentile-bootstrap intervals, empirical p-values against control draws, and Benjamini-Hochberg FDR.

Light on purpose (numpy only at import): section and plan code imports it without torch, and scipy (seconds to
import) loads only when a stage computes FDR.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (95% by default); (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_interval(
    values: np.ndarray,
    rng: np.random.Generator,
    resamples: int = 2000,
    statistic: Callable[..., np.ndarray] = np.mean,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic` over `values` [n] (resampling the n values with
    replacement, `resamples` times); (nan, nan) for an empty array."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    resampled = statistic(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(low), float(high)


def empirical_p(selected: float, null: np.ndarray, direction: str) -> float:
    """(1 + #draws at least as extreme) / (1 + #draws), one-sided in `direction` ("lower", "higher") or
    two-sided about the null mean: never 0, so it stays honest with few draws."""
    null = np.asarray(null, dtype=np.float64)
    if direction == "lower":
        extreme = null <= selected
    elif direction == "higher":
        extreme = null >= selected
    else:
        centre = null.mean()
        extreme = np.abs(null - centre) >= abs(selected - centre)
    return float((1 + extreme.sum()) / (1 + len(null)))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of `p`, clipped to [0, 1] first."""
    from scipy import stats as _scipy_stats  # seconds to import: only the stages that compute FDR load it

    return _scipy_stats.false_discovery_control(np.clip(p, 0.0, 1.0), method="bh")


def derived_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose (e.g. "faces/random"), derived from the config seed: stable across runs, and
    independent of every other purpose's draws."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(zlib.crc32(purpose.encode()),)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` [n], tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / counts)[group]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of x and y [n] (Pearson's r of their average ranks); NaN when either is constant
    or has fewer than 3 finite pairs (pairs with a NaN are left out)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")
