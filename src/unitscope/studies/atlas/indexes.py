"""The atlas's selectivity-index evidence: nefesi's four indexes (colour, orientation, symmetry, class) for the units
of a shard, with nefesi's definitions and code (`studies.nefesi.probes`, `studies.nefesi.indexes`), from the layer's
top-N table (`atlas_top_n`), for a target layer the nefesi study does not analyse (where it does, the atlas joins
nefesi's own table instead).

What each index costs differs by orders of magnitude, so a target names the ones it wants (`INDEX_KINDS`):

* class: the activation-weighted class frequencies of the unit's exemplars; no network, only the top-N table and the
  images' classes;
* colour, symmetry, orientation: the exemplar crops re-run through the network under 1 grey, 4 mirror and
  360/step − 1 rotation transforms (nefesi's probes, batched over the job's units and sharing probes between units
  whose crops coincide). A layer whose units see the whole image (MobileNetV2 `features.18`) probes whole images:
  one full forward pass per exemplar image and transform, whichever units share the image, so by default one job
  covers the layer (`atlas.index_units_per_shard`: the 1,280 units of `features.18`, class and colour, in 51 s; five
  256-unit shards would probe most images five times). The probes cut no Neuron Features (the exemplar
  stage shows each unit's), so the NF's colour names and preferred angle are left out (None / NaN) of this table;
  nefesi's own table has them where it analyses the layer.

The indexes run over the atlas's `top_n` exemplars (nefesi's own layers: `nefesi.top_n`); the other definitions
(grey, rotation step, class-index scale, coverage, population threshold) are the nefesi study's settings, so a unit's
index means the same in the atlas as in the nefesi section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from unitscope.studies.atlas.inputs import AtlasError
from unitscope.studies.nefesi.indexes import class_columns, selectivity_table
from unitscope.studies.nefesi.probes import GREY_KINDS, ImageBatches, probe_layer, transforms
from unitscope.studies.nefesi.topn import TopN

INDEX_KINDS = ("colour", "orientation", "symmetry", "class")
PROBED = {"colour": set(GREY_KINDS.values()), "orientation": {"rotate"}, "symmetry": {"mirror"}}
# the columns a shard writes: those of nefesi's table that the layer table keeps (atlas.gather.NEFESI_COLUMNS)
CLASS_COLUMNS = ("class_index", "top_class", "top_class_share", "population_code")


def probe_transforms(kinds: Sequence[str], rotation_step: float, color_grey: str):
    """nefesi's transforms that the indexes `kinds` need: the identity first, then grey, rotations, mirrors as asked."""
    unknown = sorted(set(kinds) - set(INDEX_KINDS))
    if unknown:
        raise AtlasError(f"atlas indexes: unknown {', '.join(unknown)} (known: {', '.join(INDEX_KINDS)})")
    wanted = set().union(*(PROBED[kind] for kind in kinds if kind in PROBED))
    return [t for t in transforms(rotation_step, color_grey) if t.kind == "identity" or t.kind in wanted]


def class_table(
    top: TopN, channels: np.ndarray, class_codes: np.ndarray, class_names: list[str], settings: Mapping
) -> pd.DataFrame:
    """The class index and what it rests on, per unit of the shard, without running the network."""
    present = top.image >= 0
    columns = class_columns(
        top,
        class_codes,
        class_names,
        coverage=settings["class_coverage"],
        population=settings["population_threshold"],
        scale=settings["class_index_scale"],
    )
    dead = ~(torch.where(present, top.values, torch.zeros(())).clamp(min=0).sum(dim=1) > 0)
    best = top.values[:, 0].numpy()
    return pd.DataFrame({"channel": channels, "dead": dead.numpy(), "top_activation": best, **columns})


def shard_indexes(
    network: torch.nn.Module | None,
    layer: str,
    top: TopN,
    channels: np.ndarray,
    images: pd.DataFrame,
    batches: ImageBatches | None,
    *,
    kinds: Sequence[str],
    settings: Mapping,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """One row per unit of the shard (`channels`, the rows of `top`): the indexes `kinds`, NaN for the others. images:
    the image table `top.image` indexes (its `class` column); settings: the nefesi study's definitions (rotation_step,
    color_grey, class_index_scale, class_coverage, population_threshold, color_name_share)."""
    codes, names = pd.factorize(images["class"], sort=True)
    names = [str(name) for name in names]
    probed = probe_transforms(kinds, settings["rotation_step"], settings["color_grey"])
    if len(probed) == 1:  # the class index alone: no probes
        table = class_table(top, channels, codes, names, settings)
        return table if "class" in kinds else table.assign(**{c: np.nan for c in CLASS_COLUMNS})
    probes = probe_layer(
        network, layer, top, batches, image_size=image_size, mean=mean, std=std,
        rotation_step=settings["rotation_step"], color_grey=settings["color_grey"], device=device,
        transform_list=probed, channel_ids=channels, neuron_features=False,
    )  # fmt: skip
    table = selectivity_table(
        top, probes, codes, names, mean=mean, std=std, class_coverage=settings["class_coverage"],
        population_threshold=settings["population_threshold"], color_name_share=settings["color_name_share"],
        class_index_scale=settings["class_index_scale"], channels=channels,
    )  # fmt: skip
    if "class" not in kinds:
        table[list(CLASS_COLUMNS)] = np.nan
    return table
