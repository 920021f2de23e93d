"""Category comparison: the selected channels' mean activation per image set (bootstrap 95% intervals over
images) and every channel's face selectivity.

Selectivity index: (face mean - non-face mean) / (|face mean| + |non-face mean|), the non-face mean
being the average of the non-face sets' means (each set weighs the same whatever its size).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unitscope.stats import bootstrap_interval
from unitscope.studies.faces.inputs import CategoryMeans
from unitscope.studies.faces.selection import dprime, selectivity_index


def category_table(data: CategoryMeans, chosen: np.ndarray, rng: np.random.Generator, n_bootstrap: int) -> pd.DataFrame:
    """Mean over images of the mean of the selected channels (then of all channels) per dataset, with CIs."""
    rows = []
    for set_name, channels in (("selected", chosen), ("all channels", np.arange(data.n_channels))):
        for name in [data.face_dataset, *data.nonface_datasets]:
            block = data.of(name)
            score = block[:, channels].mean(axis=1) if len(channels) else np.full(len(block), np.nan)
            low, high = bootstrap_interval(score, rng, n_bootstrap)
            mean = float(np.mean(score, dtype=np.float64)) if len(score) else float("nan")
            rows.append(
                {
                    "channel_set": set_name,
                    "n_channels": len(channels),
                    "dataset": name,
                    "is_face": name == data.face_dataset,
                    "n_images": len(block),
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def selectivity_table(data: CategoryMeans, chosen: np.ndarray) -> pd.DataFrame:
    """Per channel: face and non-face means, selectivity index, d' against all non-faces, selected or not."""
    faces = data.of(data.face_dataset)
    nonface_mean = np.mean([data.of(name).mean(axis=0) for name in data.nonface_datasets], axis=0)
    selectivity = pd.DataFrame(
        {
            "channel": np.arange(data.n_channels),
            "face_mean": faces.mean(axis=0),
            "nonface_mean": nonface_mean,
            "selectivity_index": selectivity_index(faces.mean(axis=0), nonface_mean),
            "d_nonface": dprime(faces, data.means[~data.is_face]),
            "selected": np.isin(np.arange(data.n_channels), chosen),
        }
    )
    for name in data.nonface_datasets:
        selectivity[f"{name}_mean"] = data.of(name).mean(axis=0)
    return selectivity
