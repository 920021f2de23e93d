"""The nefesi study's stages: one `run_*` function per rule of rules/nefesi.smk, called by its workflow script
(workflow/scripts/nefesi_*.py). Each reads its inputs, calls the modules that compute (`topn`, `probes`,
`indexes`, `hierarchy`, `decomposition`, `units`, `section`) and draw (`figures`), and writes its outputs."""

from __future__ import annotations

import pandas as pd

from unitscope.data.manifest import ManifestDataset
from unitscope.fsutil import atomic_path, write_parquet
from unitscope.models.preprocessing import build_transform
from unitscope.models.receptive_field import receptive_field
from unitscope.models.registry import build_model, resolve_layer
from unitscope.report.sections import write_section
from unitscope.runtime import make_loader, pick_device
from unitscope.studies.nefesi import section
from unitscope.studies.nefesi.decomposition import decompose_image, decomposition_record, image_maps
from unitscope.studies.nefesi.figures import draw_decomposition, draw_hierarchy, draw_histograms, draw_layer_figures
from unitscope.studies.nefesi.hierarchy import (
    hierarchy_frame,
    hierarchy_matrices,
    hierarchy_root,
    hierarchy_tree,
    hierarchy_weights,
)
from unitscope.studies.nefesi.images import dataset_image, image_table, model_inputs, nf_rgb
from unitscope.studies.nefesi.indexes import layer_index_table
from unitscope.studies.nefesi.probes import LayerGeometry, layer_record, manifest_batches, probe_layer, probe_report
from unitscope.studies.nefesi.storage import read_json, read_nf, write_json, write_nf
from unitscope.studies.nefesi.topn import collect_top_n, exemplar_frame, inference_copy, read_top_n
from unitscope.studies.nefesi.units import draw_unit_figures, merge_units, top_units


def run_top_n(
    *,
    model_name: str,
    spec: dict,
    manifests: dict[str, str],
    layers: list[str],
    top_n: int,
    max_images: int | None,
    class_by: str,
    label_names: dict | None,
    data_dir,
    torch_home,
    out_exemplars,
    out_images,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
) -> None:
    """One pass over the target's images: the top-N exemplars of every channel of every layer."""
    torch_device = pick_device(device)
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home)).to(torch_device)
    for layer in layers:
        resolve_layer(model, layer, model_name)
        receptive_field(model, layer)  # fail now, not after the pass, if the field cannot be computed
    images = image_table(manifests, max_images=max_images, class_by=class_by, label_names=label_names)
    loader = make_loader(
        ManifestDataset(images, build_transform(spec["preprocessing"])),
        batch_size=batch_size,
        num_workers=num_workers,
        device=torch_device,
    )
    print(
        f"top-{top_n}: {model_name}, {len(images)} images ({', '.join(manifests)}), layers {', '.join(layers)}",
        flush=True,
    )
    tops = collect_top_n(model, loader, layers, top_n, device=torch_device, total=len(images))
    write_parquet(images, out_images)
    write_parquet(exemplar_frame(tops), out_exemplars)


def run_layer(
    *,
    model_name: str,
    spec: dict,
    layer: str,
    shallower: str | None,
    exemplars_path,
    images_path,
    rotation_step: float,
    class_coverage: float,
    population_threshold: float,
    color_name_share: float,
    data_dir,
    torch_home,
    out_table,
    out_nf,
    out_hierarchy,
    out_info,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Probes, Neuron Features, the index table and the hierarchy weights of one layer."""
    torch_device = pick_device(device)
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home)).to(torch_device)
    exemplars, images = pd.read_parquet(exemplars_path), pd.read_parquet(images_path)
    top = read_top_n(exemplars, layer)
    preprocessing = spec["preprocessing"]
    mean, std, crop = preprocessing["mean"], preprocessing["std"], int(preprocessing["crop"])
    batches = manifest_batches(images, build_transform(preprocessing), num_workers=num_workers)
    print(f"{model_name} {layer}: {top.channels} channels, top-{top.n}, map {top.map_size}", flush=True)
    probes = probe_layer(
        model,
        layer,
        top,
        batches,
        image_size=(crop, crop),
        mean=mean,
        std=std,
        rotation_step=rotation_step,
        shallower=shallower,
        batch_size=batch_size,
        device=torch_device,
    )
    table = layer_index_table(
        model_name,
        layer,
        top,
        probes,
        images["class"],
        mean=mean,
        std=std,
        class_coverage=class_coverage,
        population_threshold=population_threshold,
        color_name_share=color_name_share,
    )
    weights = None if shallower is None else hierarchy_weights(probes.children, top, read_top_n(exemplars, shallower))
    geometry = LayerGeometry.of(model, layer, (crop, crop), top.map_size)
    info = layer_record(model_name, layer, top, probes, geometry, len(images), images["class"].nunique(), shallower)
    write_parquet(table, out_table)
    write_parquet(hierarchy_frame(layer, shallower, weights), out_hierarchy)
    write_nf(nf_rgb(probes.nf, mean, std), out_nf)
    write_json(info, out_info)
    print(probe_report(info, probes, top.channels), flush=True)
    return table


def run_layer_figures(*, table_path, nf_path, info_path, order_by: str, top_channels: int, out_grid, out_top) -> None:
    """NF grid of one layer (ordered by `order_by`) and its top channels for each index."""
    draw_layer_figures(
        pd.read_parquet(table_path),
        read_nf(nf_path),
        read_json(info_path),
        order_by=order_by,
        top_channels=top_channels,
        out_grid=out_grid,
        out_top=out_top,
    )


def run_model_figures(
    *,
    model_name: str,
    layers: list[str],
    table_paths: list,
    nf_paths: list,
    hierarchy_paths: list,
    hierarchy_channel: int | None,
    children: int,
    out_histograms,
    out_hierarchy,
    out_tree,
) -> dict:
    """Index histograms of every layer and the hierarchical decomposition of one deep channel."""
    tables = {layer: pd.read_parquet(path) for layer, path in zip(layers, table_paths, strict=True)}
    nfs = {layer: read_nf(path) for layer, path in zip(layers, nf_paths, strict=True)}
    draw_histograms(model_name, tables, out_histograms)
    deep = layers[-1]
    channel, chosen = hierarchy_root(model_name, deep, tables[deep], hierarchy_channel)
    weights = hierarchy_matrices([pd.read_parquet(path) for path in hierarchy_paths])
    tree = hierarchy_tree(weights, layers, deep, channel, children)
    record = {"model": model_name, "layer": deep, "channel": channel, "chosen": chosen, "tree": tree}
    draw_hierarchy(model_name, record, children, nfs, out_hierarchy)
    write_json(record, out_tree)
    return record


def run_decomposition(
    *,
    model_name: str,
    spec: dict,
    layer: str,
    dataset: str,
    index: int,
    images_path,
    exemplars_path,
    nf_path,
    info_path,
    channels: int,
    max_overlap: float,
    data_dir,
    torch_home,
    out_figure,
    out_record,
) -> dict:
    """Image decomposition of the `index`-th image of `dataset` in the target's image table at `layer`."""
    rows = dataset_image(pd.read_parquet(images_path), dataset, index, images_path)
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home))  # as top-N
    preprocessing = spec["preprocessing"]
    image = model_inputs(rows, preprocessing)[0]
    maps = image_maps(model, layer, image)
    top = read_top_n(pd.read_parquet(exemplars_path), layer)
    field = receptive_field(model, layer)
    info = read_json(info_path)
    kept = decompose_image(
        maps, field, top.values[:, 0], tuple(image.shape[-2:]), count=channels, max_overlap=max_overlap
    )
    record = decomposition_record(model_name, layer, rows.iloc[0].to_dict(), index, kept)
    picture = nf_rgb(image.unsqueeze(0), preprocessing["mean"], preprocessing["std"])[0]
    draw_decomposition(
        picture, kept, read_nf(nf_path), field, info["nf_extent"], record, max_overlap=max_overlap, path=out_figure
    )
    write_json(record, out_record)
    return record


def run_section(*, models: dict[str, dict], settings: dict, out_section, out_units, unit_exemplars: int = 8) -> dict:
    """The report section (section.json) and one figure per singled-out unit (its NF beside its top
    `unit_exemplars` crops) in the folder `out_units` (written whole, then renamed into place). models: {name:
    its files, plan.NefesiPlan.section_models}."""
    contexts, units, summary = [], [], {"settings": settings, "layers": {}}
    with atomic_path(out_units) as folder:
        folder.mkdir()
        for model, entry in models.items():
            results = section.ModelResults.read(model, entry, settings["color_selective_threshold"])
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
                count=unit_exemplars,
                out_dir=folder,
            )
            section.attach_unit_images(model_units, drawn, results.infos, section.units_src(out_units))
            units.extend(model_units)
            contexts.append(section.model_context(results, entry["figures"], tops, settings))
    return write_section(
        out_section,
        study="nefesi",
        title=section.TITLE,
        conclusion=section.conclusion(contexts),
        body_html=section.section_body(contexts, settings),
        summary=summary,
        units=units,
    )
