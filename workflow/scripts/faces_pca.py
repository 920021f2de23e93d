"""Faces study: PCA of the faces' channel means (table + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.plan import PcaSettings
from unitscope.studies.faces.stages import run_pca

with log_to(snakemake.log[0]):
    run_pca(
        PcaSettings.from_params(snakemake.params.settings),
        store=snakemake.input.store,
        out_table=snakemake.output.table,
        out_figure=snakemake.output.figure,
    )
