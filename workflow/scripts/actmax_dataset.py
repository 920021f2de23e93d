"""actmax stage: Biased Colored-MNIST arrays from the MNIST files."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import DatasetSettings
from unitscope.studies.actmax.stages import run_build_dataset

with log_to(snakemake.log[0]):
    run_build_dataset(
        DatasetSettings.from_params(snakemake.params.settings),
        mnist_dir=snakemake.params.mnist_dir,
        out_path=snakemake.output[0],
    )
