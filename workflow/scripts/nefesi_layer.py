"""nefesi stage 2: probes, Neuron Features, index table and hierarchy weights of one layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from unitscope.logs import log_to
from unitscope.runtime import use_threads
from unitscope.studies.nefesi.stages import run_layer

settings = snakemake.config["extraction"]  # run-only settings, not params
with log_to(snakemake.log[0]):
    use_threads(snakemake.threads)
    run_layer(
        model_name=snakemake.wildcards.model,
        spec=snakemake.params.spec,
        layer=snakemake.wildcards.layer,
        shallower=snakemake.params.shallower,
        exemplars_path=snakemake.input.exemplars,
        images_path=snakemake.input.images,
        rotation_step=snakemake.params.rotation_step,
        class_coverage=snakemake.params.class_coverage,
        population_threshold=snakemake.params.population_threshold,
        color_name_share=snakemake.params.color_name_share,
        data_dir=snakemake.params.data_dir,
        torch_home=snakemake.params.torch_home,
        out_table=snakemake.output.table,
        out_nf=snakemake.output.nf,
        out_hierarchy=snakemake.output.hierarchy,
        out_info=snakemake.output.info,
        batch_size=snakemake.config["nefesi"]["probe_batch_size"],
        num_workers=settings["num_workers"],
        device=settings["device"],
    )
