"""Publish one layer's store from its extraction pass under its own path (hard links: no copy, no torch)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.fsutil import publish_tree
from unitscope.logs import log_to

with log_to(snakemake.log[0]):
    publish_tree(Path(snakemake.input.extraction_pass) / f"{snakemake.wildcards.layer}.zarr", snakemake.output[0])
