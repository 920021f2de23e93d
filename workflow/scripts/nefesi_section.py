"""nefesi report section: headline numbers per layer, figures with captions, singled-out units and their figures."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from unitscope.logs import log_to
from unitscope.studies.nefesi.section import build_section

REPORT_DIR = "results/report"


def relative(path):
    return os.path.relpath(path, REPORT_DIR)


with log_to(snakemake.log[0]):
    figure = "results/report/figures/nefesi/{}/{}"
    models = {}
    for model, target in snakemake.params.targets.items():
        layers = list(target["layers"])
        decompositions = [
            f
            for f in snakemake.input.decompositions
            if Path(f).parts[:4] == ("results", "nefesi", model, "decomposition")
        ]
        models[model] = {
            "layers": layers,
            "tables": [f"results/nefesi/{model}/{layer}/indexes.parquet" for layer in layers],
            "infos": [f"results/nefesi/{model}/{layer}/layer.json" for layer in layers],
            "tree": f"results/nefesi/{model}/hierarchy.json",
            "exemplars": f"results/nefesi/{model}/exemplars.parquet",
            "images": f"results/nefesi/{model}/images.parquet",
            "nfs": [f"results/nefesi/{model}/{layer}/nf.npz" for layer in layers],
            "preprocessing": snakemake.params.preprocessing[model],
            "decompositions": decompositions,
            "figures": {
                "histograms": relative(figure.format(model, "histograms.png")),
                "hierarchy": relative(figure.format(model, "hierarchy.png")),
                "grids": {layer: relative(figure.format(model, f"{layer}_nf.png")) for layer in layers},
                "tops": {layer: relative(figure.format(model, f"{layer}_top.png")) for layer in layers},
                "decompositions": [
                    relative(figure.format(model, f"decomposition_{Path(f).stem}.png")) for f in decompositions
                ],
            },
        }
    build_section(
        models=models,
        settings=dict(snakemake.params.settings),
        out_section=snakemake.output.section,
        out_units=snakemake.output.units,
        units_src=relative(snakemake.output.units),
        unit_exemplars=snakemake.params.unit_exemplars,
    )
