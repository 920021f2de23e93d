"""Faces study: maps of the top face channels over example images (table + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.faces.stages import run_heatmaps

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_heatmaps(
        model_name=snakemake.params.model,
        model_spec=snakemake.params.spec,
        layer=snakemake.params.layer,
        manifests=dict(zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)),
        selection=snakemake.input.selection,
        rule=snakemake.params.rule,
        n_examples=snakemake.params.heatmaps["n_examples"],
        n_channels=snakemake.params.heatmaps["n_channels"],
        seed=snakemake.params.seed,
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        out_table=snakemake.output.table,
        out_figure=snakemake.output.figure,
    )
