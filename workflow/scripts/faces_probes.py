"""Faces study: a face-vs-non-face probe per layer (tables + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.faces.plan import ProbeSettings
from unitscope.studies.faces.stages import run_probes

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_probes(
        ProbeSettings.from_params(snakemake.params.settings),
        stores=list(snakemake.input.stores),
        out_table=snakemake.output.table,
        out_coefficients=snakemake.output.coefficients,
        out_figure=snakemake.output.figure,
    )
