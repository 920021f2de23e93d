"""Model stage: build one registered model and write its card."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.models.card import run_model_card

with log_to(snakemake.log[0]):
    run_model_card(
        snakemake.wildcards.model,
        snakemake.params.spec,
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        eval_manifest_path=(snakemake.input.eval_manifest or [None])[0],
        out_path=snakemake.output[0],
        threads=snakemake.threads,
    )
