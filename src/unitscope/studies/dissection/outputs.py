"""The dissection stages' files: tables written whole (Parquet) and the tallies file (npz), read back by the
figure and section stages."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from unitscope.fsutil import atomic_path

BOOTSTRAP_RESAMPLES = 200  # resamples of images behind each layer's 95% intervals (in the layer table)


def read_tables(paths) -> pd.DataFrame:
    """The Parquet tables at `paths`, one after the other."""
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


def write_tallies(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_tallies(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
