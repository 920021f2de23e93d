"""actmax stage (optional): channel-level activation maximisation on a registry model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.stages import run_registry_target

with log_to(snakemake.log[0]):
    run_registry_target(
        model_name=snakemake.wildcards.model,
        spec=snakemake.params.spec,
        target=snakemake.params.target,
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        npz_path=snakemake.output.npz,
        table_path=snakemake.output.table,
        images_dir=snakemake.output.images,
        faces_selection=snakemake.input.faces_selection or None,
        threads=snakemake.threads,
    )
