"""Faces study: the interventions figure (control nulls, selected set, intact) and its one-row verdict summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.stages import run_interventions_figure

with log_to(snakemake.log[0]):
    run_interventions_figure(
        conditions=snakemake.input.conditions,
        controls=snakemake.input.controls,
        pca=snakemake.input.pca,
        out_figure=snakemake.output.figure,
        out_verdicts=snakemake.output.verdicts,
    )
