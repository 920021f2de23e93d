"""Figure: images included / excluded per dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
import pandas as pd

from unitscope.logs import log_to
from unitscope.report.figures import datasets_figure

with log_to(snakemake.log[0]):
    manifests = {
        name: pd.read_parquet(path)
        for name, path in zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)
    }
    datasets_figure(manifests, snakemake.output[0])
