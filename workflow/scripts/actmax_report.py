"""actmax stage: the study's figures and report section."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.figures import FIGURES
from unitscope.studies.actmax.plan import ReportSettings
from unitscope.studies.actmax.stages import run_report

with log_to(snakemake.log[0]):
    run_report(
        ReportSettings.from_params(snakemake.params.settings),
        evaluation_path=snakemake.input.evaluation,
        model_info_path=snakemake.input.info,
        units_path=snakemake.input.units,
        probe_path=snakemake.input.probe,
        analysis_dir=snakemake.input.analysis,
        run_paths=list(zip(snakemake.input.npz, snakemake.input.tables, strict=True)),
        registry_paths=list(zip(snakemake.input.registry_npz, snakemake.input.registry, strict=True)),
        unit_figures_dir=snakemake.output.unit_figures,
        figure_paths={name: getattr(snakemake.output, name) for name in FIGURES},
        section_path=snakemake.output.section,
    )
