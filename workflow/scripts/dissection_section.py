"""The dissection study's report section (results/dissection/section.json) and its summary figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.dissection.section import relative_figure, run_section

inputs, outputs = snakemake.input, snakemake.output
with log_to(snakemake.log[0]):
    figures = {"depth": outputs.depth_figure}
    if outputs.rotation_figure:
        figures["rotation"] = outputs.rotation_figure[0]
    run_section(
        layer_paths=list(inputs.layers),
        unit_paths=list(inputs.units),
        tallies_path=inputs.tallies,
        rotation_path=inputs.rotation[0] if inputs.rotation else None,
        settings=snakemake.params.settings,
        figures=figures,
        unit_figures={key: relative_figure(path) for key, path in snakemake.params.unit_figures.items()},
        unit_image_dirs=dict(snakemake.params.unit_images),
        out_path=outputs.section,
    )
