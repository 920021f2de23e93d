"""Lesions study: the class-units figure from the stage's tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.lesions.stages import run_class_figure

with log_to(snakemake.log[0]):
    run_class_figure(
        pooled=snakemake.input.pooled,
        units=snakemake.input.units,
        agreement=snakemake.input.agreement,
        out_figure=snakemake.output.figure,
    )
