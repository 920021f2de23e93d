"""Figure: one activation store's channel statistics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
import numpy as np
import zarr

from unitscope.logs import log_to
from unitscope.report.figures import activation_figure

with log_to(snakemake.log[0]):
    means = np.asarray(zarr.open_group(store=snakemake.input.store, mode="r")["means"][:])
    title = f"{snakemake.wildcards.model} · {snakemake.wildcards.layer} · {snakemake.wildcards.dataset}"
    activation_figure(means, title, snakemake.output[0])
