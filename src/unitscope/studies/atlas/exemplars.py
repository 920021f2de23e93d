"""The atlas's exemplar evidence: each unit's top-N exemplar images, its Neuron Feature and its best crops, built on
nefesi's code (`studies.nefesi.topn`: the top-N; `studies.nefesi.images`: the crops of a unit's field).

Two steps, so that the expensive one runs once per layer, not once per shard:

* per layer (`atlas_top_n`): no forward pass of its own: the extraction's one pass per (model, dataset) stores each
  image's maximum per unit and where it is (`peak`, `peak_at`); every unit's top-N (image, location) pairs, each
  image once at its maximum, are a stable sort of those (`nefesi.topn.top_n_of_peaks`, nefesi's definition).
  Written as the layer's top-N table (`top_n_table`) and its geometry (`geometry_record`: the units' receptive
  field, the part of it that can hold image pixels, the preprocessing).
* per shard (`atlas_exemplars`): from that table, each unit's Neuron Feature, nefesi's definition,
  NF = Σₙ wₙ · cropₙ with wₙ = aₙ / Σₘ aₘ (activations clipped at 0), each crop the unit's field around the
  exemplar's location cut to the visible extent, the mean colour where the field leaves the image; and its best
  `shown` crops. The exemplar images are decoded once per shard, in fixed blocks, and every unit's sum runs over
  its exemplars in the same order, so a unit's NF has the same bits whatever shard it is computed in. A crop holds
  its image at a place fixed by the unit's map position and the mean colour (0 once normalised) elsewhere, so the
  NF adds only the image part of each crop, all crops of one map position at once.

Stored images are uint8 sRGB, shrunk by area averaging to at most `pixels` a side (a deep layer's field can be 416 px).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from unitscope.models.preprocessing import input_channels, input_size
from unitscope.models.receptive_field import ReceptiveField
from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.nefesi.images import field_crops, nf_rgb
from unitscope.studies.nefesi.probes import LayerGeometry
from unitscope.studies.nefesi.topn import TopN, exemplar_frame

TOP_N_COLUMNS = ("channel", "rank", "dataset", "image_id", "activation", "y", "x", "map_h", "map_w")
IMAGES_PER_CHUNK = 64  # exemplar images decoded at once
CROPS_PER_BLOCK = 64  # shown crops cut at once (a 416 px field: 133 MB a block)


# ----------------------------------------------------------------------------------------------
# per layer: the top-N table and the geometry of its units


def top_n_table(top: TopN, images: pd.DataFrame) -> pd.DataFrame:
    """nefesi's exemplar frame of one layer, each exemplar's image named by its dataset and image id (`images`: the
    image table the pass read, `top.image` its row numbers): one row per (channel, rank), best first."""
    frame = exemplar_frame({"": top})
    picked = images.iloc[frame["image"].to_numpy()]
    frame["dataset"] = picked["dataset"].to_numpy()
    frame["image_id"] = picked["image_id"].astype(str).to_numpy()
    return frame[list(TOP_N_COLUMNS)]


def geometry_record(
    field: ReceptiveField, top: TopN, preprocessing: Mapping, images: pd.DataFrame, *, model: str, layer: str
) -> dict:
    """What a shard needs besides the table to cut crops: the units' field, its visible extent (nefesi's nf_extent:
    the field's rows and columns that hold image pixels for some unit) and the preprocessing that made the inputs."""
    size = input_size(preprocessing)
    extent = LayerGeometry(field, size, size, top.map_size).visible_extent()
    return {
        "model": model,
        "layer": layer,
        "channels": top.channels,
        "top_n": top.n,
        "images": {str(d): int(n) for d, n in images["dataset"].value_counts(sort=False).items()},
        "map_size": list(top.map_size),
        "image_size": list(size),
        "input_channels": input_channels(preprocessing),
        "receptive_field": field.as_dict(),
        "nf_extent": [list(extent[0]), list(extent[1])],
        "preprocessing": dict(preprocessing),
    }


# ----------------------------------------------------------------------------------------------
# per shard: the units' exemplars, Neuron Features and crops


def shard_top_n(rows: pd.DataFrame, images: pd.DataFrame, channels: np.ndarray, source) -> TopN:
    """The exemplars of `channels` in a top-N table (`rows`) as nefesi's TopN [U, n], best first, `image` a row of
    `images` (the image table of the target's manifests); a unit missing from the table or an image missing from
    the manifests is one line naming `source`."""
    rows = rows[rows["channel"].isin(channels)].sort_values(["channel", "rank"], kind="stable")
    counts = rows.groupby("channel").size().reindex(channels, fill_value=0).to_numpy()
    if not len(channels) or (counts == 0).any():
        raise AtlasError(
            f"top-N table {source} has no exemplars of units {channels[counts == 0].tolist()[:5]} (the shard asks "
            f"for {len(channels)} units from {channels.tolist()[:1]}; re-plan: the model's facts may be stale)"
        )
    if (counts != counts[0]).any():
        raise AtlasError(f"top-N table {source}: units hold {counts.min()} to {counts.max()} exemplars, not one count")
    known = pd.MultiIndex.from_frame(images[["dataset", "image_id"]].astype(str))
    image = known.get_indexer(pd.MultiIndex.from_frame(rows[["dataset", "image_id"]].astype(str)))
    if (image < 0).any():
        lost = rows.iloc[int(np.flatnonzero(image < 0)[0])]
        raise AtlasError(
            f"top-N table {source}: image {lost['image_id']!r} of dataset {lost['dataset']!r} is not in its "
            "manifest; re-run atlas_top_n"
        )

    def grid(values, dtype):
        return torch.as_tensor(np.array(values, dtype=dtype).reshape(len(channels), -1))

    return TopN(
        grid(rows["activation"], np.float32),
        grid(image, np.int64),
        grid(rows["y"], np.int64),
        grid(rows["x"], np.int64),
        (int(rows["map_h"].iloc[0]), int(rows["map_w"].iloc[0])),
    )


def display_size(size: tuple[int, int], pixels: int | None) -> tuple[int, int]:
    """(height, width) of a stored image: `size`, shrunk to at most `pixels` on its longer side (None: as is)."""
    height, width = size
    if pixels is None or max(height, width) <= pixels:
        return height, width
    scale = pixels / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def display_images(normalised: torch.Tensor, mean, std, pixels: int | None) -> np.ndarray:
    """Normalised images [R, K, h, w] as stored: uint8 sRGB [R, h', w', 3] (grey repeated for K = 1), shrunk by area
    averaging to at most `pixels` a side."""
    size = display_size(tuple(normalised.shape[-2:]), pixels)
    if size != tuple(normalised.shape[-2:]):
        normalised = F.interpolate(normalised, size=size, mode="area")
    return np.rint(nf_rgb(normalised, mean, std) * 255).astype(np.uint8)


@dataclass(frozen=True)
class _Slots:
    """The exemplar slots (flat c·n + rank indices into a TopN) of one block of images, with what a slot needs."""

    unit: np.ndarray  # [R] row of the shard
    rank: np.ndarray  # [R]
    local: np.ndarray  # [R] the slot's image in the block's decoded images
    y: np.ndarray  # [R] map row
    x: np.ndarray  # [R] map column
    weight: torch.Tensor  # [R] its NF weight


def _overlap(start: int, length: int, size: int) -> tuple[int, int, int, int] | None:
    """Crop indices [i0, i1) of a crop whose index i is image index start + i, that fall inside [0, size), and the
    image indices they read; None if none does."""
    first, last = max(0, -start), min(length, size - start)
    return (first, last, start + first, start + last) if first < last else None


def _add_to_features(nf: torch.Tensor, pictures: torch.Tensor, slots: _Slots, field, extent) -> None:
    """Add each slot's weighted crop to its unit's NF, one tensor op per map position: at a position every crop
    holds its image at the same place, and outside the image it holds 0 (the mean colour), which adds nothing."""
    (row0, row1), (col0, col1) = extent
    height, width = pictures.shape[-2:]
    for y, x in sorted(set(zip(slots.y.tolist(), slots.x.tolist(), strict=True))):
        members = np.flatnonzero((slots.y == y) & (slots.x == x))
        top, left, _, _ = field.box(y, x)
        rows, cols = _overlap(top + row0, row1 - row0, height), _overlap(left + col0, col1 - col0, width)
        if rows is None or cols is None:
            continue
        part = pictures[torch.as_tensor(slots.local[members]), :, rows[2] : rows[3], cols[2] : cols[3]]
        weighted = part * slots.weight[torch.as_tensor(members)].view(-1, 1, 1, 1)
        nf[:, :, rows[0] : rows[1], cols[0] : cols[1]].index_add_(0, torch.as_tensor(slots.unit[members]), weighted)


def neuron_features(
    top: TopN,
    decode: Callable[[np.ndarray], torch.Tensor],
    geometry: Mapping,
    *,
    shown: int,
    pixels: int | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Every unit's Neuron Feature (normalised [U, K, h, w], full size: what nefesi's probes compute) and its best
    `shown` crops (stored images [U, shown, h', w', 3], black past a unit's last exemplar).

    `decode(rows)` gives the images of those rows of the image table as the model saw them. Images are decoded in
    fixed blocks of the image table (IMAGES_PER_CHUNK rows), and within a block a unit's crops are added by map
    position, then image: the same order whatever other units the shard holds, so a unit's NF has the same bits in
    any shard. Shown crops are cut CROPS_PER_BLOCK at a time (nefesi's `field_crops`), so memory stays bounded."""
    field, extent = ReceptiveField.from_dict(geometry["receptive_field"]), geometry["nf_extent"]
    mean, std = geometry["preprocessing"]["mean"], geometry["preprocessing"]["std"]
    (row0, row1), (col0, col1) = extent
    units, n = top.values.shape
    nf = torch.zeros(units, geometry["input_channels"], row1 - row0, col1 - col0)
    crops = np.zeros((units, shown, *display_size((row1 - row0, col1 - col0), pixels), 3), dtype=np.uint8)
    image, ys, xs = (part.reshape(-1).numpy() for part in (top.image, top.y, top.x))
    weights = top.weights().reshape(-1)
    unit, rank = np.divmod(np.arange(units * n), n)
    needed = np.flatnonzero((weights > 0).numpy() | (rank < shown))  # a zero weight adds nothing to the NF
    needed = needed[np.argsort(image[needed], kind="stable")]
    block = image[needed] // IMAGES_PER_CHUNK
    for first, last in zip(*_runs(block), strict=True):
        chosen = needed[first:last]
        chunk = np.unique(image[chosen])
        pictures = decode(chunk).float()
        slots = _Slots(
            unit[chosen], rank[chosen], np.searchsorted(chunk, image[chosen]), ys[chosen], xs[chosen], weights[chosen]
        )
        _add_to_features(nf, pictures, slots, field, extent)
        best = np.flatnonzero(slots.rank < shown)
        for start in range(0, len(best), CROPS_PER_BLOCK):
            cut = best[start : start + CROPS_PER_BLOCK]
            normalised = field_crops(pictures, slots.local[cut], field, slots.y[cut], slots.x[cut], extent)
            crops[slots.unit[cut], slots.rank[cut]] = display_images(normalised, mean, std, pixels)
    return nf, crops


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[first, last) of each run of equal values in a sorted array."""
    edges = np.flatnonzero(np.diff(values)) + 1
    return np.concatenate([[0], edges]).astype(int), np.concatenate([edges, [len(values)]]).astype(int)


def exemplar_arrays(
    top: TopN,
    nf: torch.Tensor,
    crops: np.ndarray,
    images: pd.DataFrame,
    channels: np.ndarray,
    geometry: Mapping,
    pixels: int | None = None,
) -> dict[str, np.ndarray]:
    """The shard's exemplars.npz (the atlas's image evidence contract): channels [U]; nf [U, h, w, 3] and crops
    [U, k, h, w, 3] uint8 sRGB; each shown crop's activation [U, k] float32 (NaN past a unit's last exemplar),
    image_id and dataset [U, k] str ('' there)."""
    shown = crops.shape[1]
    kept = min(shown, top.n)
    picked = top.image[:, :kept].numpy()
    activation = np.full((len(channels), shown), np.nan, dtype=np.float32)
    activation[:, :kept] = top.values[:, :kept].numpy()
    image_id, dataset = (np.full((len(channels), shown), "", dtype=object) for _ in range(2))
    image_id[:, :kept] = images["image_id"].astype(str).to_numpy()[picked]
    dataset[:, :kept] = images["dataset"].astype(str).to_numpy()[picked]
    mean, std = geometry["preprocessing"]["mean"], geometry["preprocessing"]["std"]
    return {
        "channels": np.asarray(channels, dtype=np.int64),
        "nf": display_images(nf, mean, std, pixels),
        "crops": crops,
        "activation": activation,
        "image_id": image_id.astype(str),
        "dataset": dataset.astype(str),
    }


def exemplar_summary(top: TopN, images: pd.DataFrame, channels: np.ndarray, datasets: Sequence[str]) -> pd.DataFrame:
    """The shard's exemplars.parquet, one row per unit: its best exemplar's activation, how many of its exemplars
    have a positive activation (those its NF averages: `n_exemplars`) and which share of them comes from each
    dataset (`exemplar_share.<dataset>`, summing to 1; NaN for a unit with none, a dead unit)."""
    positive = (top.values > 0).numpy()
    dataset_of = images["dataset"].astype(str).to_numpy()[top.image.numpy()]
    count = positive.sum(axis=1)
    table = {
        "channel": np.asarray(channels, dtype=np.int64),
        "top_activation": top.values[:, 0].numpy(),
        "n_exemplars": count.astype(np.int64),
    }
    for dataset in datasets:
        from_dataset = ((dataset_of == dataset) & positive).sum(axis=1)
        table[f"exemplar_share.{dataset}"] = np.where(count > 0, from_dataset / np.maximum(count, 1), np.nan)
    return pd.DataFrame(table)
