"""nefesi figures of one model: index histograms of its layers and a hierarchical decomposition."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.nefesi.plan import ModelFiguresSettings
from unitscope.studies.nefesi.stages import run_model_figures

with log_to(snakemake.log[0]):
    run_model_figures(
        ModelFiguresSettings.from_params(snakemake.params.settings),
        model_name=snakemake.wildcards.model,
        table_paths=list(snakemake.input.tables),
        nf_paths=list(snakemake.input.nfs),
        hierarchy_paths=list(snakemake.input.hierarchies),
        out_histograms=snakemake.output.histograms,
        out_hierarchy=snakemake.output.hierarchy,
        out_tree=snakemake.output.tree,
    )
