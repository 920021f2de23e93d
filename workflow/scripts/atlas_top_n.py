"""Atlas: one layer's top-N exemplars of every unit, from the peaks its extraction stores hold (nefesi's top-N)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.atlas.plan import TopNSettings
from unitscope.studies.atlas.stages import run_top_n

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_top_n(
        TopNSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        stores=list(snakemake.input.stores),
        manifests=list(snakemake.input.manifests),
        out_table=snakemake.output.table,
        out_geometry=snakemake.output.geometry,
    )
