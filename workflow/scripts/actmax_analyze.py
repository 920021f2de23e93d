"""actmax stage: image metrics, polysemanticity and interpolation, colour vs shape per layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.actmax.plan import AnalysisSettings
from unitscope.studies.actmax.stages import run_analysis

with log_to(snakemake.log[0]):
    run_analysis(
        AnalysisSettings.from_params(snakemake.params.settings),
        data_path=snakemake.input.data,
        checkpoint_path=snakemake.input.checkpoint,
        info_path=snakemake.input.info,
        run_paths=list(zip(snakemake.input.npz, snakemake.input.tables, strict=True)),
        probe_path=snakemake.input.probe,
        out_dir=snakemake.output[0],
        threads=snakemake.threads,
    )
