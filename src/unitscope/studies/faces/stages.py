"""The faces study's cheap stages, each writing its Parquet table(s) and its figure: selection, PCA,
category comparison, probes per layer, and the interventions figure (from the intervention tables).

The expensive intervention stage (`unitscope.studies.faces.interventions`) writes tables only, so a change
to a figure re-draws without re-running the network.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import zarr

from unitscope.stats import bootstrap_interval, wilson_interval
from unitscope.studies.faces.figures import (
    categories_figure,
    interventions_figure,
    pca_figure,
    probes_figure,
    selection_figure,
)
from unitscope.studies.faces.probe import cv_correct, fit_logistic, standardize_stats, stratified_folds
from unitscope.studies.faces.selection import (
    FacesError,
    derived_rng,
    dprime,
    jaccard,
    load_category_means,
    pca_spectrum,
    selected_channels,
    selection_table,
    selectivity_index,
    write_table,
)


def run_selection(
    *,
    stores: dict[str, str],
    face_dataset: str,
    layer: str,
    percentile: float,
    fdr: float,
    out_table: str | os.PathLike,
    out_figure: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Both selection rules over every channel of `layer` ({dataset: store}, the face set among them)."""
    data = load_category_means(stores, face_dataset, layer)
    table = selection_table(data, percentile=percentile, fdr=fdr)
    counts = {name: int((data.dataset == name).sum()) for name in [face_dataset, *data.nonface_datasets]}
    for name, count in counts.items():
        table[f"n_{name}"] = count
    write_table(table, out_table)
    top, contrast = selected_channels(table, "top_percentile"), selected_channels(table, "contrast")
    print(
        f"selection at {layer}: {len(top)} channels by the top-{percentile}% rule, {len(contrast)} by the contrast "
        f"rule (FDR {fdr}); overlap {len(set(top) & set(contrast))}, Jaccard {jaccard(top, contrast):.3f}; "
        f"images {counts}",
        flush=True,
    )
    if out_figure is not None:
        selection_figure(table, face_dataset=face_dataset, layer=layer, percentile=percentile, fdr=fdr, path=out_figure)
    return table


def run_pca(
    *, store: str, layer: str, levels: list[float], out_table: str | os.PathLike, out_figure: str | os.PathLike
) -> pd.DataFrame:
    """PCA of the faces' [N, C] channel means: explained variance per component and cumulated."""
    group = zarr.open_group(store=str(store), mode="r")
    if group.attrs.get("layer") not in (None, layer):
        raise FacesError(f"store {store} holds layer {group.attrs.get('layer')!r}, expected {layer!r}")
    means = np.asarray(group["means"][:], dtype=np.float32)
    ratio = pca_spectrum(means)
    table = pd.DataFrame(
        {
            "component": np.arange(1, len(ratio) + 1),
            "explained_variance_ratio": ratio,
            "cumulative": np.cumsum(ratio),
            "n_images": means.shape[0],
            "n_channels": means.shape[1],
        }
    )
    write_table(table, out_table)
    print(f"PCA of {means.shape[0]} face images x {means.shape[1]} channels: PC1 {ratio[0]:.3f}", flush=True)
    pca_figure(table, levels=levels, layer=layer, path=out_figure)
    return table


def run_categories(
    *,
    stores: dict[str, str],
    face_dataset: str,
    layer: str,
    selection: str,
    rule: str,
    n_bootstrap: int,
    seed: int,
    out_categories: str | os.PathLike,
    out_selectivity: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean activation of the selected channels per dataset (bootstrap 95% CIs) and per-channel selectivity.

    Selectivity index: (face mean - non-face mean) / (|face mean| + |non-face mean|), the non-face mean
    being the average of the non-face sets' means (each set weighs the same whatever its size).
    """
    data = load_category_means(stores, face_dataset, layer)
    table = pd.read_parquet(selection)
    if len(table) != data.n_channels:
        raise FacesError(f"{selection} lists {len(table)} channels, the stores have {data.n_channels}")
    chosen = selected_channels(table, rule)
    rng = derived_rng(seed, "faces/categories")
    rows = []
    for set_name, channels in (("selected", chosen), ("all channels", np.arange(data.n_channels))):
        for name in [face_dataset, *data.nonface_datasets]:
            block = data.of(name)
            score = block[:, channels].mean(axis=1) if len(channels) else np.full(len(block), np.nan)
            low, high = bootstrap_interval(score, rng, n_bootstrap)
            mean = float(np.mean(score, dtype=np.float64)) if len(score) else float("nan")
            rows.append(
                {
                    "channel_set": set_name,
                    "n_channels": len(channels),
                    "dataset": name,
                    "is_face": name == face_dataset,
                    "n_images": len(block),
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    categories = pd.DataFrame(rows)
    faces = data.of(face_dataset)
    nonface_mean = np.mean([data.of(name).mean(axis=0) for name in data.nonface_datasets], axis=0)
    selectivity = pd.DataFrame(
        {
            "channel": np.arange(data.n_channels),
            "face_mean": faces.mean(axis=0),
            "nonface_mean": nonface_mean,
            "selectivity_index": selectivity_index(faces.mean(axis=0), nonface_mean),
            "d_nonface": dprime(faces, data.means[~data.is_face]),
            "selected": np.isin(np.arange(data.n_channels), chosen),
        }
    )
    for name in data.nonface_datasets:
        selectivity[f"{name}_mean"] = data.of(name).mean(axis=0)
    write_table(categories, out_categories)
    write_table(selectivity, out_selectivity)
    categories_figure(categories, selectivity, out_figure)
    return categories, selectivity


def run_probes(
    *,
    layer_stores: dict[str, dict[str, str]],
    face_dataset: str,
    folds: int,
    C: float,
    seed: int,
    out_table: str | os.PathLike,
    out_coefficients: str | os.PathLike,
    out_figure: str | os.PathLike,
) -> pd.DataFrame:
    """Cross-validated face-vs-non-face accuracy per layer ({layer: {dataset: store}}); coefficients of the
    probe fit on every image (standardised units) saved per layer and channel."""
    rows, coefficient_tables = [], []
    for depth, (layer, stores) in enumerate(layer_stores.items()):
        data = load_category_means(stores, face_dataset, layer)
        y = data.is_face.astype(int)
        split = stratified_folds(y, folds, int(derived_rng(seed, "faces/folds").integers(2**31)))
        X = torch.as_tensor(data.means, dtype=torch.float64)
        correct, _ = cv_correct(X, y, split, C=C)
        fold_accuracy = correct[0] / np.array([len(test) for _, test in split])
        n_correct = int(correct.sum())
        low, high = wilson_interval(n_correct, len(y))
        mean, std = standardize_stats(X)
        full = fit_logistic((X - mean) / std, torch.as_tensor(y), C=C)
        rows.append(
            {
                "layer": layer,
                "depth": depth,
                "n_channels": data.n_channels,
                "n_images": len(y),
                "n_faces": int(y.sum()),
                "accuracy": n_correct / len(y),
                "ci_low": low,
                "ci_high": high,
                "fold_accuracy_sd": float(np.std(fold_accuracy, ddof=1)),
                "fold_accuracies": fold_accuracy.tolist(),
                "chance": float(max(y.mean(), 1 - y.mean())),
                "converged": bool(full.converged.all()),
            }
        )
        coefficient_tables.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "channel": np.arange(data.n_channels),
                    "coefficient": full.weights[0].numpy(),
                    "intercept": float(full.intercept[0]),
                    "feature_mean": mean[0].numpy(),
                    "feature_std": std[0].numpy(),
                }
            )
        )
        print(f"probe {layer}: {n_correct}/{len(y)} correct ({n_correct / len(y):.3f}), {folds}-fold CV", flush=True)
    table = pd.DataFrame(rows)
    write_table(table, out_table)
    write_table(pd.concat(coefficient_tables, ignore_index=True), out_coefficients)
    probes_figure(table, out_figure)
    return table


def run_interventions_figure(
    *, conditions: str, controls: str, pca: str | None = None, out_figure: str | os.PathLike
) -> None:
    curves = pd.read_parquet(pca) if pca else None
    interventions_figure(pd.read_parquet(conditions), pd.read_parquet(controls), out_figure, curves=curves)
