"""nefesi figures of one layer: Neuron Feature grid and the top channels of each index."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.nefesi.plan import LayerFiguresSettings
from unitscope.studies.nefesi.stages import run_layer_figures

with log_to(snakemake.log[0]):
    run_layer_figures(
        LayerFiguresSettings.from_params(snakemake.params.settings),
        table_path=snakemake.input.table,
        nf_path=snakemake.input.nf,
        info_path=snakemake.input.info,
        out_grid=snakemake.output.grid,
        out_top=snakemake.output.top,
    )
