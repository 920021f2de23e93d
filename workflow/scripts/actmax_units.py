"""actmax stage: choose the units (channels, neurons, target classes) to visualise."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.stages import run_select_units

units = snakemake.params.units
with log_to(snakemake.log[0]):
    run_select_units(
        data_path=snakemake.input.data,
        checkpoint_path=snakemake.input.checkpoint,
        info_path=snakemake.input.info,
        out_path=snakemake.output[0],
        layers=units["layers"],
        channels_per_layer=units["channels_per_layer"],
        extra_channels=units["extra_channels"],
        neurons_per_channel=units["neurons_per_channel"],
    )
