"""actmax stage: every unit-run of one layer, optimised together as one batch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import OptimizationSettings
from unitscope.studies.actmax.stages import run_optimize_layer

with log_to(snakemake.log[0]):
    run_optimize_layer(
        OptimizationSettings.from_params(snakemake.params.settings),
        layer=snakemake.wildcards.layer,
        checkpoint_path=snakemake.input.checkpoint,
        info_path=snakemake.input.info,
        units_path=snakemake.input.units,
        npz_path=snakemake.output.npz,
        table_path=snakemake.output.table,
        images_dir=snakemake.output.images,
        threads=snakemake.threads,
        device=snakemake.config["extraction"]["device"],  # run-only: deliberately not params
    )
