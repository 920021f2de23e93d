"""Faces study: the selected channels' activation per image set and per-channel selectivity (tables + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.stages import run_categories

with log_to(snakemake.log[0]):
    run_categories(
        stores=dict(zip(snakemake.params.datasets, snakemake.input.stores, strict=True)),
        face_dataset=snakemake.params.datasets[0],
        layer=snakemake.params.layer,
        selection=snakemake.input.selection,
        rule=snakemake.params.rule,
        n_bootstrap=snakemake.params.n_bootstrap,
        seed=snakemake.params.seed,
        out_categories=snakemake.output.categories,
        out_selectivity=snakemake.output.selectivity,
        out_figure=snakemake.output.figure,
    )
