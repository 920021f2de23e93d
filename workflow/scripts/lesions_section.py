"""Lesions study: the report section (conclusion, card, claims, body, summary, units)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.lesions.plan import SectionSettings
from unitscope.studies.lesions.stages import run_section

with log_to(snakemake.log[0]):
    run_section(
        SectionSettings.from_params(snakemake.params.settings),
        sets=snakemake.input.sets,
        pooled=snakemake.input.pooled,
        units_table=snakemake.input.units,
        agreement=snakemake.input.agreement,
        info=snakemake.input.info,
        methods=snakemake.input.methods,
        colour_compared=snakemake.input.get("colour_compared"),
        colour_layers=snakemake.input.get("colour_layers"),
        concept_compared=snakemake.input.get("concept_compared"),
        out_section=snakemake.output.section,
    )
