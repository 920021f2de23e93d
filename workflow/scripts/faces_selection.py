"""Faces study: both selection rules over the layer's channels (table + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.plan import SelectionSettings
from unitscope.studies.faces.stages import run_selection

settings = SelectionSettings.from_params(snakemake.params.settings)
with log_to(snakemake.log[0]):
    run_selection(
        settings,
        stores=settings.by_dataset(snakemake.input.stores),
        out_table=snakemake.output.table,
        out_figure=snakemake.output.figure,
    )
