"""nefesi image decomposition of one image: its most relevant channels, their NFs drawn on their fields."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.settings import ModelRef
from unitscope.studies.nefesi.plan import DecompositionSettings
from unitscope.studies.nefesi.stages import run_decomposition

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_decomposition(
        DecompositionSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        dataset=snakemake.wildcards.dataset,
        index=int(snakemake.wildcards.index),
        images_path=snakemake.input.images,
        exemplars_path=snakemake.input.exemplars,
        nf_path=snakemake.input.nf,
        info_path=snakemake.input.info,
        out_figure=snakemake.output.figure,
        out_record=snakemake.output.record,
    )
