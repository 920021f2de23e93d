"""Dissection stage: the rotation experiment on one layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.dissection.plan import RotationSettings
from unitscope.studies.dissection.stages import run_rotation

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_rotation(
        RotationSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        out_path=snakemake.output[0],
        batch_size=snakemake.config["dissection"]["batch_size"],  # run-only setting
        device=snakemake.config["extraction"]["device"],  # run-only too
        threads=snakemake.threads,  # dissections at a time
    )
