"""Lesions study: each concept's detectors lesioned on the dissection's frames against random and matched sets."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef
from unitscope.studies.lesions.plan import ConceptUnitsSettings
from unitscope.studies.lesions.stages import run_concept_units

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_concept_units(
        ConceptUnitsSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        units=snakemake.input.units,
        out_conditions=snakemake.output.conditions,
        out_compared=snakemake.output.compared,
        run=RunSettings.from_config(snakemake.config),  # run-only: deliberately not params
    )
