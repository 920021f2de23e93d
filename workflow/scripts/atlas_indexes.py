"""Atlas: nefesi's selectivity indexes of one shard's units, from the layer's top-N table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.atlas.plan import IndexesSettings
from unitscope.studies.atlas.stages import run_indexes, run_settings

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_indexes(
        IndexesSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        table=snakemake.input.table,
        manifests=list(snakemake.input.manifests),
        out_table=snakemake.output[0],
        run=run_settings(snakemake.config),  # run-only (device, loader workers): deliberately not params
    )
