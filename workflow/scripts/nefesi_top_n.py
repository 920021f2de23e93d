"""nefesi stage 1: top-N exemplars of every channel of a target's layers, in one pass over its images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef
from unitscope.studies.nefesi.plan import TopNSettings
from unitscope.studies.nefesi.stages import run_top_n

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    settings = TopNSettings.from_params(snakemake.params.settings)
    run_top_n(
        settings,
        ModelRef.from_params(snakemake.params.model),
        manifests=dict(zip(settings.datasets, snakemake.input.manifests, strict=True)),
        out_exemplars=snakemake.output.exemplars,
        out_images=snakemake.output.images,
        run=RunSettings.from_config(snakemake.config),  # run-only settings (batch size, workers, device), not params
    )
