"""Atlas: one shard's units' mean activation per dataset, shared category and label (no torch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.atlas.plan import CategoriesSettings
from unitscope.studies.atlas.stages import run_categories

with log_to(snakemake.log[0]):
    run_categories(
        CategoriesSettings.from_params(snakemake.params.settings),
        stores=list(snakemake.input.stores),
        manifests=list(snakemake.input.manifests),
        out_table=snakemake.output[0],
    )
