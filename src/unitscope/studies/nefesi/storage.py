"""The nefesi study's files: Parquet tables, JSON records and the Neuron Features (nf.npz, sRGB float16), each
written under a temporary name and renamed into place when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from unitscope.fsutil import atomic_path, write_json, write_text_atomic  # noqa: F401 (write_json: the study's writer)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def write_nf(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Neuron Features [C, h, w, 3] in sRGB, stored as float16."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, nf=rgb.astype(np.float16))


def read_nf(path: str | os.PathLike) -> np.ndarray:
    with np.load(path) as data:
        return data["nf"].astype(np.float32)
