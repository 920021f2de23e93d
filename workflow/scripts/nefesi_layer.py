"""nefesi stage 2: probes, Neuron Features, index table and hierarchy weights of one layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import RunSettings, use_threads
from unitscope.settings import ModelRef
from unitscope.studies.nefesi.plan import LayerSettings
from unitscope.studies.nefesi.stages import run_layer

with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_layer(
        LayerSettings.from_params(snakemake.params.settings),
        ModelRef.from_params(snakemake.params.model),
        exemplars_path=snakemake.input.exemplars,
        images_path=snakemake.input.images,
        out_table=snakemake.output.table,
        out_nf=snakemake.output.nf,
        out_hierarchy=snakemake.output.hierarchy,
        out_info=snakemake.output.info,
        run=RunSettings.from_config(snakemake.config),  # run-only settings (workers, device), not params
        probe_batch_size=snakemake.config["nefesi"]["probe_batch_size"],  # run-only too
    )
