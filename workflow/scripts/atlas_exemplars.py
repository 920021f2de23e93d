"""Atlas: one shard's Neuron Features, best exemplar crops and exemplar table, from the layer's top-N table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.atlas.plan import ExemplarsSettings
from unitscope.studies.atlas.stages import run_exemplars

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_exemplars(
        ExemplarsSettings.from_params(snakemake.params.settings),
        table=snakemake.input.table,
        geometry=snakemake.input.geometry,
        manifests=list(snakemake.input.manifests),
        out_images=snakemake.output.images,
        out_table=snakemake.output.table,
    )
