"""Atlas: results/atlas/index.json, the layer tables built (no torch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.atlas.stages import run_index

with log_to(snakemake.log[0]):
    run_index(tables=list(snakemake.input.tables), out_path=snakemake.output[0])
