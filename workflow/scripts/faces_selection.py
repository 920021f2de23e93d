"""Faces study: both selection rules over the layer's channels (table + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.stages import run_selection

with log_to(snakemake.log[0]):
    run_selection(
        stores=dict(zip(snakemake.params.datasets, snakemake.input.stores, strict=True)),
        face_dataset=snakemake.params.datasets[0],
        layer=snakemake.params.layer,
        percentile=snakemake.params.percentile,
        fdr=snakemake.params.fdr,
        out_table=snakemake.output.table,
        out_figure=snakemake.output.figure,
    )
