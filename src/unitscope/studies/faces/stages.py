"""The faces study's stages: the entry point of every rule of rules/faces.smk, and nothing else.

Each reads its inputs, calls the algorithm modules (selection, pca, categories, probe, interventions,
heatmaps, section) and writes its tables and figure. The expensive intervention stage writes tables only,
so a change to a figure re-draws without re-running the network.

The stages that run the network or fit torch probes (probes, interventions, heatmaps) import their algorithm
modules inside the function: torch and torchvision take seconds to import, and the table-only stages (selection,
pca, categories, the interventions figure, the section) never need them.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.fsutil import write_parquet
from unitscope.interventions.controls import draw_controls
from unitscope.report.sections import write_section
from unitscope.stats import derived_rng
from unitscope.studies.faces.categories import category_table, selectivity_table
from unitscope.studies.faces.controls import control_table
from unitscope.studies.faces.figures import (
    categories_figure,
    heatmap_figure,
    interventions_figure,
    pca_figure,
    probes_figure,
    selection_figure,
    verdicts_figure,
)
from unitscope.studies.faces.inputs import FacesError, load_category_means, open_layer_store
from unitscope.studies.faces.pca import pca_table
from unitscope.studies.faces.section import (
    TITLE,
    body_html,
    claims,
    conclusion_text,
    finding_of,
    intact_interval,
    summary,
    units,
)
from unitscope.studies.faces.selection import read_selection, rule_agreement, selected_channels, selection_table

if TYPE_CHECKING:  # annotations only: a stage's settings arrive as params, so plan.py is no code input
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef
    from unitscope.studies.faces.plan import (
        CategorySettings,
        HeatmapSettings,
        InterventionSettings,
        PcaSettings,
        ProbeSettings,
        SectionSettings,
        SelectionSettings,
    )


def run_selection(
    settings: SelectionSettings,
    *,
    stores: dict[str, str],
    out_table: str | os.PathLike,
    out_figure: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Both selection rules over every channel of the layer ({dataset: store}, the face set among them)."""
    face_dataset, layer, percentile, fdr = settings.face_dataset, settings.layer, settings.percentile, settings.fdr
    data = load_category_means(stores, face_dataset, layer)
    table = selection_table(data, percentile=percentile, fdr=fdr)
    counts = {name: int((data.dataset == name).sum()) for name in [face_dataset, *data.nonface_datasets]}
    for name, count in counts.items():
        table[f"n_{name}"] = count
    write_parquet(table, out_table)
    agreement = rule_agreement(table)
    print(
        f"selection at {layer}: {agreement['top_percentile']} channels by the top-{percentile}% rule, "
        f"{agreement['contrast']} by the contrast rule (FDR {fdr}); overlap {agreement['overlap']}, "
        f"Jaccard {agreement['jaccard']:.3f}; images {counts}",
        flush=True,
    )
    if out_figure is not None:
        selection_figure(table, face_dataset=face_dataset, layer=layer, percentile=percentile, fdr=fdr, path=out_figure)
    return table


def run_pca(
    settings: PcaSettings, *, store: str, out_table: str | os.PathLike, out_figure: str | os.PathLike
) -> pd.DataFrame:
    """PCA of the faces' [N, C] channel means: explained variance per component and cumulated."""
    table = pca_table(np.asarray(open_layer_store(store, settings.layer)["means"][:], dtype=np.float32))
    write_parquet(table, out_table)
    n_images, n_channels = int(table["n_images"].iloc[0]), int(table["n_channels"].iloc[0])
    ratio = table["explained_variance_ratio"].iloc[0]
    print(f"PCA of {n_images} face images x {n_channels} channels: PC1 {ratio:.3f}", flush=True)
    pca_figure(table, levels=list(settings.levels), layer=settings.layer, path=out_figure)
    return table


def run_categories(
    settings: CategorySettings,
    *,
    stores: dict[str, str],
    selection: str,
    out_categories: str | os.PathLike,
    out_selectivity: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean activation of the selected channels per dataset (bootstrap 95% CIs) and per-channel selectivity."""
    data = load_category_means(stores, settings.face_dataset, settings.layer)
    chosen = read_selection(selection, settings.rule, data.n_channels, settings.layer)
    rng = derived_rng(settings.seed, "faces/categories")
    categories = category_table(data, chosen, rng, settings.n_bootstrap)
    selectivity = selectivity_table(data, chosen)
    write_parquet(categories, out_categories)
    write_parquet(selectivity, out_selectivity)
    categories_figure(categories, selectivity, out_figure)
    return categories, selectivity


def run_probes(
    settings: ProbeSettings,
    *,
    stores: list[str],
    out_table: str | os.PathLike,
    out_coefficients: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> pd.DataFrame:
    """Cross-validated face-vs-non-face accuracy per layer (`stores` layer by layer, each in `datasets` order);
    coefficients of the probe fit on every image (standardised units) saved per layer and channel."""
    from unitscope.studies.faces.probe import layer_probe  # torch and sklearn: only this stage fits probes

    rows, coefficient_tables = [], []
    for depth, (layer, layer_stores) in enumerate(settings.by_layer(stores).items()):
        data = load_category_means(layer_stores, settings.face_dataset, layer)
        row, coefficients = layer_probe(
            data, layer=layer, depth=depth, folds=settings.folds, C=settings.C, seed=settings.seed
        )
        rows.append(row)
        coefficient_tables.append(coefficients)
    table = pd.DataFrame(rows)
    write_parquet(table, out_table)
    write_parquet(pd.concat(coefficient_tables, ignore_index=True), out_coefficients)
    probes_figure(table, out_figure)
    return table


def run_interventions(
    settings: InterventionSettings,
    model: ModelRef,
    *,
    stores: dict[str, str],
    manifests: dict[str, str],
    selection: str,
    out_conditions: str | os.PathLike,
    out_controls: str | os.PathLike,
    out_pca: str | os.PathLike | None = None,
    run: RunSettings | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The intervention stage: every condition's readouts (conditions table) and the control comparison.
    `run`: run-only settings (device, batch size, loader workers); the defaults when None (changes no result)."""
    # torch and torchvision: only the stages that run the network import them
    import torch

    from unitscope.interventions.conditions import ablation_fill, build_conditions
    from unitscope.interventions.tail import build_tail, layer_cache
    from unitscope.models.registry import load_model
    from unitscope.runtime import RunSettings, inference_copy, pick_device
    from unitscope.studies.faces.condition_pca import pca_curves
    from unitscope.studies.faces.interventions import condition_readouts, condition_table
    from unitscope.studies.faces.readouts import Readout

    run = run or RunSettings()
    clock, s = time.perf_counter(), settings
    device = pick_device(run.device)
    network = inference_copy(load_model(model), keep={s.layer}).to(device)  # BatchNorm folded
    tail = build_tail(network, s.layer, model.name)
    data = load_category_means(stores, s.face_dataset, s.layer)
    chosen = read_selection(selection, s.rule, data.n_channels, s.layer)
    loading = {"batch_size": run.batch_size, "num_workers": run.num_workers, "device": device}
    ordered = {name: manifests[name] for name in (data.face_dataset, *data.nonface_datasets)}
    cache, means = layer_cache(
        network, tail, data.means, data.image_id, ordered, model.spec["preprocessing"], **loading
    )
    channel_mean = means.mean(0).numpy()
    draws = draw_controls(
        channel_mean,
        chosen,
        n_random=s.n_random,
        n_matched=s.n_matched,
        candidates=s.matched_candidates,
        seed=s.seed,
        purpose="faces",
    )
    conditions = build_conditions(data.n_channels, chosen, *draws, single_channels=chosen)
    fill = ablation_fill(s.ablation, means, "faces.interventions.ablation")
    readout = Readout.make(data.is_face, n_folds=s.folds, train_fraction=s.fixed_train_fraction, C=s.C, seed=s.seed)
    readouts = condition_readouts(
        tail,
        cache,
        means,
        conditions,
        fill,
        readout,
        is_face=data.is_face,
        pca_levels=list(s.pca_levels),
        device=device,
    )
    labels = {"layer": s.layer, "model": model.name, "ablation": s.ablation, "selection_rule": s.rule}
    result = condition_table(
        conditions, readouts, pool_first=tail.pool_first, channel_mean=channel_mean, is_face=data.is_face, labels=labels
    )
    controls = control_table(result)
    write_parquet(result, out_conditions)
    write_parquet(controls, out_controls)
    if out_pca is not None:
        face_means = means[torch.as_tensor(data.is_face)]
        write_parquet(pca_curves(face_means, conditions.masks(("intact", "lesion", "keep_only"))), out_pca)
    print(f"interventions: {len(result)} conditions in {time.perf_counter() - clock:.1f} s", flush=True)
    return result, controls


def run_interventions_figure(
    *,
    conditions: str,
    controls: str,
    pca: str | None = None,
    out_figure: str | os.PathLike,
    out_verdicts: str | os.PathLike,
) -> None:
    """The interventions figure (control nulls, selected set, intact and, for accuracies, its 95% interval;
    PCA curves) and its one-row summary of the three verdicts (the landing page's card) from the stage's tables."""
    curves = pd.read_parquet(pca) if pca else None
    conditions, controls = pd.read_parquet(conditions), pd.read_parquet(controls)
    accuracies = [m for m in controls["metric"].unique() if m.endswith("accuracy")]
    bands = {metric: intact_interval(conditions, metric) for metric in accuracies}
    interventions_figure(conditions, controls, out_figure, curves=curves, bands=bands)
    verdicts_figure(conditions, controls, out_verdicts, bands=bands)


def run_heatmaps(
    settings: HeatmapSettings,
    model: ModelRef,
    *,
    manifests: dict[str, str],
    selection: str,
    out_table: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> pd.DataFrame:
    """Maps of the first `n_channels` selected channels on `n_examples` images of each dataset (in order)."""
    # torch and torchvision: only the stages that run the network import them
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import load_model, resolve_layer
    from unitscope.studies.faces.heatmaps import channel_maps, example_images, heatmap_table, pictures, upsampled

    network = load_model(model)
    resolve_layer(network, settings.layer, model.name)
    chosen = selected_channels(pd.read_parquet(selection), settings.rule)[: settings.n_channels].tolist()
    if not chosen:
        raise FacesError(
            f"faces.selection.use = {settings.rule!r} selected no channel at {settings.layer!r}: no map to show"
        )
    preprocessing = model.spec["preprocessing"]
    rng = derived_rng(settings.seed, "faces/heatmaps")
    batch, images = example_images(manifests, build_transform(preprocessing), settings.n_examples, rng)
    maps = channel_maps(network, settings.layer, batch, chosen)
    table = heatmap_table(maps, images, chosen)
    write_parquet(table, out_table)
    heatmap_figure(pictures(batch, preprocessing), upsampled(maps, batch.shape[-2:]), table, chosen, out_figure)
    return table


def run_section(
    settings: SectionSettings,
    *,
    selection: str,
    pca: str,
    conditions: str,
    controls: str,
    probes: str,
    categories: str,
    selectivity: str,
    heatmaps: str,
    out_path: str | os.PathLike,
) -> dict:
    """The report section: conclusion and body worded by the study's templates, the landing page's card
    (`finding_of`), summary and unit facts."""
    tables = {
        "selection": pd.read_parquet(selection),
        "pca": pd.read_parquet(pca),
        "conditions": pd.read_parquet(conditions),
        "controls": pd.read_parquet(controls),
        "probes": pd.read_parquet(probes),
        "categories": pd.read_parquet(categories),
    }
    extra = {"selectivity": pd.read_parquet(selectivity), "heatmaps": pd.read_parquet(heatmaps)}
    return write_section(
        out_path,
        study="faces",
        title=TITLE,
        conclusion=conclusion_text(tables["selection"], tables["conditions"], tables["controls"], settings),
        body_html=body_html(**tables, **extra, settings=settings),
        summary=summary(**tables, settings=settings),
        finding=finding_of(tables["conditions"], tables["controls"], settings),
        units=units(tables["selection"], tables["conditions"], settings.rule),
        claims=claims(tables["conditions"], tables["controls"], settings),
    )
