"""Figures of one dissected layer: its top units with their top images, unit and concept masks outlined, and one
such figure per unit the section lists (for the unit pages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.dissection.stages import run_unit_figures

params = snakemake.params
with log_to(snakemake.log[0]):
    run_unit_figures(
        units_path=snakemake.input.units,
        tallies_path=snakemake.input.tallies,
        model=snakemake.wildcards.model,
        layer=snakemake.wildcards.layer,
        n_units=params.n_units,
        concepts_config=params.concepts,
        data_dir=params.data_dir,
        resources_dir=params.resources_dir,
        seed=params.seed,
        quantile=params.quantile,
        out_path=snakemake.output.figure,
        images_dir=snakemake.output.unit_images,
    )
