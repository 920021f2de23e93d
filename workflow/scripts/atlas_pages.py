"""Atlas: one layer's browsable index page and every unit's page (no torch unless the dissection's IoU is read)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.atlas.pages import PageSettings
from unitscope.studies.atlas.stages import run_pages

with log_to(snakemake.log[0]):
    run_pages(
        PageSettings.from_params(snakemake.params.settings),
        table=snakemake.input.table,
        out_path=snakemake.output.index,
        units_dir=snakemake.output.units,
        exemplars=list(snakemake.input.exemplars),
        tallies=list(snakemake.input.tallies),
        sections=list(snakemake.input.sections),
        actmax=list(snakemake.input.actmax),
    )
