"""Hierarchical decomposition (nefesi): how strongly each channel of a shallower analysed layer fires under the
exemplars of a deeper channel, and the tree that follows the strongest ones down from one deep channel.

The weight of shallow channel k for deep channel c is Σₙ wₙ · (max of k over the deep unit's cone on exemplar n)
/ (top activation of k over the image set), with wₙ the deep channel's exemplar weights; 1 means k fires at its
strongest under every exemplar of c.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.studies.nefesi.errors import NefesiError

if TYPE_CHECKING:
    import torch


def hierarchy_weights(children: torch.Tensor, top, shallow_top) -> np.ndarray:
    """[C_deep, C_shallow] weights from `children` [C, N, K] (each shallow channel's maximum over the cone of each
    exemplar, from the probes) and the top-N exemplars (`TopN`) of the deep and the shallow layer."""
    import torch  # seconds to import: the model-figures stage uses the rest of this module without it

    weights = top.weights().double()  # [C, N]
    values = torch.nan_to_num(children.double(), nan=0.0)  # [C, N, K]
    combined = torch.einsum("cn,cnk->ck", weights, values)
    peak = shallow_top.values[:, 0].double()
    return torch.where(peak > 0, combined / peak.clamp(min=1e-30), torch.zeros(())).numpy()


def hierarchy_frame(layer: str, shallower: str | None, weights: np.ndarray | None) -> pd.DataFrame:
    """The weights [C_deep, C_shallow] as a long table (hierarchy.parquet); empty for the first analysed layer."""
    if shallower is None or weights is None:
        return pd.DataFrame(
            {
                "deep_layer": pd.Series(dtype=str),
                "deep_channel": pd.Series(dtype=np.int64),
                "shallow_layer": pd.Series(dtype=str),
                "shallow_channel": pd.Series(dtype=np.int64),
                "weight": pd.Series(dtype=np.float64),
            }
        )
    return pd.DataFrame(
        {
            "deep_layer": layer,
            "deep_channel": np.repeat(np.arange(weights.shape[0]), weights.shape[1]),
            "shallow_layer": shallower,
            "shallow_channel": np.tile(np.arange(weights.shape[1]), weights.shape[0]),
            "weight": weights.reshape(-1),
        }
    )


def hierarchy_matrices(frames: list[pd.DataFrame]) -> dict[str, np.ndarray]:
    """The weights of each deep layer as a matrix [C_deep, C_shallow], from its hierarchy.parquet table."""
    weights = {}
    for frame in frames:
        if frame.empty:
            continue
        layer = frame["deep_layer"].iloc[0]
        matrix = np.zeros((frame["deep_channel"].max() + 1, frame["shallow_channel"].max() + 1))
        matrix[frame["deep_channel"], frame["shallow_channel"]] = frame["weight"]
        weights[layer] = matrix
    return weights


def choose_hierarchy_channel(table: pd.DataFrame) -> int:
    """The deep channel to decompose when none is configured: highest class index, then highest top activation."""
    alive = table[~table["dead"]]
    if alive.empty:
        return int(table["channel"].iloc[0])
    ranked = alive.sort_values(["class_index", "top_activation"], ascending=False, na_position="last", kind="stable")
    return int(ranked["channel"].iloc[0])


def hierarchy_root(model_name: str, layer: str, table: pd.DataFrame, configured: int | None) -> tuple[int, str]:
    """The deep channel the tree starts from and why: the configured one (checked), else the chosen one."""
    if configured is None:
        return choose_hierarchy_channel(table), "highest class index"
    channel = int(configured)
    if not 0 <= channel < len(table):
        raise NefesiError(
            f"config key nefesi.targets ({model_name}).hierarchy_channel: {channel} is not a channel of {layer} "
            f"(0..{len(table) - 1})"
        )
    return channel, "configured"


def hierarchy_tree(weights: dict[str, np.ndarray], layers: list[str], layer: str, channel: int, children: int):
    """Tree {layer, channel, weight, children: [...]} from `layer`'s channel down through the shallower
    `layers` (deep to shallow order given by `layers`, shallow first), `children` best per node."""
    position = layers.index(layer)

    def node(depth: int, chan: int, weight: float | None) -> dict:
        name = layers[depth]
        kids = []
        if depth > 0 and name in weights:
            row = weights[name][chan]
            for k in np.argsort(-row, kind="stable")[:children]:
                kids.append(node(depth - 1, int(k), float(row[k])))
        return {"layer": name, "channel": chan, "weight": weight, "children": kids}

    return node(position, channel, None)
