"""What each intervention condition is scored on (see `layer_readouts`, `downstream_readouts`, `kl_readouts`):
- retrained: logistic probe face vs non-face, stratified k-fold CV accuracy on the condition's activations;
- fixed: the probe fit on intact activations of a training split, scored on the condition's held-out split;
- downstream: both probes on the pooled features before the classifier (only when the layer is earlier);
- KL(intact || intervened) of the model's output distribution, mean over faces and over non-faces;
- PCA of the faces' activations: variance share of PC1 and components needed for each level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from unitscope.stats import derived_rng
from unitscope.studies.faces.condition_pca import pca_readouts
from unitscope.studies.faces.probe import cv_correct, fit_logistic, fixed_split, standardize_stats, stratified_folds


@dataclass
class Readout:
    """A face-vs-non-face protocol shared by every condition: CV folds, a fixed train/test split, C."""

    y: np.ndarray  # [N] 1 = face
    folds: list[tuple[np.ndarray, np.ndarray]]
    train: np.ndarray
    test: np.ndarray
    C: float

    @classmethod
    def make(cls, is_face: np.ndarray, *, n_folds: int, train_fraction: float, C: float, seed: int) -> Readout:
        y = np.asarray(is_face, dtype=int)
        fold_seed = int(derived_rng(seed, "faces/folds").integers(2**31))
        split_seed = int(derived_rng(seed, "faces/fixed-split").integers(2**31))
        return cls(y, stratified_folds(y, n_folds, fold_seed), *fixed_split(y, train_fraction, split_seed), C)


def _accuracy_columns(correct: np.ndarray, readout: Readout, prefix: str) -> dict[str, np.ndarray]:
    fold_sizes = np.array([len(test) for _, test in readout.folds])
    fold_accuracy = correct / fold_sizes
    return {
        f"{prefix}retrained_accuracy": correct.sum(axis=1) / len(readout.y),
        f"{prefix}retrained_fold_sd": fold_accuracy.std(axis=1, ddof=1),
    }


def fixed_probe(X: torch.Tensor, readout: Readout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaler + probe fit on the intact activations of the training split: (mean, std, weights [d], intercept)."""
    train = torch.as_tensor(readout.train)
    mean, std = standardize_stats(X[train])
    fit = fit_logistic((X[train] - mean) / std, torch.as_tensor(readout.y[readout.train]), C=readout.C)
    return mean[0], std[0], fit.weights[0], fit.intercept[0]


def layer_readouts(
    means: torch.Tensor,
    ablate: torch.Tensor,
    fill: torch.Tensor,
    readout: Readout,
    *,
    pca_levels: list[float] = (0.8, 0.9, 0.95),
    is_face: np.ndarray | None = None,
) -> pd.DataFrame:
    """Retrained and fixed probe accuracy and PCA of the layer's activations under every condition.

    The condition's activations are the intact means with ablated channels replaced by `fill`:
    retrained probes are intact-design probes with the ablated weights held at 0 (see `probe`);
    the fixed probe's decision is computed on the replaced values directly.
    """
    means = means.float()
    keep = ~ablate
    intact_correct, intact_params = cv_correct(means, readout.y, readout.folds, C=readout.C)
    init = [params.expand(len(ablate), -1) for params in intact_params]
    correct, _ = cv_correct(
        means, readout.y, readout.folds, C=readout.C, feature_mask=keep, init=init, progress=len(ablate) > 1
    )
    columns = _accuracy_columns(correct, readout, "")
    mean, std, weights, intercept = fixed_probe(means, readout)
    test = torch.as_tensor(readout.test)
    standardized = (means[test] - mean) / std
    fill_standardized = (fill.float() - mean) / std
    keep_f, ablate_f = keep.float(), ablate.float()
    decision = standardized @ (keep_f * weights).T + (ablate_f * fill_standardized * weights).sum(1) + intercept
    labels = torch.as_tensor(readout.y[readout.test])[:, None]
    columns["fixed_accuracy"] = ((decision > 0).long() == labels).float().mean(0).numpy()
    columns["fixed_n_test"] = np.full(len(ablate), len(readout.test))
    faces = torch.as_tensor(readout.y == 1 if is_face is None else is_face)
    columns.update(pca_readouts(means[faces], ablate, list(pca_levels)))
    if not np.allclose(columns["retrained_accuracy"][:1], intact_correct.sum() / len(readout.y)):
        print("warning: the batched intact probe differs from the single fit (optimizer tolerance)", flush=True)
    return pd.DataFrame(columns)


def downstream_readouts(
    pooled: torch.Tensor, readout: Readout, intact_probe: tuple[torch.Tensor, ...]
) -> dict[str, np.ndarray]:
    """Retrained and fixed probe accuracy on the pooled features of k conditions [k, N, D]."""
    correct, _ = cv_correct(pooled, readout.y, readout.folds, C=readout.C)
    columns = _accuracy_columns(correct, readout, "downstream_")
    mean, std, weights, intercept = intact_probe
    test = torch.as_tensor(readout.test)
    decision = ((pooled[:, test] - mean) / std) @ weights + intercept  # [k, n_test]
    labels = torch.as_tensor(readout.y[readout.test])[None, :]
    columns["downstream_fixed_accuracy"] = ((decision > 0).long() == labels).float().mean(1).numpy()
    return columns


def kl_readouts(logits: torch.Tensor, intact_log_probs: torch.Tensor, is_face: np.ndarray) -> dict[str, np.ndarray]:
    """Mean KL(intact || condition) of the output distribution over faces and over non-faces, [k] each."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    p = intact_log_probs.exp()
    per_image = (p * (intact_log_probs - log_q)).sum(-1).clamp_min(0)  # [k, N]
    faces = torch.as_tensor(is_face)
    kl_faces = per_image[:, faces].mean(1).numpy()
    kl_nonfaces = per_image[:, ~faces].mean(1).numpy()
    return {
        "kl_faces": kl_faces,
        "kl_nonfaces": kl_nonfaces,
        "kl_face_ratio": np.divide(kl_faces, kl_nonfaces, out=np.full_like(kl_faces, np.nan), where=kl_nonfaces > 0),
    }
