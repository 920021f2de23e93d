"""actmax stage (optional): channel-level activation maximisation on a registry model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.settings import ModelRef
from unitscope.studies.actmax.plan import RegistryTarget
from unitscope.studies.actmax.stages import run_registry_target

with log_to(snakemake.log[0]):
    run_registry_target(
        RegistryTarget.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        npz_path=snakemake.output.npz,
        table_path=snakemake.output.table,
        images_dir=snakemake.output.images,
        faces_selection=snakemake.input.faces_selection or None,
        threads=snakemake.threads,
        device=snakemake.config["extraction"]["device"],  # run-only: deliberately not params
    )
