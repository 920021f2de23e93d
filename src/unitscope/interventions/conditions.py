"""Intervention conditions: each is a boolean mask over a layer's channels (True = ablated: replaced by zero or by
the channel's mean over the images), built from a channel set as a lesion (the set ablated) or keep-only (all
but the set ablated). The masks of many conditions go through the network at once (`tail.condition_outputs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from unitscope.interventions.errors import InterventionError


@dataclass
class Conditions:
    table: pd.DataFrame  # condition, family, mode, draw, set_size, n_ablated
    ablate: torch.Tensor  # [K, C] bool, True = replaced
    sets: list[np.ndarray]  # the channel set each condition is built from (empty for intact)

    def masks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """{name: [C] ablation mask} of the named conditions."""
        rows = {name: row for row, name in enumerate(self.table["condition"])}
        return {name: self.ablate[rows[name]] for name in names}


class ConditionBuilder:
    """Conditions added one at a time: `add(name, channels, mode=..., **labels)`, mode "none" (intact), "lesion"
    (the channels ablated) or "keep_only" (all other channels ablated); a row of the table holds `condition`, the
    labels and `mode` in the order given, `set_size` and `n_ablated`."""

    def __init__(self, n_channels: int):
        self.n_channels = n_channels
        self.rows: list[dict] = []
        self.masks: list[torch.Tensor] = []
        self.sets: list[np.ndarray] = []

    def add(self, name: str, channels, **labels) -> None:
        channels = np.asarray(channels, dtype=np.int64)
        in_set = torch.zeros(self.n_channels, dtype=torch.bool)
        in_set[torch.tensor(channels)] = True
        ablate = {"none": torch.zeros_like(in_set), "lesion": in_set, "keep_only": ~in_set}[labels["mode"]]
        self.rows.append({"condition": name, **labels, "set_size": len(channels), "n_ablated": int(ablate.sum())})
        self.masks.append(ablate)
        self.sets.append(channels)

    def build(self) -> Conditions:
        ablate = torch.stack(self.masks) if self.masks else torch.zeros(0, self.n_channels, dtype=torch.bool)
        return Conditions(table=pd.DataFrame(self.rows), ablate=ablate, sets=self.sets)


def build_conditions(
    n_channels: int,
    selected: np.ndarray,
    random_draws: np.ndarray,
    matched_draws: np.ndarray,
    single_channels: np.ndarray | None = None,
) -> Conditions:
    """intact; lesion and keep-only of the selected set; the same two modes for every control draw; and, for
    each of `single_channels`, a lesion of that channel alone (family "single": each unit's own effect)."""
    conditions = ConditionBuilder(n_channels)
    conditions.add("intact", [], family="intact", mode="none", draw=-1)
    conditions.add("lesion", selected, family="selected", mode="lesion", draw=-1)
    conditions.add("keep_only", selected, family="selected", mode="keep_only", draw=-1)
    for family, draws in (("random", random_draws), ("matched", matched_draws)):
        for draw, channels in enumerate(draws):
            for mode in ("lesion", "keep_only"):
                conditions.add(f"{family}_{mode}_{draw:03d}", channels, family=family, mode=mode, draw=draw)
    for position, channel in enumerate(() if single_channels is None else single_channels):
        name = f"single_lesion_{int(channel):04d}"
        conditions.add(name, [int(channel)], family="single", mode="lesion", draw=position)
    return conditions.build()


def ablation_fill(kind: str, means: np.ndarray | torch.Tensor, key: str = "ablation") -> torch.Tensor:
    """Replacement value per channel: 0, or the channel's mean over every image (and position); an unknown
    `kind` is an error naming the config `key`."""
    means = torch.as_tensor(means, dtype=torch.float32)
    if kind == "zero":
        return torch.zeros(means.shape[1])
    if kind == "mean":
        return means.mean(dim=0)
    raise InterventionError(f"config key {key}: unknown ablation {kind!r} (zero, mean)")
