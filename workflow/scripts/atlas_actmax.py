"""Atlas: activation-maximisation images of one shard's units, optimised together (batched over units x seeds)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.atlas.plan import ActmaxSettings
from unitscope.studies.atlas.stages import run_actmax, run_settings

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_actmax(
        ActmaxSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        out_images=snakemake.output.images,
        out_table=snakemake.output.table,
        run=run_settings(snakemake.config),  # run-only (device): deliberately not params
    )
