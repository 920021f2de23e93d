"""actmax stage: colour-swap vs digit-swap activation changes of every channel and chosen neuron."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import ProbeSettings
from unitscope.studies.actmax.stages import run_probe

with log_to(snakemake.log[0]):
    run_probe(
        ProbeSettings.from_params(snakemake.params.settings),
        data_path=snakemake.input.data,
        checkpoint_path=snakemake.input.checkpoint,
        info_path=snakemake.input.info,
        units_path=snakemake.input.units,
        out_path=snakemake.output[0],
    )
