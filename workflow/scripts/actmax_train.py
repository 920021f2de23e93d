"""actmax stage: train the Colored-MNIST CNN, write its checkpoint, description and evaluation table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import TrainingSettings
from unitscope.studies.actmax.stages import run_train

with log_to(snakemake.log[0]):
    run_train(
        TrainingSettings.from_params(snakemake.params.settings),
        data_path=snakemake.input.data,
        checkpoint_path=snakemake.output.checkpoint,
        info_path=snakemake.output.info,
        evaluation_path=snakemake.output.evaluation,
        threads=snakemake.threads,
    )
