"""Interventions on the selected face channels: lesion, keep-only, random and activation-matched controls.

Every condition is a boolean mask over the layer's channels (True = ablated: set to zero, or to the
channel's mean over every image of the study). Conditions act on the layer's output and the rest of the
network runs on them (`tail`); each is scored by the readouts of `readouts` and compared with the
controls' null distributions (`controls`).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from unitscope.interventions.conditions import Conditions
from unitscope.interventions.tail import Tail, condition_outputs
from unitscope.studies.faces.readouts import Readout, downstream_readouts, fixed_probe, kl_readouts, layer_readouts


def output_readouts(
    tail: Tail,
    cache: torch.Tensor,
    ablate: torch.Tensor,
    fill: torch.Tensor,
    readout: Readout,
    is_face: np.ndarray,
    *,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Readouts of the network's output under every condition: KL divergences from the intact outputs and,
    when the layer is not followed by the global pool directly, both probes on the pooled features."""
    _, intact_pooled, intact_logits = next(condition_outputs(tail, cache, ablate[:1], fill, device=device))
    intact_log_probs = torch.log_softmax(intact_logits[0].float(), dim=-1)
    intact_probe = None if tail.pool_first else fixed_probe(intact_pooled[0], readout)
    columns: dict[str, list] = {}
    for _, pooled, logits in condition_outputs(
        tail, cache, ablate, fill, device=device, progress=True, with_pooled=not tail.pool_first
    ):
        parts = kl_readouts(logits, intact_log_probs, is_face)
        if not tail.pool_first:
            parts.update(downstream_readouts(pooled, readout, intact_probe))
        for key, values in parts.items():
            columns.setdefault(key, []).extend(np.asarray(values).tolist())
    return pd.DataFrame(columns)


def condition_readouts(
    tail: Tail,
    cache: torch.Tensor,
    means: torch.Tensor,
    conditions: Conditions,
    fill: torch.Tensor,
    readout: Readout,
    *,
    is_face: np.ndarray,
    pca_levels: list[float],
    device: torch.device | str = "cpu",
) -> list[pd.DataFrame]:
    """Every condition's readouts: at the layer (probes, PCA), then at the output (KL, downstream probes)."""
    started = time.perf_counter()
    layer_table = layer_readouts(means, conditions.ablate, fill, readout, pca_levels=pca_levels)
    print(f"layer readouts for {len(conditions.table)} conditions in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    output_table = output_readouts(tail, cache, conditions.ablate, fill, readout, is_face, device=device)
    print(f"tail runs and output readouts in {time.perf_counter() - started:.1f} s", flush=True)
    return [layer_table, output_table]


def condition_table(
    conditions: Conditions,
    readouts: list[pd.DataFrame],
    *,
    pool_first: bool,
    channel_mean: np.ndarray,
    is_face: np.ndarray,
    labels: dict[str, str],
) -> pd.DataFrame:
    """One row per condition: its definition, every readout, the channels it is built from and their mean
    activation, and `labels` (layer, model, ablation, selection_rule) on every row."""
    result = pd.concat([conditions.table, *readouts], axis=1)
    if pool_first:
        result["downstream_retrained_accuracy"] = np.nan
        result["downstream_fixed_accuracy"] = np.nan
    result["channels"] = [s.tolist() for s in conditions.sets]
    result["set_mean_activation"] = [float(channel_mean[s].mean()) if len(s) else np.nan for s in conditions.sets]
    for key, value in labels.items():
        result[key] = value
    result["downstream"] = "" if pool_first else "pooled features before the classifier"
    result["n_faces"] = int(is_face.sum())
    result["n_nonfaces"] = int((~is_face).sum())
    return result
