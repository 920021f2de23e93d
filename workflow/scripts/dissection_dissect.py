"""Dissection stage: one model's configured layers against the concept dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.dissection.stages import run_dissection

params = snakemake.params
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_dissection(
        model_name=snakemake.wildcards.model,
        model_spec=params.spec,
        layers=params.layers,
        concepts_config=params.concepts,
        mask_size=params.mask_size,
        quantile=params.quantile,
        iou_threshold=params.iou_threshold,
        top_k=params.top_images,
        seed=params.seed,
        data_dir=params.data_dir,
        torch_home=params.torch_home,
        resources_dir=params.resources_dir,
        units_path=snakemake.output.units,
        layers_path=snakemake.output.layers,
        tallies_path=snakemake.output.tallies,
        batch_size=snakemake.config["dissection"]["batch_size"],  # run-only setting
    )
