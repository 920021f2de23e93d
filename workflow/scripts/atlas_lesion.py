"""Atlas: each unit of one shard lesioned alone through the network after its layer, batched over the units."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.atlas.plan import LesionSettings
from unitscope.studies.atlas.stages import run_lesion, run_settings

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_lesion(
        LesionSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        stores=list(snakemake.input.stores),
        manifests=list(snakemake.input.manifests),
        out_table=snakemake.output[0],
        run=run_settings(snakemake.config),  # run-only (device, batch size): deliberately not params
    )
