"""Interventions on the selected face channels: lesion, keep-only, random and activation-matched controls.

Every condition is a boolean mask over the layer's channels (True = ablated: set to zero, or to the
channel's mean over every image of the study). Conditions act on the layer's output and the rest of the
network runs on them (`tail`); each is scored by the readouts of `readouts` and compared with the
controls' null distributions (`controls`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from unitscope.studies.faces.inputs import FacesError
from unitscope.studies.faces.readouts import Readout, downstream_readouts, fixed_probe, kl_readouts, layer_readouts
from unitscope.studies.faces.tail import Tail, condition_outputs


@dataclass
class Conditions:
    table: pd.DataFrame  # condition, family, mode, draw, set_size, n_ablated
    ablate: torch.Tensor  # [K, C] bool, True = replaced
    sets: list[np.ndarray]  # the channel set each condition is built from (empty for intact)

    def masks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """{name: [C] ablation mask} of the named conditions."""
        rows = {name: row for row, name in enumerate(self.table["condition"])}
        return {name: self.ablate[rows[name]] for name in names}


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
