"""PCA of the faces' stored channel means (numpy only, so the pca and section stages start without torch);
the spectrum under each intervention condition is in `condition_pca`."""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def pca_table(means: np.ndarray) -> pd.DataFrame:
    """Explained variance per component of the faces' [N, C] means, cumulated, with N and C."""
    ratio = pca_spectrum(means)
    return pd.DataFrame(
        {
            "component": np.arange(1, len(ratio) + 1),
            "explained_variance_ratio": ratio,
            "cumulative": np.cumsum(ratio),
            "n_images": means.shape[0],
            "n_channels": means.shape[1],
        }
    )
