"""Dissection stage: the rotation experiment on one layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.dissection.stages import run_rotation

params = snakemake.params
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_rotation(
        model_name=params.model,
        model_spec=params.spec,
        layer=params.layer,
        alphas=params.alphas,
        seeds=params.seeds,
        concepts_config=params.concepts,
        mask_size=params.rotation_mask_size,
        quantile=params.quantile,
        iou_threshold=params.iou_threshold,
        seed=params.seed,
        data_dir=params.data_dir,
        torch_home=params.torch_home,
        resources_dir=params.resources_dir,
        out_path=snakemake.output[0],
        batch_size=snakemake.config["dissection"]["batch_size"],  # run-only setting
    )
