"""Lesions study: class units lesioned against random and matched sets, batched over conditions (tables)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef
from unitscope.studies.lesions.plan import ClassUnitsSettings
from unitscope.studies.lesions.stages import run_class_units

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_class_units(
        ClassUnitsSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        store=snakemake.input.store,
        manifest=snakemake.input.manifest,
        exemplars=snakemake.input.exemplars,
        images=snakemake.input.images,
        out_units=snakemake.output.units,
        out_conditions=snakemake.output.conditions,
        out_sets=snakemake.output.sets,
        out_pooled=snakemake.output.pooled,
        out_agreement=snakemake.output.agreement,
        out_info=snakemake.output.info,
        run=RunSettings.from_config(snakemake.config),  # run-only (device, batch size): deliberately not params
    )
