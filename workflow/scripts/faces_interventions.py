"""Faces study: lesion / keep-only / random and matched controls, batched over conditions (tables)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef
from unitscope.studies.faces.plan import InterventionSettings
from unitscope.studies.faces.stages import run_interventions

settings = InterventionSettings.from_params(snakemake.params.settings)
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_interventions(
        settings,
        ModelRef.from_params(snakemake.params.model),
        stores=settings.by_dataset(snakemake.input.stores),
        manifests=settings.by_dataset(snakemake.input.manifests),
        selection=snakemake.input.selection,
        out_conditions=snakemake.output.conditions,
        out_controls=snakemake.output.controls,
        out_pca=snakemake.output.pca,
        run=RunSettings.from_config(snakemake.config),  # run-only (device, batch size): deliberately not params
    )
