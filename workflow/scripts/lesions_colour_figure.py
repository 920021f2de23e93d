"""Lesions study: the colour-units figure from the stage's comparison table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.lesions.stages import run_colour_figure

with log_to(snakemake.log[0]):
    run_colour_figure(compared=snakemake.input.compared, out_figure=snakemake.output.figure)
