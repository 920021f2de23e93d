"""Data stage: draw one dataset's images and write its manifest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.data.manifest import run_manifest
from unitscope.logs import log_to

with log_to(snakemake.log[0]):
    run_manifest(
        snakemake.wildcards.dataset,
        snakemake.params.dataset,
        seed=snakemake.params.seed,
        data_dir=snakemake.params.data_dir,
        resources_dir=snakemake.params.resources_dir,
        out_path=snakemake.output[0],
    )
