"""The actmax study's stages, one per rule (each called by a thin workflow script): build the data, train the
CNN, choose units, probe colour vs shape on data, optimise one layer's units in one batch, optimise registry-model
channels, analyse the results, and write the report section.

Artifacts (under results/actmax/):
  colored_mnist.npz               the Biased Colored-MNIST arrays
  model.pt, model.json            the trained CNN and its description; evaluation.json (shortcut evaluation)
  units.json                      chosen units per layer with the numbers behind the choice
  probe.parquet                   colour-swap vs digit-swap activation changes per channel / neuron
  runs/<layer>.npz, .parquet      images, snapshots, curves; one table row per run
  images/<layer>/                 PNG grids per unit and objective: rows seeds, columns snapshots
  registry/<model>/<layer>.*      the same for registry models (optional)
  analysis/                       polysemanticity, image metrics, interpolation, the run table (CSV)
  section.json                    the report section (figures under results/report/figures/actmax/)

Every stage but the report trains, runs or optimises the CNN and imports its torch modules inside the function:
torch takes seconds to import, and the report stage (figures, unit images, section) never needs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from unitscope.fsutil import atomic_path, write_text_atomic
from unitscope.studies.actmax.grids import save_unit_grids
from unitscope.studies.actmax.runs import chosen_neurons, read_selection, save_run, unit_rows
from unitscope.studies.actmax.section import ReportInputs, mnist_unit_images, registry_outputs, write_actmax_section

if TYPE_CHECKING:  # annotations only: a stage's code inputs are what it runs (unitscope.codedeps)
    from unitscope.settings import ModelRef
    from unitscope.studies.actmax.colored_mnist import ColoredMnist
    from unitscope.studies.actmax.plan import (
        AnalysisSettings,
        DatasetSettings,
        OptimizationSettings,
        ProbeSettings,
        RegistryTarget,
        ReportSettings,
        TrainingSettings,
        UnitSettings,
    )

__all__ = [
    "run_analysis",
    "run_build_dataset",
    "run_optimize_layer",
    "run_probe",
    "run_registry_target",
    "run_report",
    "run_select_units",
    "run_train",
]


def run_build_dataset(settings: DatasetSettings, *, mnist_dir, out_path) -> ColoredMnist:
    """Stage: the Colored-MNIST arrays (.npz); prints the colour-class agreement per split."""
    # torch: only the stages that build, train or run the networks import it
    from unitscope.studies.actmax.colored_mnist import build_colored_mnist, load_mnist_sources, save_colored_mnist

    data = build_colored_mnist(
        load_mnist_sources(mnist_dir), rho=settings.rho, seed=settings.seed, target=settings.color_target
    )
    save_colored_mnist(data, out_path)
    for split in data.splits:
        agreement = float((data.colors[split] == data.labels[split]).mean())
        print(f"{split}: {len(data.labels[split])} images, colour = class colour for {agreement:.3f}", flush=True)
    return data


def run_train(
    settings: TrainingSettings, *, data_path, checkpoint_path, info_path, evaluation_path, threads: int = 1
) -> dict:
    """Stage: train the CNN, write its state_dict, its JSON description and the evaluation table (JSON)."""
    # torch: only the stages that build, train or run the networks import it
    import torch

    from unitscope.runtime import use_threads
    from unitscope.studies.actmax.colored_mnist import evaluate_model, load_colored_mnist, train_model

    use_threads(threads)
    data = load_colored_mnist(data_path)
    model, info = train_model(
        data,
        widths=tuple(settings.widths),
        epochs=settings.epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
        train_images=settings.train_images,
        seed=settings.seed,
    )
    table = evaluate_model(model, data)
    with atomic_path(checkpoint_path) as temp:
        torch.save(model.state_dict(), temp)
    write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")
    write_text_atomic(evaluation_path, json.dumps(table, indent=2) + "\n")
    for row in table:
        print(
            f"{row['set']}: accuracy {row['accuracy']:.3f} (n={row['n']}); "
            f"{row['errors_as_color_class']}/{row['errors']} errors name the colour's class",
            flush=True,
        )
    return {"info": info, "evaluation": table}


def run_select_units(settings: UnitSettings, *, data_path, checkpoint_path, info_path, out_path) -> dict:
    """Stage: units.json. Channels ranked on the unbiased evaluation set; D's target from the biased set."""
    # torch: only the stages that build, train or run the networks import it
    from unitscope.studies.actmax.colored_mnist import load_colored_mnist, load_trained_model
    from unitscope.studies.actmax.units import select_study_units

    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    selection = select_study_units(
        model,
        data,
        list(settings.layers),
        channels_per_layer=settings.channels_per_layer,
        extra_channels=settings.extra_channels,
        neurons_per_channel=settings.neurons_per_channel,
    )
    for layer, chosen in selection.items():
        print(f"{layer}: channels {[u['channel'] for u in chosen['units']]}", flush=True)
    document = {"selection_set": "unbiased", "target_class_set": "biased", "layers": selection}
    write_text_atomic(out_path, json.dumps(document, indent=2, default=lambda v: v.tolist()) + "\n")
    return selection


def run_probe(settings: ProbeSettings, *, data_path, checkpoint_path, info_path, units_path, out_path) -> pd.DataFrame:
    """Stage: probe.parquet, colour-swap vs digit-swap changes for every channel and every chosen neuron."""
    # torch: only the stages that build, train or run the networks import it
    from unitscope.studies.actmax.color_shape import color_shape_probe
    from unitscope.studies.actmax.colored_mnist import load_colored_mnist, load_trained_model

    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    selection = read_selection(units_path)
    probe = color_shape_probe(
        model,
        data.digits["unbiased"],
        data.labels["unbiased"],
        list(selection),
        groups=settings.groups,
        seed=settings.seed,
        target=data.target,
        neurons=chosen_neurons(selection),
    )
    with atomic_path(out_path) as temp:
        probe.to_parquet(temp, index=False)
    for layer, group in probe[probe["kind"] == "channel"].groupby("layer", sort=False):
        print(f"{layer}: median colour index {group['color_index'].median():.3f} ({len(group)} channels)", flush=True)
    return probe


def run_optimize_layer(
    settings: OptimizationSettings,
    *,
    layer: str,
    checkpoint_path,
    info_path,
    units_path,
    npz_path,
    table_path,
    images_dir,
    max_batch: int | None = None,
    threads: int = 1,
    device: str = "auto",
) -> pd.DataFrame:
    """Stage: every unit-run of one layer of the Colored-MNIST CNN, optimised together on `device` (extraction.device:
    auto, cpu, cuda or cuda:N; run-only, never a param)."""
    # torch: only the stages that build, train or run the networks import it
    from unitscope.runtime import pick_device, use_threads
    from unitscope.studies.actmax.colored_mnist import IMAGE_SHAPE, load_trained_model
    from unitscope.studies.actmax.render import optimize_inputs
    from unitscope.studies.actmax.specs import UnitSpecs

    use_threads(threads)
    on = pick_device(device)  # an unusable device is the first error, before anything is read
    model = load_trained_model(checkpoint_path, info_path).to(on)
    selection = read_selection(units_path, layer=layer)
    specs = UnitSpecs.from_rows(unit_rows(selection[layer], settings))
    print(f"{layer}: {len(specs)} runs in one batch, {settings.steps} steps", flush=True)
    result = optimize_inputs(
        model,
        layer,
        specs,
        image_shape=IMAGE_SHAPE,
        steps=int(settings.steps),
        lr=float(settings.lr),
        topk=int(settings.topk),
        l2_center=float(settings.l2_center),
        snapshot_every=int(settings.snapshot_every),
        max_batch=max_batch,
        device=on,
    )
    table = save_run(result, npz_path, table_path)
    with atomic_path(images_dir) as temp:
        temp.mkdir()
        grids = save_unit_grids(table, result.snapshots, result.snapshot_steps, temp)
    print(f"{layer}: {len(specs)} runs in {result.seconds:.1f} s on {on}; {grids} PNG grids", flush=True)
    return table


def run_registry_target(
    settings: RegistryTarget,
    model: ModelRef,
    *,
    npz_path,
    table_path,
    images_dir,
    faces_selection=None,
    threads: int = 1,
    device: str = "auto",
) -> pd.DataFrame:
    """Stage: channel-level actmax on a registry model (unitscope.models.registry.load_model), on `device`
    (extraction.device; run-only).

    `settings.unit_layer` (default: its layer) is the layer whose channels these are, when the optimised module
    sits inside it (the faces layer features.18 for features.18.1); its channel count must match. The table
    records it.
    """
    # torch and torchvision: seconds to import, only the stages that run the networks import them
    from unitscope.models.registry import load_model
    from unitscope.runtime import pick_device, use_threads
    from unitscope.studies.actmax.registry import optimize_registry_target, target_channels

    use_threads(threads)
    on = pick_device(device)  # an unusable device is the first error, before anything is read
    channels = target_channels(settings, faces_selection)
    if not channels:
        raise ValueError(f"actmax registry target {model.name} {settings.layer}: no channels to visualise")
    network = load_model(model).to(on)
    result, extra = optimize_registry_target(network, model.name, model.spec, settings, channels, device=on)
    table = save_run(result, npz_path, table_path, extra=extra)
    with atomic_path(images_dir) as temp:
        temp.mkdir()
        save_unit_grids(table, result.snapshots, result.snapshot_steps, temp)
    print(
        f"{model.name} {settings.layer}: {len(table)} runs ({extra['parameterization']}) in {result.seconds:.1f} s",
        flush=True,
    )
    return table


def run_analysis(
    settings: AnalysisSettings,
    *,
    data_path,
    checkpoint_path,
    info_path,
    run_paths: Sequence[tuple[str, str]],
    probe_path,
    out_dir,
    threads: int = 1,
) -> dict:
    """Stage: image metrics, polysemanticity (+ interpolation), colour-vs-shape table, the full run table."""
    # torch: only the stages that build, train or run the networks import it
    from unitscope.runtime import use_threads
    from unitscope.studies.actmax.analysis import analyse_layer, combine_layers, write_analysis
    from unitscope.studies.actmax.colored_mnist import load_colored_mnist, load_trained_model
    from unitscope.studies.actmax.image_metrics import image_color_shape

    use_threads(threads)
    data = load_colored_mnist(data_path)
    model = load_trained_model(checkpoint_path, info_path)
    layers = [analyse_layer(model, npz, table, settings) for npz, table in run_paths]
    reference = image_color_shape(data.tensors("unbiased")[0][:1000])
    tables = combine_layers(layers, reference, pd.read_parquet(probe_path), seed=settings.seed)
    write_analysis(out_dir, tables, layers)
    runs, units = tables["runs.csv"], tables["polysemanticity.parquet"]
    flagged = int(units["flagged"].sum())
    print(
        f"{len(runs)} runs; {len(units)} units judged for polysemanticity, {flagged} flagged; "
        f"{len(tables['interpolation.parquet'])} interpolation runs",
        flush=True,
    )
    return {"runs": len(runs), "units": len(units), "flagged": flagged}


def run_report(
    settings: ReportSettings,
    *,
    evaluation_path,
    model_info_path,
    units_path,
    probe_path,
    analysis_dir,
    run_paths: Sequence[tuple[str, str]],
    registry_paths: Sequence[tuple[str, str]] = (),
    unit_figures_dir,
    figure_paths: Mapping[str, str],
    section_path,
) -> dict:
    """Stage: the figures, every unit's images (for the unit pages) and the section; returns its summary.
    `run_paths` are the (npz, table) pairs of `settings.layers`, `registry_paths` those of `settings.registry`."""
    from unitscope.studies.actmax.figures import draw_figures  # matplotlib: only this stage draws

    inputs = ReportInputs.load(
        evaluation_path=evaluation_path,
        model_info_path=model_info_path,
        units_path=units_path,
        probe_path=probe_path,
        analysis_dir=analysis_dir,
        run_paths=dict(zip(settings.layers, run_paths, strict=True)),
    )
    draw_figures(inputs, figure_paths, settings.rho)
    registry_runs = [(*target, *paths) for target, paths in zip(settings.registry, registry_paths, strict=True)]
    with atomic_path(Path(unit_figures_dir)) as temp:
        temp.mkdir()
        registry = registry_outputs(registry_runs, temp)
        mnist_images = mnist_unit_images(inputs.runs, inputs.selection, temp)
    return write_actmax_section(section_path, inputs, registry, mnist_images, settings=settings)
