"""Extraction stage: one (model, dataset, layer) to a Zarr store."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.extract import run_extraction
from unitscope.logs import log_to
from unitscope.runtime import use_threads

settings = snakemake.config["extraction"]  # (run-only settings, deliberately not params)
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_extraction(
        model_name=snakemake.wildcards.model,
        model_spec=snakemake.params.spec,
        dataset_name=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        layer=snakemake.wildcards.layer,
        out_path=snakemake.output[0],
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        save_maps=snakemake.params.save_maps,
        batch_size=settings["batch_size"],
        num_workers=settings["num_workers"],
        device=settings["device"],
        maps_chunk_images=settings["maps_chunk_images"],
        params={"save_maps": snakemake.params.save_maps, "model": snakemake.params.spec},
    )
