"""The dissection study's report section (results/dissection/section.json) and its summary figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.dissection.plan import SectionSettings
from unitscope.studies.dissection.stages import run_section

inputs, outputs = snakemake.input, snakemake.output
with log_to(snakemake.log[0]):
    run_section(
        SectionSettings.from_params(snakemake.params.settings),
        layer_paths=list(inputs.layers),
        unit_paths=list(inputs.units),
        tallies_path=inputs.tallies,
        rotation_path=inputs.rotation[0] if inputs.rotation else None,
        depth_figure_path=outputs.depth_figure,
        rotation_figure_path=outputs.rotation_figure[0] if outputs.rotation_figure else None,
        unit_figures=dict(snakemake.params.unit_figures),
        unit_image_dirs=dict(snakemake.params.unit_images),
        out_path=outputs.section,
    )
