"""Faces study: the selected channels' activation per image set and per-channel selectivity (tables + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.plan import CategorySettings
from unitscope.studies.faces.stages import run_categories

settings = CategorySettings.from_params(snakemake.params.settings)
with log_to(snakemake.log[0]):
    run_categories(
        settings,
        stores=settings.by_dataset(snakemake.input.stores),
        selection=snakemake.input.selection,
        out_categories=snakemake.output.categories,
        out_selectivity=snakemake.output.selectivity,
        out_figure=snakemake.output.figure,
    )
