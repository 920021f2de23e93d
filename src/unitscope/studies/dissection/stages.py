"""The dissection study's stages: the entry points its workflow scripts call, and nothing else.

`run_dissection` (one model, all its configured layers) and `run_rotation` (one layer, rotated units) make
one forward pass over the concept images for all their layers, keep the maps and the labels in disk caches in
a temporary folder beside their outputs (`caches`), and remove the folder when done, also on failure.
`run_unit_figures` draws one layer's units; `run_section` draws the summary figures and writes the section.
Each takes its rule's settings object (studies.dissection.plan) and, where a model is built, its `ModelRef`;
`batch_size` (`dissection.batch_size`) is run-only and changes no result.

The stages that run the network or upsample maps (dissection, rotation, unit figures) import their modules
inside the function: torch and torchvision take seconds to import, and the section stage never needs them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from unitscope.data.concepts import mask_shape
from unitscope.fsutil import write_parquet
from unitscope.report.sections import write_section
from unitscope.studies.dissection.figures import depth_figure, rotation_figure, top_units_figure, write_unit_images
from unitscope.studies.dissection.outputs import load_tallies, read_tables, write_tallies
from unitscope.studies.dissection.section import STUDY, TITLE, build_section, relative_figure
from unitscope.studies.dissection.units import check_unit_images

if TYPE_CHECKING:  # annotations only: a stage's settings arrive as params, so plan.py is no code input
    from unitscope.settings import ModelRef
    from unitscope.studies.dissection.plan import DissectSettings, RotationSettings, SectionSettings, UnitFigureSettings


def run_dissection(
    settings: DissectSettings,
    model: ModelRef,
    *,
    units_path,
    layers_path,
    tallies_path,
    batch_size: int = 16,
    device: str = "auto",
) -> pd.DataFrame:
    """The dissection stage for one model: every configured layer against the concept dataset; the forward pass on
    `device` (extraction.device; run-only), and so are the tallies (the thresholds' quantiles on the CPU).

    Writes the unit table and the layer table (parquet) and an npz holding, per layer, the summed
    counts, the thresholds, and each unit's top-`top_images` images with their activation maps (figures).
    """
    # torch and torchvision: only the stages that run the network import them
    from unitscope.runtime import pick_device
    from unitscope.studies.dissection.caches import open_inputs
    from unitscope.studies.dissection.layer_dissection import concept_arrays, dissect_network

    on = pick_device(device)  # an unusable device is the first error, before anything is read
    layers = list(settings.layers)
    concepts, network = open_inputs(model, layers, settings.concepts, settings.seed)
    network = network.to(on)
    shape = mask_shape(concepts.label_size, settings.mask_size)
    print(f"dissecting {model.name} {layers} on {concepts.describe()}; masks {shape[0]}x{shape[1]}", flush=True)
    units_path = Path(units_path)
    units_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=units_path.parent, prefix=".cache-") as tmp:
        results = dissect_network(
            network,
            concepts,
            layers,
            model.spec["preprocessing"],
            model_name=model.name,
            shape=shape,
            quantile=settings.quantile,
            iou_threshold=settings.iou_threshold,
            top_k=settings.top_images,
            seed=settings.seed,
            folder=Path(tmp),
            batch_size=batch_size,
        )
    units = pd.concat([result.units for result in results], ignore_index=True)
    write_parquet(units, units_path)
    write_parquet(pd.DataFrame([result.row for result in results]), layers_path)
    arrays = {key: value for result in results for key, value in result.arrays.items()}
    write_tallies(tallies_path, {**arrays, **concept_arrays(concepts, shape)})
    return units


def run_rotation(
    settings: RotationSettings,
    model: ModelRef,
    *,
    out_path,
    batch_size: int = 16,
    device: str = "auto",
    threads: int = 1,
) -> pd.DataFrame:
    """The rotation experiment: dissect the units Q^alpha A of one layer, per alpha and seed (see `rotation`); the
    forward pass and the tallies on `device` (extraction.device; run-only), the rotations on the CPU, `threads`
    dissections at a time (the job's threads)."""
    # torch, torchvision and scipy: only the stages that run the network import them
    from unitscope.runtime import pick_device
    from unitscope.studies.dissection.caches import open_inputs
    from unitscope.studies.dissection.rotation import rotate_network

    on = pick_device(device)  # an unusable device is the first error, before anything is read
    layer, alphas = settings.layer, list(settings.alphas)
    concepts, network = open_inputs(model, [layer], settings.concepts, settings.seed)
    network = network.to(on)
    shape = mask_shape(concepts.label_size, settings.mask_size)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".cache-") as tmp:
        rows = rotate_network(
            network,
            concepts,
            layer,
            model.spec["preprocessing"],
            model_name=model.name,
            shape=shape,
            alphas=alphas,
            seeds=settings.seeds,
            quantile=settings.quantile,
            iou_threshold=settings.iou_threshold,
            seed=settings.seed,
            folder=Path(tmp),
            batch_size=batch_size,
            workers=threads,
        )
    table = pd.DataFrame([{"model": model.name, "layer": layer, **row} for row in rows])
    write_parquet(table, out_path)
    return table


def run_unit_figures(
    settings: UnitFigureSettings, *, model: str, layer: str, units_path, tallies_path, out_path, images_dir
) -> list[str]:
    """The figure of the top `figure_units` units of `model`'s `layer` (out_path) and the directory of its study
    units' figures (images_dir); returns the latter's file names."""
    from unitscope.studies.dissection.caches import open_concept_source  # torch: the figures upsample maps

    concepts = open_concept_source(settings.concepts, settings.seed)
    units, tallies = pd.read_parquet(units_path), load_tallies(tallies_path)
    top_units_figure(units, tallies, concepts, model=model, layer=layer, n_units=settings.figure_units, path=out_path)
    names = write_unit_images(
        units, tallies, concepts, model=model, layer=layer, quantile=settings.quantile, out_dir=images_dir
    )
    print(f"{model} {layer}: {len(names)} unit figures in {images_dir}", flush=True)
    return names


def run_section(
    settings: SectionSettings,
    *,
    layer_paths,
    unit_paths,
    tallies_path,
    rotation_path,
    depth_figure_path,
    rotation_figure_path,
    unit_figures,
    unit_image_dirs,
    out_path,
) -> dict:
    """Draw the depth (and, with a rotation table, the rotation) figure and write the section. `unit_figures`
    and `unit_image_dirs` map "<model>/<layer>" to that layer's figure of top units and to the folder of its
    per-unit figures, which must hold exactly one figure per unit the section lists. Figure paths in the
    section are relative to results/report/."""
    layers, units = read_tables(layer_paths), read_tables(unit_paths)
    rotation = pd.read_parquet(rotation_path) if rotation_path else None
    tallies = load_tallies(tallies_path)
    depth_figure(layers, [str(c) for c in tallies["categories"]], len(tallies["image_ids"]), depth_figure_path)
    figures = {"depth": relative_figure(depth_figure_path), "rotation": None}
    if rotation is not None:
        rotation_figure(rotation, rotation_figure_path)
        figures["rotation"] = relative_figure(rotation_figure_path)
    figures["units"] = {key: relative_figure(path) for key, path in unit_figures.items()}
    parts = build_section(
        layers=layers,
        units=units,
        tallies=tallies,
        rotation=rotation,
        settings=settings,
        figures=figures,
        unit_images={key: relative_figure(path) for key, path in unit_image_dirs.items()},
    )
    check_unit_images(parts["units"], unit_image_dirs)
    return write_section(out_path, study=STUDY, title=TITLE, **parts)
