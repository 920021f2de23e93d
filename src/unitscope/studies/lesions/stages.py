"""The lesions study's stages: the entry point of every rule of rules/lesions.smk, and nothing else.

The intervention stage runs the network and writes tables only; the figure and the section read them (and import
no torch), so a change to either re-draws without re-running the network.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from unitscope.fsutil import write_json, write_parquet
from unitscope.report.sections import write_section
from unitscope.studies.lesions.figures import class_units_figure, colour_units_figure, concept_units_figure
from unitscope.studies.lesions.section import TITLE, body_html, claims, conclusion_text, finding_of, summary, units

if TYPE_CHECKING:  # annotations only: a stage's settings arrive as params, so plan.py is no code input
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef
    from unitscope.studies.lesions.plan import (
        AgreementSettings,
        ClassUnitsSettings,
        ColourUnitsSettings,
        ConceptUnitsSettings,
        SectionSettings,
    )


def run_class_units(
    settings: ClassUnitsSettings,
    model: ModelRef,
    *,
    store: str,
    manifest: str,
    exemplars: str,
    images: str,
    out_units: str | os.PathLike,
    out_conditions: str | os.PathLike,
    out_sets: str | os.PathLike,
    out_pooled: str | os.PathLike,
    out_agreement: str | os.PathLike,
    out_info: str | os.PathLike,
    run: RunSettings | None = None,
) -> dict:
    """Class units (see `class_units`): each unit's own lesion per class, the labelled sets and their controls,
    and whether selectivity predicts importance. `run`: run-only settings (device, batch size, loader workers)."""
    import torch

    from unitscope.interventions.conditions import ablation_fill
    from unitscope.interventions.tail import build_tail, layer_cache
    from unitscope.models.registry import load_model
    from unitscope.runtime import RunSettings, inference_copy, pick_device
    from unitscope.studies.lesions import class_units as cu
    from unitscope.studies.lesions.agreement import class_agreement
    from unitscope.studies.lesions.inputs import labelled_store, nefesi_shares

    run, s, clock = run or RunSettings(), settings, time.perf_counter()
    device = pick_device(run.device)
    network = inference_copy(load_model(model), keep={s.layer}).to(device)  # BatchNorm folded
    tail = build_tail(network, s.layer, model.name)
    data = labelled_store(store, manifest, s.layer)
    shares, class_index, class_names = nefesi_shares(exemplars, images, s.layer, data.n_channels, data.n_classes)
    loading = {"batch_size": run.batch_size, "num_workers": run.num_workers, "device": device}
    cache, means = layer_cache(
        network, tail, data.means, data.image_id, {s.dataset: manifest}, model.spec["preprocessing"], **loading
    )
    fill = ablation_fill(s.ablation, means, "lesions.class_units.ablation")
    images_ = cu.LabelledImages(data.labels, cu.stratified_halves(data.labels, s.seed), data.n_classes)
    effects = cu.unit_effects(tail, cache, fill, images_, device=device)
    table = cu.unit_table(shares, class_index, effects, class_names)
    sets = cu.labelled_sets(shares, effects, list(s.sizes))
    conditions = cu.build_set_conditions(sets, means.mean(0).numpy(), s)  # the settings carry the draws
    print(f"{len(sets)} labelled sets, {len(conditions.table)} conditions", flush=True)
    held_out = images_.held_out()  # sets are scored on the evaluation half only: run only its images
    evaluation = torch.from_numpy(~images_.ranking)
    correct, _ = cu.evaluate(tail, cache[evaluation], conditions.ablate, fill, held_out.labels, device=device)
    scored = cu.score_conditions(conditions, correct, held_out)
    compared = cu.compare_sets(scored, correct, held_out, n_bootstrap=s.n_bootstrap, seed=s.seed)
    compared.insert(1, "class_name", [class_names[t] for t in compared["target"]])
    pooled = cu.pooled_comparison(scored, n_bootstrap=s.n_bootstrap, seed=s.seed)
    correlation = cu.selectivity_importance(table, n_bootstrap=s.n_bootstrap, seed=s.seed)
    agreement = pd.DataFrame(
        class_agreement(table, model=model.name, layer=s.layer, n_bootstrap=s.n_bootstrap, seed=s.seed)
    )
    info = _class_info(s, model.name, tail.path, data, images_, effects, class_names, correlation)
    for frame, path in ((table, out_units), (scored, out_conditions), (compared, out_sets), (pooled, out_pooled)):
        write_parquet(frame.assign(model=model.name, layer=s.layer), path)
    write_parquet(pd.concat([correlation.assign(kind="per class"), agreement.assign(kind="agreement")]), out_agreement)
    write_json(info, out_info)
    print(f"class units: {len(scored)} conditions in {time.perf_counter() - clock:.1f} s", flush=True)
    return info


def _class_info(settings, model_name, tail_path, data, images, effects, class_names, correlation) -> dict:
    mean = correlation.iloc[-1]
    return {
        "model": model_name,
        "layer": settings.layer,
        "dataset": settings.dataset,
        "tail": tail_path,
        "n_units": int(data.n_channels),
        "n_images": int(len(data.labels)),
        "n_ranking": int(images.ranking.sum()),
        "n_evaluation": int((~images.ranking).sum()),
        "class_names": class_names,
        "intact_accuracy": [float(a) for a in effects["intact_eval"]],
        "sizes": list(settings.sizes),
        "n_random": settings.n_random,
        "n_matched": settings.n_matched,
        "ablation": settings.ablation,
        "spearman_mean": {"rho": float(mean["rho"]), "low": float(mean["low"]), "high": float(mean["high"])},
    }


def run_colour_units(
    settings: ColourUnitsSettings,
    *,
    data: str,
    checkpoint: str,
    info: str,
    probe: str,
    out_conditions: str | os.PathLike,
    out_compared: str | os.PathLike,
    out_layers: str | os.PathLike,
    run: RunSettings | None = None,
) -> pd.DataFrame:
    """Colour units (see `colour_units`): per layer, the colour and shape sets lesioned against random sets on the
    three evaluation sets. Writes every condition's accuracies, the sets against their controls, and per layer how
    many units code colour and what was lesioned."""
    from unitscope.runtime import RunSettings, pick_device
    from unitscope.studies.actmax.colored_mnist import load_colored_mnist, load_trained_model
    from unitscope.studies.lesions import colour_units as co

    run, s, clock = run or RunSettings(), settings, time.perf_counter()
    device = pick_device(run.device)
    model = load_trained_model(checkpoint, info)
    probe_table = pd.read_parquet(probe)
    sets = co.colour_sets(probe_table, list(s.layers), max_units=s.max_units)
    evaluation = co.evaluation_images(load_colored_mnist(data), max_images=s.max_images, seed=s.seed)
    scored, compared = [], []
    for layer in dict.fromkeys(labelled["layer"] for labelled in sets):
        lesions = co.lesion_layer(
            model, layer, sets, evaluation, n_random=s.n_random, seed=s.seed, ablation=s.ablation, device=device
        )
        scored.append(co.score_conditions(lesions).assign(tail=lesions.tail_path))
        compared.append(co.compare_sets(scored[-1], lesions, n_bootstrap=s.n_bootstrap, seed=s.seed))
    layers = co.layer_summary(probe_table, list(s.layers), sets).assign(n_images=evaluation.n_images)
    empty = pd.DataFrame({"layer": pd.Series(dtype=str)})
    write_parquet(pd.concat(scored, ignore_index=True) if scored else empty, out_conditions)
    write_parquet(co.adjust_over_layers(pd.concat(compared, ignore_index=True)) if compared else empty, out_compared)
    write_parquet(layers, out_layers)
    print(f"colour units: {len(sets)} sets in {time.perf_counter() - clock:.1f} s", flush=True)
    return layers


def run_concept_units(
    settings: ConceptUnitsSettings,
    model: ModelRef,
    *,
    units: str,
    out_conditions: str | os.PathLike,
    out_compared: str | os.PathLike,
    run: RunSettings | None = None,
) -> pd.DataFrame:
    """Concept detectors (see `concept_units`): each concept's detectors at the layer lesioned on the concept images,
    read on its high- and low-coverage frames, against random and matched sets. Writes every condition's readouts
    and the detectors against each control family (empty tables when no concept has enough detectors)."""
    import tempfile

    from unitscope.data.concepts import mask_shape
    from unitscope.interventions.conditions import ablation_fill
    from unitscope.interventions.tail import build_tail
    from unitscope.runtime import RunSettings
    from unitscope.studies.dissection.caches import open_inputs
    from unitscope.studies.lesions import concept_units as cn

    run, s, clock = run or RunSettings(), settings, time.perf_counter()
    sets = cn.detector_sets(pd.read_parquet(units), s.layer, s.min_detectors)
    print(f"{len(sets)} concepts with at least {s.min_detectors} detectors at {s.layer}", flush=True)
    if not sets:
        write_parquet(pd.DataFrame({"condition": pd.Series(dtype=str)}), out_conditions)
        write_parquet(pd.DataFrame({c: pd.Series(dtype=object) for c in cn.COMPARISON_COLUMNS}), out_compared)
        return pd.DataFrame()
    concepts, network = open_inputs(model, [s.layer], s.concepts, s.seed)  # the dissection's frames and model
    tail = build_tail(network.eval(), s.layer, model.name)
    with tempfile.TemporaryDirectory(dir=Path(out_compared).parent, prefix=".cache-") as folder:
        cache, means = cn.concept_layer_cache(
            network, tail, concepts, model.spec["preprocessing"], folder, model_name=model.name
        )
    coverage = cn.set_coverage(concepts, sets, mask_shape(concepts.label_size, s.mask_size))
    splits = [cn.coverage_split(coverage[:, i], s.fraction) for i in range(len(sets))]
    conditions = cn.build_concept_conditions(sets, means.mean(0).numpy(), s, s.layer)  # the settings carry the draws
    fill = ablation_fill(s.ablation, means, "lesions.concept_units.ablation")
    related = cn.related_indexes(sets, s.related, _n_outputs(tail, cache, fill))
    readouts = cn.evaluate(tail, cache, conditions, fill, related)
    scored = cn.score_conditions(conditions, readouts, splits)
    compared = cn.compare_concepts(scored, readouts, splits, layer=s.layer, n_bootstrap=s.n_bootstrap, seed=s.seed)
    write_parquet(scored.assign(model=model.name, tail=tail.path), out_conditions)
    write_parquet(compared.assign(model=model.name, n_frames=len(concepts)), out_compared)
    print(f"concept units: {len(scored)} conditions in {time.perf_counter() - clock:.1f} s", flush=True)
    return compared


def _n_outputs(tail, cache, fill) -> int:
    """How many outputs (logits) the model has: one intact run of the tail on one image."""
    import torch

    with torch.inference_mode():
        _, logits = tail.run(cache[:1], torch.zeros(1, fill.shape[0], dtype=torch.bool), fill)
    return int(logits.shape[-1])


def run_agreement(
    settings: AgreementSettings,
    *,
    class_agreement: str,
    nefesi: dict[str, str],
    dissection: dict[str, str],
    actmax: dict[str, tuple[str, str]] | None = None,
    atlas_actmax: Sequence[str] = (),
    faces_selection: str | None = None,
    faces_conditions: str | None = None,
    out_table: str | os.PathLike,
) -> pd.DataFrame:
    """Do the methods agree? One row per label set against other evidence on the same units: the class units' own
    rows, nefesi's colour index against the dissection colour IoU on every layer both analyse (`nefesi`: {"model/
    layer": indexes.parquet}, `dissection`: {model: units.parquet}), the actmax colour score of registry-target
    units (`actmax`: {"model/target layer": (runs .npz, runs .parquet)}) or atlas units (`atlas_actmax`: the shards'
    actmax.parquet of every layer in `settings.atlas_actmax_layers()`) against either, and the faces selectivity
    against each selected channel's own lesion."""
    from unitscope.studies.lesions.agreement import colour_agreement, face_agreement

    rows = pd.read_parquet(class_agreement).query("kind == 'agreement'")
    rows = rows[["model", "layer", "label", "evidence", "rho", "low", "high", "n_units"]].to_dict("records")
    draws = {"n_bootstrap": settings.n_bootstrap, "seed": settings.seed}
    for model, layer in settings.colour_layers:
        indexes, units = pd.read_parquet(nefesi[f"{model}/{layer}"]), pd.read_parquet(dissection[model])
        rows.append(colour_agreement(indexes, units, model=model, layer=layer, **draws))
    atlas = {
        f"{m}/{layer}": [str(p) for p in atlas_actmax if f"/atlas/{m}/{layer}/shards/" in Path(p).as_posix()]
        for m, layer in settings.atlas_actmax_layers()
    }
    rows += _actmax_rows(settings, nefesi, dissection, actmax or {}, atlas)
    if faces_selection and faces_conditions:
        rows.append(face_agreement(pd.read_parquet(faces_selection), pd.read_parquet(faces_conditions), **draws))
    table = pd.DataFrame(rows)
    write_parquet(table, out_table)
    return table


def _actmax_rows(settings: AgreementSettings, nefesi: dict, dissection: dict, actmax: dict, atlas: dict) -> list[dict]:
    """The actmax colour score of each registry target's or atlas layer's units against nefesi's colour index or the
    dissection's colour IoU of the same units (`settings.actmax`)."""
    from unitscope.studies.lesions.agreement import actmax_colour_agreement

    scores, rows = {}, []
    for model, layer, unit_layer, partner, source in settings.actmax:
        if (model, layer) not in scores:
            paths = atlas[f"{model}/{layer}"] if source == "atlas" else actmax[f"{model}/{layer}"]
            scores[model, layer] = _actmax_scores(source, paths, model, layer)
            print(f"actmax colour score of {model} {layer} ({source}): {len(scores[model, layer])} units", flush=True)
        path = nefesi[f"{model}/{unit_layer}"] if partner == "nefesi" else dissection[model]
        row = actmax_colour_agreement(
            scores[model, layer].query("layer == @unit_layer"),
            partner,
            pd.read_parquet(path),
            model=model,
            layer=unit_layer,
            n_bootstrap=settings.n_bootstrap,
            seed=settings.seed,
        )
        rows.append(row)
    return rows


def _actmax_scores(source: str, paths, model: str, layer: str) -> pd.DataFrame:
    """One row per unit (model, layer: the unit layer, channel, colour_score) from a registry run (its .npz and
    .parquet) or from an atlas layer's shard tables (each unit's colour score already averaged over its seeds, as
    `unit_colour_scores` averages a registry unit's runs)."""
    from unitscope.studies.actmax.image_metrics import unit_colour_scores
    from unitscope.studies.actmax.runs import load_run

    if source == "registry":
        arrays, runs = load_run(*paths)
        return unit_colour_scores(arrays["images"], runs)
    table = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
    return pd.DataFrame(
        {"model": model, "layer": layer, "channel": table["channel"], "colour_score": table["actmax_colour_score"]}
    )


def run_class_figure(*, pooled: str, units: str, agreement: str, out_figure: str | os.PathLike) -> None:
    """The class-units figure from the stage's tables."""
    class_units_figure(pd.read_parquet(pooled), pd.read_parquet(units), pd.read_parquet(agreement), out_figure)


def run_colour_figure(*, compared: str, out_figure: str | os.PathLike) -> None:
    """The colour-units figure from the stage's comparison table."""
    colour_units_figure(pd.read_parquet(compared), out_figure)


def run_concept_figure(*, compared: str, out_figure: str | os.PathLike) -> None:
    """The concept-detectors figure from the stage's comparison table."""
    concept_units_figure(pd.read_parquet(compared), out_figure)


def run_section(
    settings: SectionSettings,
    *,
    sets: str,
    pooled: str,
    units_table: str,
    agreement: str,
    info: str,
    methods: str,
    colour_compared: str | None = None,
    colour_layers: str | None = None,
    concept_compared: str | None = None,
    out_section,
) -> dict:
    """The lesions section (section.json) from the class units' tables and, when run, the colour units'."""
    tables = {
        "sets": pd.read_parquet(sets),
        "pooled": pd.read_parquet(pooled),
        "units": pd.read_parquet(units_table),
        "agreement": pd.read_parquet(agreement),
        "methods": pd.read_parquet(methods),
        "info": json.loads(open(info).read()),
        "colour": None if colour_compared is None else pd.read_parquet(colour_compared),
        "colour_layers": None if colour_layers is None else pd.read_parquet(colour_layers),
        "concept": None if concept_compared is None else pd.read_parquet(concept_compared),
    }
    return write_section(
        out_section,
        study="lesions",
        title=TITLE,
        conclusion=conclusion_text(tables, alpha=settings.alpha),
        body_html=body_html(tables, alpha=settings.alpha),
        summary=summary(tables, alpha=settings.alpha),
        units=units(tables),
        finding=finding_of(tables, alpha=settings.alpha),
        claims=claims(tables, alpha=settings.alpha),
    )
