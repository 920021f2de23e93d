"""The nefesi study's stages: one `run_*` function per rule of rules/nefesi.smk, called by its workflow script
(workflow/scripts/nefesi_*.py). Each reads its inputs, calls the modules that compute (`topn`, `probes`,
`indexes`, `hierarchy`, `decomposition`, `units`, `section`) and draw (`figures`), and writes its outputs.

The stages that run the network or crop images with it (top-N, layer, decomposition, section) import those
modules inside the function: torch and torchvision take seconds to import, and the figure stages never need them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from unitscope.fsutil import atomic_path, write_parquet
from unitscope.report.sections import write_section
from unitscope.studies.nefesi import section
from unitscope.studies.nefesi.figures import draw_decomposition, draw_hierarchy, draw_histograms, draw_layer_figures
from unitscope.studies.nefesi.hierarchy import (
    hierarchy_frame,
    hierarchy_matrices,
    hierarchy_root,
    hierarchy_tree,
    hierarchy_weights,
)
from unitscope.studies.nefesi.storage import read_json, read_nf, write_json, write_nf

if TYPE_CHECKING:  # annotations only: a stage's settings arrive as params, so plan.py is no code input
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef
    from unitscope.studies.nefesi.plan import (
        DecompositionSettings,
        LayerFiguresSettings,
        LayerSettings,
        ModelFiguresSettings,
        SectionSettings,
        TopNSettings,
    )


def run_top_n(
    settings: TopNSettings,
    *,
    manifests: dict[str, str],
    stores: Sequence[str],
    out_exemplars,
    out_images,
) -> None:
    """The top-N exemplars of every channel of every layer of the target, from the peaks the extraction's one pass
    per (model, dataset) stored (no forward pass of its own). manifests: {dataset: its manifest path}, the datasets
    of `settings`; stores: layer-major, every dataset's store of the first layer of `settings.layers`, then of the
    second, ... (rules/nefesi.smk's NEFESI_STORES)."""
    from unitscope.studies.nefesi.errors import NefesiError
    from unitscope.studies.nefesi.images import image_table
    from unitscope.studies.nefesi.topn import exemplar_frame, read_layer_peaks

    images = image_table(
        manifests, max_images=settings.max_images, class_by=settings.class_by, label_names=settings.label_names
    )
    print(f"top-{settings.top_n}: {len(images)} images ({', '.join(manifests)}), layers {', '.join(settings.layers)}")
    per_layer = len(settings.datasets)
    if len(stores) != per_layer * len(settings.layers):
        raise NefesiError(f"top-N: {len(stores)} stores for {len(settings.layers)} layers x {per_layer} datasets")
    tops = {}
    for i, layer in enumerate(settings.layers):
        peaks = read_layer_peaks(images, settings.datasets, stores[i * per_layer : (i + 1) * per_layer], layer)
        tops[layer] = peaks.top_n(settings.top_n)
    write_parquet(images, out_images)
    write_parquet(exemplar_frame(tops), out_exemplars)


def run_layer(
    settings: LayerSettings,
    model: ModelRef,
    *,
    exemplars_path,
    images_path,
    out_table,
    out_nf,
    out_hierarchy,
    out_info,
    run: RunSettings | None = None,
    probe_batch_size: int = 256,
) -> pd.DataFrame:
    """Probes, Neuron Features, the index table and the hierarchy weights of one layer. `probe_batch_size` probe
    windows per forward pass (nefesi.probe_batch_size; like `run`, it changes no result; `run` None: the defaults)."""
    # torch and torchvision: only the stages that run the network import them
    from unitscope.models.preprocessing import build_transform, input_channels, input_size
    from unitscope.models.registry import load_model
    from unitscope.runtime import RunSettings, inference_copy, pick_device
    from unitscope.studies.nefesi.images import nf_rgb
    from unitscope.studies.nefesi.indexes import GRAYSCALE_NOTE, layer_index_table
    from unitscope.studies.nefesi.probes import layer_record, manifest_batches, probe_layer, probe_report
    from unitscope.studies.nefesi.topn import read_top_n

    run = run or RunSettings()
    layer, shallower, device = settings.layer, settings.shallower, pick_device(run.device)
    network = inference_copy(load_model(model), keep={layer, shallower}).to(device)
    exemplars, images = pd.read_parquet(exemplars_path), pd.read_parquet(images_path)
    top = read_top_n(exemplars, layer)
    preprocessing = model.spec["preprocessing"]
    mean, std, size = preprocessing["mean"], preprocessing["std"], input_size(preprocessing)
    batches = manifest_batches(images, build_transform(preprocessing), num_workers=run.num_workers)
    print(f"{model.name} {layer}: {top.channels} channels, top-{top.n}, map {top.map_size}", flush=True)
    notes = [GRAYSCALE_NOTE] if input_channels(preprocessing) == 1 else []
    probes = probe_layer(
        network,
        layer,
        top,
        batches,
        image_size=size,
        mean=mean,
        std=std,
        rotation_step=settings.rotation_step,
        color_grey=settings.color_grey,
        shallower=shallower,
        batch_size=probe_batch_size,
        device=device,
    )
    table = layer_index_table(
        model.name,
        layer,
        top,
        probes,
        images["class"],
        mean=mean,
        std=std,
        class_coverage=settings.class_coverage,
        population_threshold=settings.population_threshold,
        color_name_share=settings.color_name_share,
        class_index_scale=settings.class_index_scale,
    )
    weights = None if shallower is None else hierarchy_weights(probes.children, top, read_top_n(exemplars, shallower))
    classes = images["class"].nunique()
    info = layer_record(model.name, layer, top, probes, probes.geometry, len(images), classes, shallower, notes)
    write_parquet(table, out_table)
    write_parquet(hierarchy_frame(layer, shallower, weights), out_hierarchy)
    write_nf(nf_rgb(probes.nf, mean, std), out_nf)
    write_json(info, out_info)
    print(probe_report(info, probes, top.channels), *notes, sep="\n", flush=True)
    return table


def run_layer_figures(settings: LayerFiguresSettings, *, table_path, nf_path, info_path, out_grid, out_top) -> None:
    """NF grid of one layer (ordered by `settings.order_by`) and its top channels for each index."""
    draw_layer_figures(
        pd.read_parquet(table_path),
        read_nf(nf_path),
        read_json(info_path),
        order_by=settings.order_by,
        top_channels=settings.top_channels,
        out_grid=out_grid,
        out_top=out_top,
    )


def run_model_figures(
    settings: ModelFiguresSettings,
    *,
    model_name: str,
    table_paths: list,
    nf_paths: list,
    hierarchy_paths: list,
    out_histograms,
    out_hierarchy,
    out_tree,
) -> dict:
    """Index histograms of every layer and the hierarchical decomposition of one deep channel. The paths: one per
    layer of `settings.layers`, in that order."""
    layers, children = list(settings.layers), settings.children
    tables = {layer: pd.read_parquet(path) for layer, path in zip(layers, table_paths, strict=True)}
    nfs = {layer: read_nf(path) for layer, path in zip(layers, nf_paths, strict=True)}
    draw_histograms(model_name, tables, out_histograms)
    deep = layers[-1]
    channel, chosen = hierarchy_root(model_name, deep, tables[deep], settings.hierarchy_channel)
    weights = hierarchy_matrices([pd.read_parquet(path) for path in hierarchy_paths])
    tree = hierarchy_tree(weights, layers, deep, channel, children)
    record = {"model": model_name, "layer": deep, "channel": channel, "chosen": chosen, "tree": tree}
    draw_hierarchy(model_name, record, children, nfs, out_hierarchy)
    write_json(record, out_tree)
    return record


def run_decomposition(
    settings: DecompositionSettings,
    model: ModelRef,
    *,
    dataset: str,
    index: int,
    images_path,
    exemplars_path,
    nf_path,
    info_path,
    out_figure,
    out_record,
) -> dict:
    """Image decomposition of the `index`-th image of `dataset` in the target's image table at `settings.layer`."""
    # torch and torchvision: only the stages that run the network import them
    from unitscope.models.registry import load_model
    from unitscope.runtime import inference_copy
    from unitscope.studies.nefesi.decomposition import decompose_image, decomposition_record, image_maps
    from unitscope.studies.nefesi.images import dataset_image, layer_field, model_inputs, nf_rgb
    from unitscope.studies.nefesi.topn import read_top_n

    layer, max_overlap = settings.layer, settings.max_overlap
    rows = dataset_image(pd.read_parquet(images_path), dataset, index, images_path)
    network = inference_copy(load_model(model), keep={layer})  # as the probes
    preprocessing = model.spec["preprocessing"]
    image = model_inputs(rows, preprocessing)[0]
    maps = image_maps(network, layer, image)
    top = read_top_n(pd.read_parquet(exemplars_path), layer)
    info = read_json(info_path)
    field = layer_field(info)  # the field the probes and Neuron Features used
    if all(field.whole):
        print(f"{layer}: {field.describe()}; every field overlaps every other, so one unit is kept", flush=True)
    kept = decompose_image(
        maps, field, top.values[:, 0], tuple(image.shape[-2:]), count=settings.channels, max_overlap=max_overlap
    )
    record = decomposition_record(model.name, layer, rows.iloc[0].to_dict(), index, kept)
    picture = nf_rgb(image.unsqueeze(0), preprocessing["mean"], preprocessing["std"])[0]
    draw_decomposition(
        picture, kept, read_nf(nf_path), field, info["nf_extent"], record, max_overlap=max_overlap, path=out_figure
    )
    write_json(record, out_record)
    return record


def run_section(settings: SectionSettings, *, models: dict[str, dict], out_section, out_units) -> dict:
    """The report section (section.json) and one figure per singled-out unit (its NF beside its top
    `settings.unit_exemplars` crops) in the folder `out_units` (written whole, then renamed into place). models:
    {name: its files, plan.NefesiPlan.section_models}."""
    from unitscope.studies.nefesi.units import draw_unit_figures, merge_units, top_units  # torch: crops exemplars

    recorded = settings.recorded()
    contexts, units, summary, read = [], [], {"settings": recorded, "layers": {}}, []
    with atomic_path(out_units) as folder:
        folder.mkdir()
        for model, entry in models.items():
            results = section.ModelResults.read(model, entry, settings.color_selective_threshold)
            read.append(results)
            summary["layers"].update({f"{model}/{layer}": results.summaries[layer] for layer in results.layers})
            tops = [top for layer in results.layers for top in top_units(model, layer, results.tables[layer])]
            model_units = merge_units([unit for _, unit in tops])
            drawn = draw_unit_figures(
                model_name=model,
                units=[(unit["layer"], unit["channel"]) for unit in model_units],
                exemplars_path=entry["exemplars"],
                images_path=entry["images"],
                nf_paths=dict(zip(results.layers, entry["nfs"], strict=True)),
                infos=results.infos,
                preprocessing=entry["preprocessing"],
                count=settings.unit_exemplars,
                out_dir=folder,
            )
            section.attach_unit_images(model_units, drawn, results.infos, section.units_src(out_units))
            units.extend(model_units)
            contexts.append(section.model_context(results, entry["figures"], tops, recorded))
    return write_section(
        out_section,
        study="nefesi",
        title=section.TITLE,
        conclusion=section.conclusion(contexts),
        body_html=section.section_body(contexts, recorded),
        summary=summary,
        finding=section.finding_of(read, [entry["figures"]["histograms"] for entry in models.values()]),
        units=units,
    )
