"""Lesions study: do the methods agree? Each label against other evidence on the same units (one table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.lesions.plan import AgreementSettings
from unitscope.studies.lesions.stages import run_agreement

settings = AgreementSettings.from_params(snakemake.params.settings)
with log_to(snakemake.log[0]):
    run_agreement(
        settings,
        class_agreement=snakemake.input.class_agreement,
        nefesi={
            f"{m}/{layer}": path
            for (m, layer), path in zip(settings.nefesi_layers(), snakemake.input.nefesi, strict=True)
        },
        dissection={Path(path).parent.name: path for path in snakemake.input.dissection},
        actmax={
            f"{m}/{layer}": paths
            for (m, layer), *paths in zip(
                settings.actmax_targets(), snakemake.input.actmax_arrays, snakemake.input.actmax_runs, strict=True
            )
        },
        atlas_actmax=list(snakemake.input.atlas_actmax),
        faces_selection=snakemake.input.get("faces_selection"),
        faces_conditions=snakemake.input.get("faces_conditions"),
        out_table=snakemake.output.table,
    )
