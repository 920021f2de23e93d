"""Lesions study: colour and shape units of the Colored-MNIST CNN lesioned against random sets (tables)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.studies.lesions.plan import ColourUnitsSettings
from unitscope.studies.lesions.stages import run_colour_units

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_colour_units(
        ColourUnitsSettings.from_params(snakemake.params.settings),
        data=snakemake.input.data,
        checkpoint=snakemake.input.checkpoint,
        info=snakemake.input.info,
        probe=snakemake.input.probe,
        out_conditions=snakemake.output.conditions,
        out_compared=snakemake.output.compared,
        out_layers=snakemake.output.layers,
        run=RunSettings.from_config(snakemake.config),  # run-only (device): deliberately not params
    )
