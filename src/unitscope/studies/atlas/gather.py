"""The layer table: one row per unit (`unit` = <model>/<layer>/<channel>), the shards' evidence joined on the
channel, and, where the nefesi study or the dissection analyses the same layer, their columns beside it
(`nefesi.<index>`, `dissection.<column>`; the atlas's own index shards, for a layer nefesi does not analyse, give
the same `nefesi.<index>` columns). The exemplar shards' columns get the prefix `exemplars.`
(`exemplars.top_activation`, `exemplars.n`, `exemplars.share.<dataset>`); their images stay in the shards'
exemplars.npz. No torch."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from unitscope.studies.atlas.inputs import AtlasError

# nefesi's per-unit indexes (its indexes.parquet) and the dissection's best concept (its units.parquet) joined in
NEFESI_COLUMNS = (
    "dead",
    "top_activation",
    "color_index",
    "dominant_color",
    "orientation_index",
    "preferred_angle",
    "symmetry_index",
    "class_index",
    "top_class",
    "top_class_share",
    "population_code",
)
DISSECTION_COLUMNS = ("concept", "category", "iou", "detector", "runner_up", "runner_up_iou")


def unit_id(model: str, layer: str, channel: int) -> str:
    """The unit's id everywhere in the report: <model>/<layer>/<channel>."""
    return f"{model}/{layer}/{int(channel)}"


def unit_frame(model: str, layer: str, n_channels: int) -> pd.DataFrame:
    channels = np.arange(n_channels, dtype=np.int64)
    return pd.DataFrame(
        {"unit": [unit_id(model, layer, c) for c in channels], "model": model, "layer": layer, "channel": channels}
    )


def concat_shards(paths: Sequence[str | os.PathLike], n_channels: int, kind: str) -> pd.DataFrame:
    """The shards' tables of one evidence kind, in unit order; each unit exactly once, or a one-line error."""
    table = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
    channels = table["channel"].to_numpy()
    if len(table) != n_channels or not np.array_equal(np.sort(channels), np.arange(n_channels)):
        raise AtlasError(
            f"the {kind} shards ({len(paths)} files, first {paths[0] if paths else 'none'}) cover "
            f"{len(np.unique(channels))} distinct of {n_channels} units in {len(table)} rows; re-run the shards"
        )
    return table.sort_values("channel", kind="stable").reset_index(drop=True)


def exemplars_part(table: pd.DataFrame) -> pd.DataFrame:
    """The exemplar shards' columns as the layer table names them: `exemplars.top_activation`, `exemplars.n` (its
    exemplars with a positive activation) and `exemplars.share.<dataset>`."""

    def name(column: str) -> str:
        if column == "channel":
            return column
        if column == "n_exemplars":
            return "exemplars.n"
        return "exemplars." + column.replace("exemplar_share.", "share.", 1)

    return table.rename(columns=name)


def actmax_part(table: pd.DataFrame) -> pd.DataFrame:
    """The actmax shards' columns as the layer table names them: `actmax.activation` (mean over seeds),
    `actmax.activation_sd` and `actmax.colour_score`."""
    return table.rename(columns=lambda c: c if c == "channel" else "actmax." + c.removeprefix("actmax_"))


def nefesi_columns(table: pd.DataFrame) -> pd.DataFrame:
    """nefesi's index columns (NEFESI_COLUMNS, those present) as the layer table names them: `nefesi.<index>`. The
    atlas's own index shards and the nefesi study's table give the same columns."""
    keep = [column for column in NEFESI_COLUMNS if column in table]
    return table[["channel", *keep]].rename(columns={c: f"nefesi.{c}" for c in keep}).reset_index(drop=True)


# evidence kinds whose shard columns are renamed in the layer table (the others keep their own names)
RENAMED = {"exemplars": exemplars_part, "actmax": actmax_part, "indexes": nefesi_columns}


def _joined(base: pd.DataFrame, part: pd.DataFrame, source: str) -> pd.DataFrame:
    if len(part) != len(base) or not np.array_equal(part["channel"].to_numpy(), base["channel"].to_numpy()):
        raise AtlasError(f"{source} has {len(part)} units at this layer; the layer has {len(base)}")
    return pd.concat([base, part.drop(columns="channel").reset_index(drop=True)], axis=1)


def nefesi_part(path: str | os.PathLike, layer: str) -> pd.DataFrame:
    table = pd.read_parquet(path)
    table = table[table["layer"] == layer].sort_values("channel") if "layer" in table else table
    return nefesi_columns(table)


def dissection_part(path: str | os.PathLike, layer: str) -> pd.DataFrame:
    table = pd.read_parquet(path)
    table = table[table["layer"] == layer].sort_values("unit").rename(columns={"unit": "channel"})
    keep = [column for column in DISSECTION_COLUMNS if column in table]
    return table[["channel", *keep]].rename(columns={c: f"dissection.{c}" for c in keep}).reset_index(drop=True)


def layer_table(
    model: str,
    layer: str,
    n_channels: int,
    *,
    evidence: dict[str, Sequence[str | os.PathLike]],
    nefesi: str | os.PathLike | None = None,
    dissection: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """One row per unit of the layer: `evidence` {kind: its shard tables}, then nefesi's and the dissection's."""
    table = unit_frame(model, layer, n_channels)
    for kind, paths in evidence.items():
        part = concat_shards(paths, n_channels, kind)
        table = _joined(table, RENAMED.get(kind, lambda frame: frame)(part), f"the {kind} shards")
    if nefesi is not None:
        table = _joined(table, nefesi_part(nefesi, layer), f"nefesi table {nefesi}")
    if dissection is not None:
        table = _joined(table, dissection_part(dissection, layer), f"dissection table {dissection}")
    return table
