"""Faces study: a face-vs-non-face probe per layer (tables + figure)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.faces.stages import run_probes

datasets, stores = snakemake.params.datasets, list(snakemake.input.stores)
layer_stores = {
    layer: dict(zip(datasets, stores[i * len(datasets) : (i + 1) * len(datasets)], strict=True))
    for i, layer in enumerate(snakemake.params.layers)
}
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_probes(
        layer_stores=layer_stores,
        face_dataset=datasets[0],
        folds=snakemake.params.folds,
        C=snakemake.params.C,
        seed=snakemake.params.seed,
        out_table=snakemake.output.table,
        out_coefficients=snakemake.output.coefficients,
        out_figure=snakemake.output.figure,
    )
