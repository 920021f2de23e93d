"""nefesi stage 1: top-N exemplars of every channel of a target's layers, in one pass over its images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.nefesi.stages import run_top_n

settings = snakemake.config["extraction"]  # run-only settings (batch size, workers, device), not params
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_top_n(
        model_name=snakemake.wildcards.model,
        spec=snakemake.params.spec,
        manifests=dict(zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)),
        layers=list(snakemake.params.layers),
        top_n=snakemake.params.top_n,
        max_images=snakemake.params.max_images,
        class_by=snakemake.params.class_by,
        label_names=dict(snakemake.params.label_names),
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        out_exemplars=snakemake.output.exemplars,
        out_images=snakemake.output.images,
        batch_size=settings["batch_size"],
        num_workers=settings["num_workers"],
        device=settings["device"],
    )
