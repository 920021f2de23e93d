"""nefesi figures of one layer: Neuron Feature grid and the top channels of each index."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.nefesi.stages import run_layer_figures

with log_to(snakemake.log[0]):
    run_layer_figures(
        table_path=snakemake.input.table,
        nf_path=snakemake.input.nf,
        info_path=snakemake.input.info,
        order_by=snakemake.params.order_by,
        top_channels=snakemake.params.top_channels,
        out_grid=snakemake.output.grid,
        out_top=snakemake.output.top,
    )
