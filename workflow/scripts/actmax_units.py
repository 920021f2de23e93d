"""actmax stage: choose the units (channels, neurons, target classes) to visualise."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import UnitSettings
from unitscope.studies.actmax.stages import run_select_units

with log_to(snakemake.log[0]):
    run_select_units(
        UnitSettings.from_params(snakemake.params.settings),
        data_path=snakemake.input.data,
        checkpoint_path=snakemake.input.checkpoint,
        info_path=snakemake.input.info,
        out_path=snakemake.output[0],
    )
