"""The atlas's stages: the entry point of every rule of rules/atlas.smk, and nothing else.

The lesion, index (nefesi's probes) and actmax stages run the network, the top-N stage builds it for the receptive
field and the exemplar stage cuts crops with torch (all imported inside them); the category, gather and index-page
stages read tables and arrays, so their jobs start without torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.fsutil import write_json, write_npz, write_parquet
from unitscope.studies.atlas.categories import category_table
from unitscope.studies.atlas.gather import layer_table
from unitscope.studies.atlas.inputs import AtlasError, class_indexes, read_layer_images

if TYPE_CHECKING:  # annotations only: a stage's settings arrive as params, so plan.py is no code input
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef
    from unitscope.studies.atlas.pages import PageSettings
    from unitscope.studies.atlas.plan import (
        ActmaxSettings,
        CategoriesSettings,
        ExemplarsSettings,
        GatherSettings,
        IndexesSettings,
        LesionSettings,
        TopNSettings,
    )


def _shard_channels(settings, n_read: int) -> np.ndarray:
    if n_read != settings.stop - settings.start:
        raise AtlasError(
            f"{settings.model} {settings.layer!r} has {settings.start + n_read} channels in its stores; the shard asks "
            f"for units {settings.start}-{settings.stop - 1} (re-plan: the model's facts may be stale)"
        )
    return np.arange(settings.start, settings.stop, dtype=np.int64)


def run_categories(
    settings: CategoriesSettings,
    *,
    stores: Sequence[str],
    manifests: Sequence[str],
    out_table: str | os.PathLike,
) -> pd.DataFrame:
    """The shard's units' mean activation per dataset, shared category and label, with 95% bootstrap intervals."""
    s, clock = settings, time.perf_counter()
    images = read_layer_images(s.datasets, stores, manifests, s.layer, slice(s.start, s.stop))
    channels = _shard_channels(s, images.means.shape[1])
    table = category_table(images, s.categories, channels, n_bootstrap=s.n_bootstrap, seed=s.seed)
    write_parquet(table, out_table)
    seconds = time.perf_counter() - clock
    print(f"categories: {len(channels)} units x {len(images.means)} images in {seconds:.2f} s", flush=True)
    return table


def run_lesion(
    settings: LesionSettings,
    model: ModelRef,
    *,
    stores: Sequence[str],
    manifests: Sequence[str],
    out_table: str | os.PathLike,
    run: RunSettings | None = None,
) -> pd.DataFrame:
    """Each unit of the shard lesioned alone through the network after the layer (see `atlas.lesion`)."""
    from unitscope.interventions.conditions import ablation_fill
    from unitscope.interventions.tail import build_tail, layer_cache
    from unitscope.models.registry import load_model
    from unitscope.runtime import RunSettings, inference_copy, pick_device
    from unitscope.studies.atlas import lesion as le

    run, s, clock = run or RunSettings(), settings, time.perf_counter()
    device = pick_device(run.device)
    network = inference_copy(load_model(model), keep={s.layer}).to(device)  # BatchNorm folded
    tail = build_tail(network, s.layer, model.name)
    images = read_layer_images(s.datasets, stores, manifests, s.layer)
    channels = _shard_channels(s, min(images.means.shape[1], s.stop) - s.start)
    loading = {"batch_size": run.batch_size, "num_workers": run.num_workers, "device": device}
    manifest_of = dict(zip(s.datasets, manifests, strict=True))
    preprocessing = model.spec["preprocessing"]
    cache, means = layer_cache(network, tail, images.means, images.image_id, manifest_of, preprocessing, **loading)
    fill = ablation_fill(s.ablation, means, "atlas.ablation")
    classes = {
        d: class_indexes(images.labels[images.rows(d)], f"dataset {d} (atlas.targets[].labelled)") for d in s.labelled
    }
    outputs = le.lesion_outputs(tail, cache, fill, channels, device=device)
    table = le.lesion_table(outputs, le.LesionImages(s.datasets, images.dataset, classes), channels)
    write_parquet(table, out_table)
    seconds = time.perf_counter() - clock
    print(f"lesions: {len(channels)} units in {seconds:.2f} s ({len(channels) / seconds:.1f} units/s)", flush=True)
    return table


def run_top_n(
    settings: TopNSettings,
    model: ModelRef,
    *,
    stores: Sequence[str],
    manifests: Sequence[str],
    out_table: str | os.PathLike,
    out_geometry: str | os.PathLike,
) -> pd.DataFrame:
    """The layer's top-N table (results/atlas/<model>/<layer>/top_n.parquet: every unit's exemplars) and its
    geometry (top_n.json), from the peaks the extraction pass stored for every image of the target's datasets (one
    store per dataset; see `atlas.exemplars`). The model is built only for the units' receptive field."""
    from unitscope.models.preprocessing import input_channels, input_size
    from unitscope.models.receptive_field import layer_receptive_field
    from unitscope.models.registry import load_model, resolve_layer
    from unitscope.studies.atlas import exemplars as ex
    from unitscope.studies.nefesi.images import image_table
    from unitscope.studies.nefesi.topn import read_layer_peaks

    s, clock = settings, time.perf_counter()
    network = load_model(model)
    preprocessing = model.spec["preprocessing"]
    resolve_layer(network, s.layer, model.name)
    # a layer without a spatial map has no field, and fails here
    field = layer_receptive_field(network, s.layer, input_size(preprocessing), channels=input_channels(preprocessing))
    images = image_table(dict(zip(s.datasets, manifests, strict=True)))
    top = read_layer_peaks(images, s.datasets, stores, s.layer).top_n(s.top_n)
    table = ex.top_n_table(top, images)
    write_parquet(table, out_table)
    write_json(ex.geometry_record(field, top, preprocessing, images, model=model.name, layer=s.layer), out_geometry)
    seconds = time.perf_counter() - clock
    print(f"top-{top.n}: {top.channels} units x {len(images)} images (stored peaks) in {seconds:.2f} s", flush=True)
    return table


def run_actmax(
    settings: ActmaxSettings,
    model: ModelRef,
    *,
    out_images: str | os.PathLike,
    out_table: str | os.PathLike,
    run: RunSettings | None = None,
) -> pd.DataFrame:
    """The shard's units' activation-maximisation images, optimised together (see `atlas.actmax`)."""
    from unitscope.models.registry import load_model
    from unitscope.runtime import RunSettings, pick_device
    from unitscope.studies.atlas.actmax import shard_actmax, write_shard_actmax

    s, run = settings, run or RunSettings()
    device = pick_device(run.device)
    network = load_model(model).to(device)
    result = shard_actmax(
        network, model.spec["preprocessing"], s.layer, range(s.start, s.stop), seeds=s.seeds, steps=s.steps,
        lr=s.lr, parameterization=s.parameterization, l2=s.l2, tv=s.tv, optimize_at=s.optimize_at,
        model_name=model.name, device=device, progress=True,
    )  # fmt: skip
    table = write_shard_actmax(result, out_images, out_table)
    units = s.stop - s.start
    print(
        f"actmax: {units} units x {s.seeds} seeds, {s.steps} steps ({result.parameterization}) in "
        f"{result.seconds:.1f} s ({units / result.seconds:.2f} units/s)",
        flush=True,
    )
    return table


def run_exemplars(
    settings: ExemplarsSettings,
    *,
    table: str | os.PathLike,
    geometry: str | os.PathLike,
    manifests: Sequence[str],
    out_images: str | os.PathLike,
    out_table: str | os.PathLike,
) -> pd.DataFrame:
    """The shard's Neuron Features and best crops (exemplars.npz) and its per-unit exemplar table (exemplars.parquet),
    from the layer's top-N table."""
    from unitscope.studies.atlas import exemplars as ex
    from unitscope.studies.nefesi.images import image_table, model_inputs

    s, clock = settings, time.perf_counter()
    layout = json.loads(Path(geometry).read_text())
    images = image_table(dict(zip(s.datasets, manifests, strict=True)))
    channels = np.arange(s.start, s.stop, dtype=np.int64)
    rows = pd.read_parquet(table, filters=[("channel", ">=", s.start), ("channel", "<", s.stop)])
    top = ex.shard_top_n(rows, images, channels, table)
    decode = lambda which: model_inputs(images.iloc[which], layout["preprocessing"])  # noqa: E731 - as the pass saw them
    nf, crops = ex.neuron_features(top, decode, layout, shown=s.shown, pixels=s.pixels)
    write_npz(ex.exemplar_arrays(top, nf, crops, images, channels, layout, s.pixels), out_images)
    summary = ex.exemplar_summary(top, images, channels, s.datasets)
    write_parquet(summary, out_table)
    seconds = time.perf_counter() - clock
    print(
        f"exemplars: {len(channels)} units, top-{top.n}, NF {tuple(nf.shape[-2:])} px, in {seconds:.2f} s "
        f"({len(channels) / seconds:.1f} units/s)",
        flush=True,
    )
    return summary


def run_indexes(
    settings: IndexesSettings,
    model: ModelRef,
    *,
    table: str | os.PathLike,
    manifests: Sequence[str],
    out_table: str | os.PathLike,
    run: RunSettings | None = None,
) -> pd.DataFrame:
    """nefesi's indexes of the shard's units (see `atlas.indexes`), from the layer's top-N table; the network runs only
    for the colour, orientation and symmetry probes."""
    from unitscope.models.preprocessing import build_transform, input_size
    from unitscope.runtime import RunSettings, pick_device
    from unitscope.studies.atlas import exemplars as ex
    from unitscope.studies.atlas.indexes import probe_transforms, shard_indexes
    from unitscope.studies.nefesi.images import image_table
    from unitscope.studies.nefesi.probes import manifest_batches

    run, s, clock = run or RunSettings(), settings, time.perf_counter()
    device, preprocessing = pick_device(run.device), model.spec["preprocessing"]
    images = image_table(dict(zip(s.datasets, manifests, strict=True)), label_names=dict(s.label_names))
    channels = np.arange(s.start, s.stop, dtype=np.int64)
    rows = pd.read_parquet(table, filters=[("channel", ">=", s.start), ("channel", "<", s.stop)])
    top = ex.shard_top_n(rows, images, channels, table)
    probed = len(probe_transforms(s.kinds, s.definitions["rotation_step"], s.definitions["color_grey"])) > 1
    network = _probe_network(model, s.layer, device) if probed else None
    batches = manifest_batches(images, build_transform(preprocessing), num_workers=run.num_workers) if probed else None
    result = shard_indexes(
        network, s.layer, top, channels, images, batches, kinds=s.kinds, settings=s.definitions,
        image_size=input_size(preprocessing), mean=preprocessing["mean"], std=preprocessing["std"], device=device,
    )  # fmt: skip
    write_parquet(result, out_table)
    seconds = time.perf_counter() - clock
    print(
        f"indexes ({', '.join(s.kinds)}): {len(channels)} units, top-{top.n}, in {seconds:.2f} s "
        f"({len(channels) / seconds:.2f} units/s)",
        flush=True,
    )
    return result


def _probe_network(model: ModelRef, layer: str, device):
    """The network nefesi's probes run: BatchNorm folded, channels-last (their identity check compares its activations
    with the stored peaks the exemplars were sorted by, to float rounding)."""
    from unitscope.models.registry import load_model
    from unitscope.runtime import inference_copy

    return inference_copy(load_model(model), keep={layer}).to(device)


def run_gather(
    settings: GatherSettings,
    *,
    evidence: Mapping[str, Sequence[str]],
    nefesi: Sequence[str] = (),
    dissection: Sequence[str] = (),
    out_table: str | os.PathLike,
) -> pd.DataFrame:
    """The layer's table (results/atlas/<model>/<layer>/units.parquet): one row per unit, every evidence column."""
    s = settings
    table = layer_table(
        s.model,
        s.layer,
        s.channels,
        evidence=dict(evidence),
        nefesi=nefesi[0] if s.nefesi and nefesi else None,
        dissection=dissection[0] if s.dissection and dissection else None,
    )
    write_parquet(table, out_table)
    print(f"{s.model} {s.layer}: {len(table)} units, {table.shape[1]} columns", flush=True)
    return table


def run_pages(
    settings: PageSettings,
    *,
    table: str | os.PathLike,
    out_path: str | os.PathLike,
    units_dir: str | os.PathLike | None = None,
    exemplars: Sequence[str] = (),
    tallies: Sequence[str] = (),
    sections: Sequence[str] = (),
    actmax: Sequence[str] = (),
) -> int:
    """The layer's browsable page (results/atlas/<model>/<layer>/index.html): every unit, sortable and filterable;
    and every unit's page (units/<channel>.html) with its exemplar images (the shards' exemplars.npz), its IoU profile
    (the dissection's tallies.npz, when it dissects the layer) and the report's studies that single it out."""
    from unitscope.studies.atlas.pages import write_layer_page
    from unitscope.studies.atlas.unit_page import LayerSources

    clock = time.perf_counter()
    sources = LayerSources(
        exemplars=list(exemplars), tallies=tallies[0] if tallies else None, sections=list(sections), actmax=list(actmax)
    )
    n_units = write_layer_page(table, settings, out_path, units_dir=units_dir, sources=sources)
    print(
        f"{settings.model} {settings.layer}: index and {n_units} unit pages ({len(sources.exemplars)} exemplar files, "
        f"{'an' if sources.tallies else 'no'} IoU profile, {len(sources.sections)} sections) in "
        f"{time.perf_counter() - clock:.2f} s",
        flush=True,
    )
    return n_units


def run_index(*, tables: Sequence[str], out_path: str | os.PathLike) -> dict:
    """results/atlas/index.json: each layer table's model, layer, unit count and columns (what later pages list)."""
    layers = []
    for path in tables:
        table = pd.read_parquet(path)
        model, layer = (str(table[key].iloc[0]) if len(table) else None for key in ("model", "layer"))
        columns = [str(column) for column in table.columns]
        layers.append({"model": model, "layer": layer, "units": len(table), "table": str(path), "columns": columns})
    index = {"layers": layers, "units": sum(layer["units"] for layer in layers)}
    write_json(index, out_path)
    return index


def run_settings(config: Mapping) -> RunSettings:
    """The lesion, top-N and exemplar jobs' run-only settings: extraction's (device, loader workers), with
    atlas.batch_size if set."""
    import dataclasses

    from unitscope.runtime import RunSettings

    run = RunSettings.from_config(config)
    batch_size = config.get("atlas", {}).get("batch_size")
    return dataclasses.replace(run, batch_size=batch_size) if batch_size else run
