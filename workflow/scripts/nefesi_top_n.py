"""nefesi stage 1: top-N exemplars of every channel of a target's layers, from the peaks its extraction stores hold."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.studies.nefesi.plan import TopNSettings
from unitscope.studies.nefesi.stages import run_top_n

with log_to(snakemake.log[0]):
    settings = TopNSettings.from_params(snakemake.params.settings)
    run_top_n(
        settings,
        manifests=dict(zip(settings.datasets, snakemake.input.manifests, strict=True)),
        stores=list(snakemake.input.stores),
        out_exemplars=snakemake.output.exemplars,
        out_images=snakemake.output.images,
    )
