"""What a unit page shows beside its row of the layer table, read from the other stages' files: the shards' exemplar
images (exemplars.npz), the unit's IoU with every concept (the dissection's tallies.npz) and the report's studies
that single the unit out (their section.json files). Each reader checks its file and says in one line what is wrong.

exemplars.npz, per shard (written by the atlas's exemplar stage): `channels` int [U]; `nf` uint8 [U, h, w, 3], each
unit's Neuron Feature; `crops` uint8 [U, k, h, w, 3], its top-k exemplar crops, best first; `activation` float [U, k];
`image_id` and `dataset` str [U, k], where each crop comes from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from unitscope.report.sections import read_section, unit_page_name
from unitscope.studies.atlas.inputs import AtlasError

EXEMPLAR_ARRAYS = ("channels", "nf", "crops", "activation", "image_id", "dataset")


@dataclasses.dataclass(frozen=True)
class ShardExemplars:
    """One shard's exemplar images, as exemplars.npz holds them (unit i is channels[i])."""

    channels: np.ndarray
    nf: np.ndarray
    crops: np.ndarray
    activation: np.ndarray
    image_id: np.ndarray
    dataset: np.ndarray


def _check_exemplars(arrays: Mapping[str, np.ndarray], path) -> None:
    n_units = len(arrays["channels"])
    if arrays["nf"].ndim != 4 or arrays["nf"].shape[-1] != 3 or arrays["nf"].dtype != np.uint8:
        raise AtlasError(f"{path}: 'nf' is {arrays['nf'].dtype} {arrays['nf'].shape}; expected uint8 [U, h, w, 3]")
    if arrays["crops"].ndim != 5 or arrays["crops"].shape[-1] != 3 or arrays["crops"].dtype != np.uint8:
        raise AtlasError(
            f"{path}: 'crops' is {arrays['crops'].dtype} {arrays['crops'].shape}; expected uint8 [U, k, h, w, 3]"
        )
    k = arrays["crops"].shape[1]
    for key, shape in (
        ("nf", (n_units,)),
        ("crops", (n_units, k)),
        ("activation", (n_units, k)),
        ("image_id", (n_units, k)),
        ("dataset", (n_units, k)),
    ):
        if arrays[key].shape[: len(shape)] != shape:
            raise AtlasError(f"{path}: '{key}' has shape {arrays[key].shape}; expected {shape}... for {n_units} units")


def read_exemplars(path: str | os.PathLike) -> ShardExemplars:
    """A shard's exemplars.npz, checked against the contract above."""
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in EXEMPLAR_ARRAYS if key not in data.files]
        if missing:
            raise AtlasError(f"{path}: exemplar file lacks {', '.join(missing)} (has {', '.join(data.files)})")
        arrays = {key: data[key] for key in EXEMPLAR_ARRAYS}
    _check_exemplars(arrays, path)
    arrays["channels"] = arrays["channels"].astype(np.int64)
    return ShardExemplars(**arrays)


@dataclasses.dataclass(frozen=True)
class ConceptProfiles:
    """Every unit's IoU with every concept of the dissection (`iou` [units, concepts]), the concepts' names and
    categories (columns of `iou`)."""

    iou: np.ndarray
    names: np.ndarray
    categories: np.ndarray

    def top(self, channel: int, n: int) -> list[dict]:
        """The unit's `n` concepts of highest IoU, highest first (ties in concept order, as the dissection ranks);
        only concepts it overlaps (IoU > 0): none for a unit whose mask is empty (the dissection's table names no
        concept for it)."""
        row = self.iou[channel]
        order = [c for c in np.argsort(-row, kind="stable")[:n] if row[c] > 0]
        return [
            {"concept": str(self.names[c]), "category": str(self.categories[c]), "iou": float(row[c])} for c in order
        ]


def concept_profiles(path: str | os.PathLike, layer: str) -> ConceptProfiles:
    """The layer's IoU table from the dissection's tallies file, computed as the dissection computes it
    (`dissect.iou_from_counts`; torch is imported only here, for that module)."""
    from unitscope.studies.dissection.dissect import iou_from_counts
    from unitscope.studies.dissection.outputs import load_tallies

    tallies = load_tallies(path)
    keys = [
        f"{layer}/intersection",
        f"{layer}/unit_area",
        f"{layer}/label_area",
        "concept_codes",
        "concept_names",
        "concept_categories",
        "categories",
    ]
    missing = [key for key in keys if key not in tallies]
    if missing:
        raise AtlasError(f"{path}: the dissection's tallies lack {', '.join(missing)} (does it dissect {layer!r}?)")
    intersection = tallies[f"{layer}/intersection"]
    categories = [str(c) for c in tallies["categories"]]
    code_category = np.full(intersection.shape[1], -1, dtype=np.int64)  # as dissect.concept_lookup builds it
    code_name = np.full(intersection.shape[1], "", dtype=object)
    code_group = np.full(intersection.shape[1], "", dtype=object)
    for code, name, category in zip(
        tallies["concept_codes"], tallies["concept_names"], tallies["concept_categories"], strict=True
    ):
        code_category[code], code_name[code], code_group[code] = categories.index(str(category)), name, category
    iou = iou_from_counts(intersection, tallies[f"{layer}/unit_area"], tallies[f"{layer}/label_area"], code_category)
    concepts = np.flatnonzero(code_category >= 0)
    return ConceptProfiles(iou[:, concepts], code_name[concepts], code_group[concepts])


def study_mentions(sections: Sequence[str | os.PathLike], model: str, layer: str) -> dict[int, list[dict]]:
    """Per channel of the layer, the studies whose section lists the unit (in the sections' order): the study's
    name and title, what it says about the unit (`facts`) and the unit's page in the report (results/report/units/)."""
    mentions: dict[int, list[dict]] = {}
    for path in sections:
        section = read_section(path)
        for unit in section["units"]:
            if unit.get("model") != model or unit.get("layer") != layer:
                continue
            channel = int(unit["channel"])
            entries = mentions.setdefault(channel, [])
            if any(entry["study"] == section["study"] for entry in entries):
                continue  # a study that lists a unit twice is one mention
            entries.append(
                {
                    "study": section["study"],
                    "title": section["title"],
                    "facts": {str(k): str(v) for k, v in (unit.get("facts") or {}).items()},
                    "page": unit_page_name(model, layer, channel),
                }
            )
    return mentions
