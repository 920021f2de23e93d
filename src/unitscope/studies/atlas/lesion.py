"""Each unit's own lesion, for every unit of a shard at once: the unit alone is ablated (set to its mean over every
image of the target's datasets, or to zero) and the network after the layer re-run (`interventions.tail`: the exact
tail, batched over the shard's units as conditions; on the stored channel means when the tail starts with the global
pool). Per dataset: the mean KL divergence KL(intact || lesioned) of the output distribution (softmax of the logits),
and the share of images whose top-1 prediction changes; on a labelled dataset (integer labels = logit indexes) the
change of top-1 accuracy, overall and per class.

The intact output is computed on its own (one condition), the same in every shard; accuracy changes are counted in
integers and divided once, so a unit's numbers do not depend on the other units run with it.

Columns: `kl.<dataset>`, `flip.<dataset>`, `acc_change.<dataset>`, `acc_change.<dataset>[<class>]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from unitscope.interventions.tail import Tail, condition_outputs
from unitscope.studies.atlas.inputs import AtlasError


@dataclass(frozen=True)
class LesionImages:
    """Which dataset each image (a row of the cache) belongs to, and the class indexes of the labelled ones."""

    datasets: tuple[str, ...]
    dataset: np.ndarray  # [N] int: index into datasets
    classes: Mapping[str, np.ndarray]  # labelled dataset -> [n_d] class index of its images (in row order)

    def rows(self, dataset: str) -> np.ndarray:
        return np.flatnonzero(self.dataset == self.datasets.index(dataset))


@dataclass
class LesionOutputs:
    """Per condition (a unit's lesion) and image: the KL from the intact output, and the top-1 prediction."""

    kl: np.ndarray  # [U, N] float64
    top: np.ndarray  # [U, N] int64
    intact_top: np.ndarray  # [N] int64
    n_outputs: int


def single_lesions(n_channels: int, channels: np.ndarray) -> torch.Tensor:
    """[U, C] masks: row u ablates channels[u] alone."""
    ablate = torch.zeros(len(channels), n_channels, dtype=torch.bool)
    ablate[torch.arange(len(channels)), torch.as_tensor(np.asarray(channels, dtype=np.int64))] = True
    return ablate


def lesion_outputs(
    tail: Tail, cache: torch.Tensor, fill: torch.Tensor, channels: np.ndarray, *, device="cpu"
) -> LesionOutputs:
    """Run every unit's own lesion through the tail (chunks of conditions x images, `condition_outputs`)."""
    n_channels = fill.shape[0]
    nothing = torch.zeros(1, n_channels, dtype=torch.bool)
    ((_, _, intact),) = condition_outputs(tail, cache, nothing, fill, device=device, with_pooled=False)
    log_p = torch.log_softmax(intact[0].double(), dim=-1)  # [N, L], in float64: KL of near-equal outputs is tiny
    p = log_p.exp()
    kl = np.empty((len(channels), cache.shape[0]), dtype=np.float64)
    top = np.empty(kl.shape, dtype=np.int64)
    outputs = condition_outputs(
        tail, cache, single_lesions(n_channels, channels), fill, device=device, with_pooled=False, progress=True
    )
    for rows, _, logits in outputs:
        kl[rows] = (p * (log_p - torch.log_softmax(logits.double(), dim=-1))).sum(-1).numpy()
        top[rows] = logits.argmax(-1).numpy()
    return LesionOutputs(kl, top, intact[0].argmax(-1).numpy(), int(intact.shape[-1]))


def _accuracy_changes(outputs: LesionOutputs, rows: np.ndarray, classes: np.ndarray, dataset: str) -> dict:
    if len(classes) and classes.max() >= outputs.n_outputs:
        raise AtlasError(
            f"dataset {dataset}: label {classes.max()} is not a class of the model ({outputs.n_outputs} outputs); "
            "list only datasets whose labels are its class indexes in atlas.targets[].labelled"
        )
    correct = (outputs.top[:, rows] == classes).astype(np.int64)  # [U, n]
    intact = (outputs.intact_top[rows] == classes).astype(np.int64)
    columns = {f"acc_change.{dataset}": (correct.sum(1) - intact.sum()) / max(1, len(rows))}
    for label in np.unique(classes):
        members = classes == label
        change = correct[:, members].sum(1) - intact[members].sum()
        columns[f"acc_change.{dataset}[{label}]"] = change / members.sum()
    return columns


def lesion_table(outputs: LesionOutputs, images: LesionImages, channels: np.ndarray) -> pd.DataFrame:
    """One row per unit: mean KL and top-1 change share per dataset; accuracy changes on the labelled datasets."""
    columns = {"channel": np.asarray(channels, dtype=np.int64)}
    for dataset in images.datasets:
        rows = images.rows(dataset)
        columns[f"kl.{dataset}"] = np.ascontiguousarray(outputs.kl[:, rows]).mean(axis=1)
        flips = (outputs.top[:, rows] != outputs.intact_top[rows]).sum(axis=1)
        columns[f"flip.{dataset}"] = flips / max(1, len(rows))
        if dataset in images.classes:
            columns.update(_accuracy_changes(outputs, rows, images.classes[dataset], dataset))
    return pd.DataFrame(columns)
