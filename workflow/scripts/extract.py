"""Extraction stage: one forward pass of a model over a dataset, writing a store per requested layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.extract import run_extraction
from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_extraction(
        ModelRef.from_params(snakemake.params.model),
        dataset_name=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        layers=snakemake.params.layers,
        out_dir=snakemake.output[0],
        run=RunSettings.from_config(snakemake.config),  # run-only settings, deliberately not params
    )
