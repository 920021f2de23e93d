"""nefesi report section: headline numbers per layer, figures with captions, singled-out units and their figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.nefesi.plan import SectionSettings
from unitscope.studies.nefesi.stages import run_section

with log_to(snakemake.log[0]):
    run_section(
        SectionSettings.from_params(snakemake.params.settings),
        models=dict(snakemake.params.models),
        out_section=snakemake.output.section,
        out_units=snakemake.output.units,
    )
