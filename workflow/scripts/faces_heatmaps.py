"""Faces study: maps of the top face channels over example images (table + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.faces.plan import HeatmapSettings
from unitscope.studies.faces.stages import run_heatmaps

settings = HeatmapSettings.from_params(snakemake.params.settings)
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_heatmaps(
        settings,
        ModelRef.from_params(snakemake.params.model),
        manifests=settings.by_dataset(snakemake.input.manifests),
        selection=snakemake.input.selection,
        out_table=snakemake.output.table,
        out_figure=snakemake.output.figure,
    )
