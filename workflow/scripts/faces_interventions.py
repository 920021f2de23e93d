"""Faces study: lesion / keep-only / random and matched controls, batched over conditions (tables)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.faces.stages import run_interventions

settings = snakemake.config["extraction"]  # run-only settings (device, batch size), deliberately not params
interventions, probe = snakemake.params.interventions, snakemake.params.probe
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_interventions(
        model_name=snakemake.params.model,
        model_spec=snakemake.params.spec,
        layer=snakemake.params.layer,
        stores=dict(zip(snakemake.params.datasets, snakemake.input.stores, strict=True)),
        manifests=dict(zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)),
        face_dataset=snakemake.params.datasets[0],
        selection=snakemake.input.selection,
        rule=snakemake.params.rule,
        ablation=interventions["ablation"],
        n_random=interventions["n_random"],
        n_matched=interventions["n_matched"],
        matched_candidates=interventions["matched_candidates"],
        folds=probe["folds"],
        C=probe["C"],
        fixed_train_fraction=probe["fixed_train_fraction"],
        pca_levels=snakemake.params.pca_levels,
        seed=snakemake.params.seed,
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        out_conditions=snakemake.output.conditions,
        out_controls=snakemake.output.controls,
        out_pca=snakemake.output.pca,
        device=settings["device"],
        batch_size=settings["batch_size"],
        num_workers=settings["num_workers"],
    )
