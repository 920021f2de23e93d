"""PCA of the faces' activations under each intervention condition, in torch (the interventions stage): ablated
channels are constant, so a condition's spectrum is that of the kept channels."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from unitscope.studies.faces.pca import components_for

CHUNK_BYTES = 1 << 28  # ~256 MiB of matrices per batched eigendecomposition


@contextlib.contextmanager
def _one_thread():
    """Batched eigvalsh of many small matrices is 20-200x slower with 2 OpenMP threads on a busy machine
    (measured: 0.5 s single-threaded against 10-92 s); it runs single-threaded, then the count is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pca_curves(face_means: torch.Tensor, ablated: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Explained-variance ratio and cumulative curve of the faces' activations for the named conditions
    ({name: [C] mask, True = ablated})."""
    centred = (face_means - face_means.mean(0)).double()
    tables = []
    for name, ablate in ablated.items():
        kept = centred[:, ~ablate]
        singular = torch.linalg.svdvals(kept) if kept.shape[1] else torch.zeros(0, dtype=torch.float64)
        variance = (singular**2).numpy()
        ratio = variance / variance.sum() if variance.sum() > 0 else np.zeros_like(variance)
        tables.append(
            pd.DataFrame(
                {
                    "condition": name,
                    "component": np.arange(1, len(ratio) + 1),
                    "explained_variance_ratio": ratio,
                    "cumulative": np.cumsum(ratio),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def pca_readouts(face_means: torch.Tensor, ablate: torch.Tensor, levels: list[float]) -> dict[str, np.ndarray]:
    """Variance share of PC1 and components to reach each level, of the faces' activations per condition.

    Ablated channels are constant, so a condition's spectrum is that of the kept channels: the
    covariance's principal submatrix, or (when there are more kept channels than faces) the faces'
    Gram matrix of the kept channels. Conditions with equal kept counts are batched.
    """
    centred = (face_means - face_means.mean(0)).double()
    n_faces = centred.shape[0]
    covariance = centred.T @ centred
    gram = centred @ centred.T
    kept = ~ablate
    counts = kept.sum(1)
    pc1 = np.zeros(len(ablate))
    needed = {level: np.zeros(len(ablate), dtype=np.int64) for level in levels}
    for count in torch.unique(counts).tolist():
        members = torch.nonzero(counts == count).flatten()
        if count == 0:
            pc1[members.numpy()] = np.nan
            for level in levels:
                needed[level][members.numpy()] = 0
            continue
        size = min(count, n_faces)
        per_chunk = max(1, CHUNK_BYTES // (size * size * 8))
        for first in range(0, len(members), per_chunk):
            group = members[first : first + per_chunk]
            if count <= n_faces:
                index = torch.stack([torch.nonzero(kept[i]).flatten() for i in group])  # [g, count]
                matrices = covariance[index[:, :, None], index[:, None, :]]
            else:  # the faces' Gram matrix minus the ablated channels' (low-rank) part
                index = torch.stack([torch.nonzero(~kept[i]).flatten() for i in group])  # [g, ablated]
                dropped = centred[:, index].permute(1, 0, 2)  # [g, n, ablated]
                matrices = gram - dropped @ dropped.transpose(1, 2)
            with _one_thread():
                eigen = torch.linalg.eigvalsh(matrices.float()).double().flip(-1).clamp_min(0).numpy()  # descending
            total = eigen.sum(axis=1, keepdims=True)
            share = np.divide(eigen, total, out=np.zeros_like(eigen), where=total > 0)
            cumulative = np.cumsum(share, axis=1)
            rows = group.numpy()
            pc1[rows] = np.where(total[:, 0] > 0, share[:, 0], np.nan)
            for level in levels:
                needed[level][rows] = [components_for(c, level) for c in cumulative]
    return {"pca_pc1": pc1, **{f"pca_n{round(100 * level)}": needed[level] for level in levels}}
