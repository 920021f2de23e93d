"""Report stage: the HTML page and results/summary.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.report.landing import build_report

with log_to(snakemake.log[0]):
    figures = {"datasets": snakemake.input.datasets_figure}
    for (model, dataset, layer), path in zip(snakemake.params.targets, snakemake.input.activation_figures, strict=True):
        figures[f"activations/{model}/{dataset}/{layer}"] = path
    build_report(
        manifests=dict(zip(snakemake.params.datasets, snakemake.input.manifests, strict=True)),
        cards=dict(zip(snakemake.params.models, snakemake.input.cards, strict=True)),
        stores=list(snakemake.input.stores),
        figures=figures,
        sections=list(snakemake.input.sections),
        atlas=list(snakemake.input.atlas),
        config=snakemake.params.config,
        html_path=snakemake.output.html,
        summary_path=snakemake.output.summary,
        units_dir=snakemake.output.units,
        benchmarks_dir="benchmarks",  # every rule's benchmark: (read, not inputs: see report/cost.py)
    )
