"""Faces study: the report section (conclusion from the numbers, body, summary, units)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.faces.plan import SectionSettings
from unitscope.studies.faces.stages import run_section

with log_to(snakemake.log[0]):
    run_section(
        SectionSettings.from_params(snakemake.params.settings),
        selection=snakemake.input.selection,
        pca=snakemake.input.pca,
        conditions=snakemake.input.conditions,
        controls=snakemake.input.controls,
        probes=snakemake.input.probes,
        categories=snakemake.input.categories,
        selectivity=snakemake.input.selectivity,
        heatmaps=snakemake.input.heatmaps,
        out_path=snakemake.output[0],
    )
