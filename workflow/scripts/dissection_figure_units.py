"""Figures of one dissected layer: its top units with their top images, unit and concept masks outlined, and one
such figure per unit the section lists (for the unit pages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.dissection.plan import UnitFigureSettings
from unitscope.studies.dissection.stages import run_unit_figures

with log_to(snakemake.log[0]):
    run_unit_figures(
        UnitFigureSettings.from_params(snakemake.params.settings),
        model=snakemake.wildcards.model,
        layer=snakemake.wildcards.layer,
        units_path=snakemake.input.units,
        tallies_path=snakemake.input.tallies,
        out_path=snakemake.output.figure,
        images_dir=snakemake.output.unit_images,
    )
