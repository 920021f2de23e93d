"""Atlas: one layer's table, the shards' evidence joined with nefesi's and the dissection's columns (no torch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.atlas.plan import GatherSettings
from unitscope.studies.atlas.stages import run_gather

with log_to(snakemake.log[0]):
    run_gather(
        GatherSettings.from_params(snakemake.params.settings),
        evidence={kind: list(getattr(snakemake.input, kind)) for kind in snakemake.params.evidence},
        nefesi=list(snakemake.input.nefesi),
        dissection=list(snakemake.input.dissection),
        out_table=snakemake.output[0],
    )
