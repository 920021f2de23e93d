"""Dissection stage: one model's configured layers against the concept dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.dissection.plan import DissectSettings
from unitscope.studies.dissection.stages import run_dissection

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_dissection(
        DissectSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        units_path=snakemake.output.units,
        layers_path=snakemake.output.layers,
        tallies_path=snakemake.output.tallies,
        batch_size=snakemake.config["dissection"]["batch_size"],  # run-only setting
        device=snakemake.config["extraction"]["device"],  # run-only too
    )
