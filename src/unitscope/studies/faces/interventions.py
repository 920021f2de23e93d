"""Interventions on the selected face channels: lesion, keep-only, random and activation-matched controls.

Every condition is a boolean mask over the layer's channels (True = ablated: set to zero, or to the
channel's mean over every image of the study). The network before the layer runs once per image;
each condition re-runs only the "tail" (the modules after the layer), batched over conditions:
[conditions x images] masked copies go through the tail in chunks that bound memory.

When the tail starts with a global average pool (the last conv block of MobileNetV2 or a ResNet),
masking commutes with the pool (a zeroed or constant map averages to 0 or that constant), so the
conditions act on the stored per-image channel means and no image is decoded at all. Otherwise the
layer's maps are computed once from the images and kept in memory.

Readouts per condition (see `layer_readouts`, `downstream_readouts`, `kl_readouts`):
- retrained: logistic probe face vs non-face, stratified k-fold CV accuracy on the condition's activations;
- fixed: the probe fit on intact activations of a training split, scored on the condition's held-out split;
- downstream: both probes on the pooled features before the classifier (only when the layer is earlier);
- KL(intact || intervened) of the model's output distribution, mean over faces and over non-faces;
- PCA of the faces' activations: variance share of PC1 and components needed for each level.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.hooks import ActivationRecorder, get_module, hooked
from unitscope.models.cifar_resnet import CifarResNet
from unitscope.models.registry import build_model, build_transform, resolve_layer
from unitscope.runtime import make_loader, pick_device
from unitscope.stats import empirical_p
from unitscope.studies.faces.probe import cv_correct, fit_logistic, fixed_split, standardize_stats, stratified_folds
from unitscope.studies.faces.selection import (
    FacesError,
    components_for,
    derived_rng,
    load_category_means,
    matched_sets,
    random_sets,
    selected_channels,
    write_table,
)

CHUNK_BYTES = 1 << 28  # ~256 MiB of masked activations (or logits) per step
TAIL_EXPANSION = 8  # maps through the tail: budget the input at 1/8, as blocks expand channels ~6x


# ---------------------------------------------------------------------------------------------- the tail


class _GlobalPool(nn.Module):
    """[N, C, H, W] -> [N, C]: MobileNetV2's functional adaptive_avg_pool2d(1) + flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _execution_order(model: nn.Module, model_name: str) -> tuple[list[tuple[str, nn.Module]], int, str, dict]:
    """(stages up to the pooled features, index of the pool stage, head module name, container aliases)."""
    if isinstance(model, torchvision.models.MobileNetV2):
        stages = [(f"features.{i}", block) for i, block in enumerate(model.features)]
        aliases = {"features": stages[-1][0]}
        stages.append(("global average pool", _GlobalPool()))
        return stages, len(stages) - 1, "classifier", aliases
    if isinstance(model, torchvision.models.ResNet | CifarResNet):
        head = "fc" if isinstance(model, torchvision.models.ResNet) else "linear"
        stem = ["conv1", "bn1", "relu"] + (["maxpool"] if head == "fc" else [])
        stages = [(name, getattr(model, name)) for name in stem]
        aliases = {}
        for stage_name in ("layer1", "layer2", "layer3", "layer4"):
            if not hasattr(model, stage_name):
                continue
            blocks = [(f"{stage_name}.{i}", block) for i, block in enumerate(getattr(model, stage_name))]
            stages.extend(blocks)
            aliases[stage_name] = blocks[-1][0]
        stages.append(("avgpool", nn.Sequential(model.avgpool, nn.Flatten(1))))
        return stages, len(stages) - 1, head, aliases
    raise FacesError(
        f"model {model_name}: interventions support torchvision MobileNetV2 / ResNet and the CIFAR ResNets, "
        f"not {type(model).__name__}"
    )


@dataclass
class Tail:
    """The network after `layer`: `features(x)` -> pooled features before the classifier; `head` -> logits."""

    layer: str
    modules: list[nn.Module]
    head: nn.Module
    head_name: str
    pool_first: bool  # the tail begins with the global pool: interventions can act on channel means
    affine: tuple[torch.Tensor, torch.Tensor] | None = None  # (W [L, D], b [L]) when the head is one Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.modules:
            x = module(x)
        return x.flatten(1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled, logits) from the layer's maps [n, C, H, W], or from its channel means [n, C] when
        the tail starts with the global pool (the pool of a masked map is the masked mean)."""
        if x.dim() == 2:
            if not self.pool_first:
                raise FacesError(f"layer {self.layer!r} is not followed by the global pool; the tail needs its maps")
            pooled = x
        else:
            pooled = self.features(x)
        return pooled, self.head(pooled)


def build_tail(model: nn.Module, layer: str, model_name: str) -> Tail:
    """The modules after `layer` in forward order; a layer off the main chain is a one-line FacesError."""
    resolve_layer(model, layer, model_name)
    stages, pool_index, head_name, aliases = _execution_order(model, model_name)
    names = [name for name, _ in stages]
    target = aliases.get(layer, layer)
    if target not in names:
        valid = [*aliases, *(n for n in names if n != "global average pool")]
        raise FacesError(
            f"model {model_name}: cannot intervene at layer {layer!r}: the rest of the network can be run only "
            f"after a block of the main chain ({', '.join(valid[:12])}, … {len(valid)} in all)"
        )
    index = names.index(target)
    head = get_module(model, head_name)
    return Tail(
        layer=layer,
        modules=[module for _, module in stages[index + 1 : pool_index + 1]],
        head=head,
        head_name=head_name,
        pool_first=index >= pool_index - 1,
        affine=_affine(head) if not model.training else None,
    )


def _affine(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) of a head that is one Linear, possibly after eval-mode Dropout/Identity; else None."""
    parts = list(head) if isinstance(head, nn.Sequential) else [head]
    linear = [part for part in parts if isinstance(part, nn.Linear)]
    if len(linear) != 1 or parts[-1] is not linear[0]:
        return None
    if not all(isinstance(part, nn.Dropout | nn.Identity) for part in parts[:-1]):
        return None
    bias = linear[0].bias if linear[0].bias is not None else torch.zeros(linear[0].out_features)
    return linear[0].weight.detach(), bias.detach()


def _affine_logits(
    means: torch.Tensor, intact_logits: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor, affine
) -> torch.Tensor:
    """Logits of k conditions [k, N, L] for a linear head on the pooled means, touching only the
    channels that differ from the cheaper end: intact logits minus the ablated channels' change when
    few are ablated; bias plus the kept channels (and the ablated ones' constant fill) when few are kept."""
    weight, bias = affine
    weight_t = weight.T.to(means.dtype)  # [C, L]
    n_channels = means.shape[1]
    out = torch.empty(ablate.shape[0], means.shape[0], weight.shape[0], dtype=means.dtype, device=means.device)
    counts = ablate.sum(1)
    for count in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == count).flatten()
        if count <= n_channels - count:
            index = torch.stack([torch.nonzero(ablate[r]).flatten() for r in rows])  # [g, count]
            change = fill[index][:, None, :] - means[:, index].permute(1, 0, 2)  # [g, N, count]
            out[rows] = intact_logits + torch.bmm(change, weight_t[index])
        else:
            index = torch.stack([torch.nonzero(~ablate[r]).flatten() for r in rows])  # [g, kept]
            constant = bias + (ablate[rows].to(means.dtype) * fill) @ weight_t  # [g, L]
            out[rows] = constant[:, None, :] + torch.bmm(means[:, index].permute(1, 0, 2), weight_t[index])
    return out


def hooked_condition(
    model: nn.Module, tail: Tail, images: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: one full forward pass with a hook replacing the ablated channels at the layer.

    Returns (pooled features recorded at the classifier's input, logits).
    """
    recorded = {}

    def intervene(_module, _inputs, output):
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return torch.where(ablate.view(shape), fill.to(output.dtype).view(shape).expand_as(output), output)

    def record(_module, inputs, _output):
        recorded["pooled"] = inputs[0].detach().clone()

    with hooked(model, {tail.layer: intervene, tail.head_name: record}), torch.inference_mode():
        logits = model(images)
    return recorded["pooled"], logits


# ---------------------------------------------------------------------------------------------- conditions


@dataclass
class Conditions:
    table: pd.DataFrame  # condition, family, mode, draw, set_size, n_ablated
    ablate: torch.Tensor  # [K, C] bool, True = replaced
    sets: list[np.ndarray]  # the channel set each condition is built from (empty for intact)


def build_conditions(
    n_channels: int,
    selected: np.ndarray,
    random_draws: np.ndarray,
    matched_draws: np.ndarray,
    single_channels: np.ndarray | None = None,
) -> Conditions:
    """intact; lesion and keep-only of the selected set; the same two modes for every control draw; and, for
    each of `single_channels`, a lesion of that channel alone (family "single": each unit's own effect)."""
    rows, masks, sets = [], [], []

    def add(name, family, mode, draw, channels):
        in_set = torch.zeros(n_channels, dtype=torch.bool)
        in_set[torch.tensor(np.asarray(channels, dtype=np.int64))] = True
        ablate = {"none": torch.zeros_like(in_set), "lesion": in_set, "keep_only": ~in_set}[mode]
        rows.append(
            {
                "condition": name,
                "family": family,
                "mode": mode,
                "draw": draw,
                "set_size": len(channels),
                "n_ablated": int(ablate.sum()),
            }
        )
        masks.append(ablate)
        sets.append(np.asarray(channels, dtype=np.int64))

    add("intact", "intact", "none", -1, [])
    add("lesion", "selected", "lesion", -1, selected)
    add("keep_only", "selected", "keep_only", -1, selected)
    for family, draws in (("random", random_draws), ("matched", matched_draws)):
        for draw, channels in enumerate(draws):
            for mode in ("lesion", "keep_only"):
                add(f"{family}_{mode}_{draw:03d}", family, mode, draw, channels)
    for position, channel in enumerate(() if single_channels is None else single_channels):
        add(f"single_lesion_{int(channel):04d}", "single", "lesion", position, [int(channel)])
    return Conditions(table=pd.DataFrame(rows), ablate=torch.stack(masks), sets=sets)


def ablation_fill(kind: str, means: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Replacement value per channel: 0, or the channel's mean over every image (and position)."""
    means = torch.as_tensor(means, dtype=torch.float32)
    if kind == "zero":
        return torch.zeros(means.shape[1])
    if kind == "mean":
        return means.mean(dim=0)
    raise FacesError(f"config key faces.interventions.ablation: unknown ablation {kind!r} (zero, mean)")


def ablate_activations(x: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """x [n, C, ...] under k conditions ablate [k, C] -> [k, n, C, ...] (one broadcast op)."""
    shape = (ablate.shape[0], 1, ablate.shape[1]) + (1,) * (x.dim() - 2)
    fill = fill.to(x.dtype).view((1, 1, -1) + (1,) * (x.dim() - 2))
    return torch.where(ablate.view(shape), fill, x.unsqueeze(0))


def condition_outputs(
    tail: Tail,
    cache: torch.Tensor,
    ablate: torch.Tensor,
    fill: torch.Tensor,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    device: torch.device | str = "cpu",
    progress: bool = False,
    with_pooled: bool = True,
) -> Iterator[tuple[slice, torch.Tensor | None, torch.Tensor]]:
    """Yield (condition slice, pooled [k, N, D], logits [k, N, L]) for chunks of conditions.

    `cache` is the layer's output for every image: [N, C] channel means when `tail.pool_first`, else
    [N, C, H, W] maps. Chunks of [k conditions x n images] are masked and run through the tail at once.
    With a linear head on channel means, logits come from the few channels that differ (`_affine_logits`)
    and the pooled features (the masked means) are only materialised if `with_pooled`.
    """
    device = torch.device(device)
    n_images, per_image = cache.shape[0], int(np.prod(cache.shape[1:]))
    n_conditions = ablate.shape[0]
    fill = fill.to(device)
    shortcut = cache.dim() == 2 and tail.affine is not None
    with torch.inference_mode():
        probe_out = tail(cache[:1].to(device))[1]
        if shortcut:
            all_means = cache.to(device)
            intact_logits = tail.head(all_means)
            affine = tuple(t.to(device) for t in tail.affine)
    width = max(per_image, probe_out.shape[1])
    if cache.dim() > 2 and not shortcut:
        chunk_bytes //= TAIL_EXPANSION  # the tail's intermediate maps are several times the size of its input
    per_condition = n_images * width * 4
    k = max(1, min(n_conditions, chunk_bytes // max(1, per_condition)))
    images_per_step = n_images if k > 1 else max(1, chunk_bytes // (width * 4))
    bar = tqdm(total=n_conditions, desc="conditions", unit="cond", disable=not progress, mininterval=2)
    for start in range(0, n_conditions, k):
        stop = min(n_conditions, start + k)
        masks = ablate[start:stop].to(device)
        if shortcut:
            with torch.inference_mode():
                pooled = ablate_activations(all_means, masks, fill).float().cpu() if with_pooled else None
                logits = _affine_logits(all_means, intact_logits, masks, fill, affine)
            bar.update(stop - start)
            yield slice(start, stop), pooled, logits.float().cpu()
            continue
        pooled_parts, logit_parts = [], []
        for first in range(0, n_images, images_per_step):
            x = cache[first : first + images_per_step].to(device)
            masked = ablate_activations(x, masks, fill)  # [k, n, C, ...]
            with torch.inference_mode():
                flat_pooled, flat_logits = tail(masked.reshape(-1, *masked.shape[2:]))
            pooled = flat_pooled.view(stop - start, -1, flat_pooled.shape[-1])
            logits = flat_logits.view(stop - start, -1, flat_logits.shape[-1])
            pooled_parts.append(pooled.float().cpu())
            logit_parts.append(logits.float().cpu())
        bar.update(stop - start)
        yield slice(start, stop), torch.cat(pooled_parts, dim=1), torch.cat(logit_parts, dim=1)
    bar.close()


# ---------------------------------------------------------------------------------------------- readouts


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


def pca_curves(face_means: torch.Tensor, conditions: Conditions, names: tuple[str, ...]) -> pd.DataFrame:
    """Explained-variance ratio and cumulative curve of the faces' activations for the named conditions."""
    centred = (face_means - face_means.mean(0)).double()
    tables = []
    for name in names:
        row = int(np.flatnonzero(conditions.table["condition"].to_numpy() == name)[0])
        kept = centred[:, ~conditions.ablate[row]]
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
    retrained probes are intact-design probes with the ablated weights held at 0 (see faces_probe);
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


# ---------------------------------------------------------------------------------------------- controls

# For each metric, the direction in which the selected set's effect is "stronger" than a control's,
# for (lesion, keep-only): a lesion that hurts more, a keep-only set that preserves more.
METRIC_DIRECTIONS = {
    "fixed_accuracy": ("lower", "higher"),
    "retrained_accuracy": ("lower", "higher"),
    "downstream_fixed_accuracy": ("lower", "higher"),
    "downstream_retrained_accuracy": ("lower", "higher"),
    "kl_faces": ("higher", "lower"),
    "kl_nonfaces": ("higher", "lower"),
    "kl_face_ratio": ("higher", "lower"),
    "pca_pc1": ("two-sided", "two-sided"),
}


def control_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """Selected set versus each control family's null distribution, per mode and metric.

    A channel set drawn twice is one piece of evidence: the null is over distinct sets (`n_distinct`),
    so a degenerate control (e.g. matched draws that can only pick the same channels) cannot give a
    small p-value by repetition.
    """
    metrics = [m for m in METRIC_DIRECTIONS if m in conditions] + [c for c in conditions if c.startswith("pca_n")]
    rows = []
    for mode_index, mode in enumerate(("lesion", "keep_only")):
        chosen = conditions[(conditions["family"] == "selected") & (conditions["mode"] == mode)]
        for family in ("random", "matched"):
            drawn = conditions[(conditions["family"] == family) & (conditions["mode"] == mode)]
            if "channels" in drawn:
                distinct = drawn["channels"].map(lambda channels: tuple(sorted(channels))).duplicated()
                null_rows = drawn[~distinct.to_numpy()]
            else:
                null_rows = drawn
            for metric in metrics:
                value = float(chosen[metric].iloc[0])
                null = null_rows[metric].to_numpy(dtype=np.float64)
                null = null[np.isfinite(null)]
                if not np.isfinite(value) or len(null) == 0:
                    continue
                direction = METRIC_DIRECTIONS.get(metric, ("two-sided", "two-sided"))[mode_index]
                rows.append(
                    {
                        "mode": mode,
                        "control": family,
                        "metric": metric,
                        "selected": value,
                        "intact": float(conditions.loc[conditions["family"] == "intact", metric].iloc[0]),
                        "null_mean": float(null.mean()),
                        "null_low": float(np.percentile(null, 2.5)),
                        "null_high": float(np.percentile(null, 97.5)),
                        "n_draws": len(drawn),
                        "n_distinct": len(null),
                        "direction": direction,
                        "p_value": empirical_p(value, null, direction),
                    }
                )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- stage


def layer_maps(
    model: nn.Module,
    layer: str,
    manifests: dict[str, str],
    preprocessing: dict,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """The layer's float32 output maps for every image of the manifests (in order), computed once."""
    device = torch.device(device)
    transform = build_transform(preprocessing)
    maps, ids = [], []
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        for name, path in manifests.items():
            manifest = read_manifest(path)
            loader = make_loader(
                ManifestDataset(manifest, transform), batch_size=batch_size, num_workers=num_workers, device=device
            )
            with torch.inference_mode():
                for batch, _ in tqdm(loader, desc=f"layer maps {name}", unit="batch", mininterval=2):
                    rec(batch.to(device))
                    maps.append(rec.maps[layer])
            ids.extend(manifest["image_id"])
    return torch.cat(maps), np.asarray(ids, dtype=object)


def run_interventions(
    *,
    model_name: str,
    model_spec: dict,
    layer: str,
    stores: dict[str, str],
    manifests: dict[str, str],
    face_dataset: str,
    selection: str,
    rule: str,
    ablation: str,
    n_random: int,
    n_matched: int,
    matched_candidates: int,
    folds: int,
    C: float,
    fixed_train_fraction: float,
    pca_levels: list[float],
    seed: int,
    data_dir: str,
    torch_home: str,
    out_conditions: str | os.PathLike,
    out_controls: str | os.PathLike,
    out_pca: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The intervention stage: every condition's readouts (conditions table) and the control comparison."""
    clock = time.perf_counter()
    torch_device = pick_device(device)
    model = build_model(model_name, model_spec, data_dir=data_dir, torch_home=torch_home).to(torch_device)
    tail = build_tail(model, layer, model_name)
    data = load_category_means(stores, face_dataset, layer)
    table = pd.read_parquet(selection)
    if len(table) != data.n_channels:
        raise FacesError(f"{selection} lists {len(table)} channels, the stores at {layer!r} have {data.n_channels}")
    chosen = selected_channels(table, rule)
    means = torch.from_numpy(data.means)
    if tail.pool_first:
        cache = means
        print(f"{layer} is followed by the global pool: conditions act on the stored channel means", flush=True)
    else:
        order = [face_dataset, *data.nonface_datasets]
        cache, ids = layer_maps(
            model,
            layer,
            {name: manifests[name] for name in order},
            model_spec["preprocessing"],
            batch_size=batch_size,
            num_workers=num_workers,
            device=torch_device,
        )
        if list(ids) != list(data.image_id):
            raise FacesError(f"the manifests' images differ from those of the stores at {layer!r}; re-run extraction")
        means = cache.mean(dim=(2, 3))
        print(f"layer maps {list(cache.shape)} computed once in {time.perf_counter() - clock:.1f} s", flush=True)
    channel_mean = means.mean(0).numpy()
    random_draws = random_sets(data.n_channels, len(chosen), n_random, derived_rng(seed, "faces/random"))
    try:
        matched_draws = matched_sets(
            channel_mean, chosen, n_matched, matched_candidates, derived_rng(seed, "faces/matched")
        )
    except FacesError as err:  # more selected than unselected channels: no matched control exists
        print(f"matched controls skipped: {err}", flush=True)
        matched_draws = np.zeros((0, len(chosen)), dtype=np.int64)
    conditions = build_conditions(data.n_channels, chosen, random_draws, matched_draws, single_channels=chosen)
    fill = ablation_fill(ablation, means)
    readout = Readout.make(data.is_face, n_folds=folds, train_fraction=fixed_train_fraction, C=C, seed=seed)
    started = time.perf_counter()
    layer_table = layer_readouts(means, conditions.ablate, fill, readout, pca_levels=pca_levels)
    print(f"layer readouts for {len(conditions.table)} conditions in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    _, intact_pooled, intact_logits = next(
        condition_outputs(tail, cache, conditions.ablate[:1], fill, device=torch_device)
    )
    intact_log_probs = torch.log_softmax(intact_logits[0].float(), dim=-1)
    intact_probe = None if tail.pool_first else fixed_probe(intact_pooled[0], readout)
    columns: dict[str, list] = {}
    for _, pooled, logits in condition_outputs(
        tail, cache, conditions.ablate, fill, device=torch_device, progress=True, with_pooled=not tail.pool_first
    ):
        parts = kl_readouts(logits, intact_log_probs, data.is_face)
        if not tail.pool_first:
            parts.update(downstream_readouts(pooled, readout, intact_probe))
        for key, values in parts.items():
            columns.setdefault(key, []).extend(np.asarray(values).tolist())
    print(f"tail runs and output readouts in {time.perf_counter() - started:.1f} s", flush=True)

    result = pd.concat([conditions.table, layer_table, pd.DataFrame(columns)], axis=1)
    if tail.pool_first:
        result["downstream_retrained_accuracy"] = np.nan
        result["downstream_fixed_accuracy"] = np.nan
    result["channels"] = [s.tolist() for s in conditions.sets]
    result["set_mean_activation"] = [float(channel_mean[s].mean()) if len(s) else np.nan for s in conditions.sets]
    result["layer"] = layer
    result["model"] = model_name
    result["ablation"] = ablation
    result["selection_rule"] = rule
    result["downstream"] = "" if tail.pool_first else "pooled features before the classifier"
    result["n_faces"] = int(data.is_face.sum())
    result["n_nonfaces"] = int((~data.is_face).sum())
    controls = control_table(result)
    write_table(result, out_conditions)
    write_table(controls, out_controls)
    if out_pca is not None:
        faces = torch.as_tensor(data.is_face)
        write_table(pca_curves(means[faces], conditions, ("intact", "lesion", "keep_only")), out_pca)
    print(f"interventions: {len(result)} conditions in {time.perf_counter() - clock:.1f} s", flush=True)
    return result, controls
