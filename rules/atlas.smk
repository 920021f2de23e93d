# The unit atlas (src/unitscope/studies/atlas/): every unit of each atlas target layer gets one row of
# results/atlas/{model}/{layer}/units.parquet. Each kind of evidence runs per shard of consecutive units (one job per
# (model, layer, shard)), so a cluster profile spreads a whole model over many jobs; one gather job per layer joins the
# shards (and nefesi's and the dissection's columns, where they analyse the layer). Target: `snakemake atlas`.
#
# Sharding: a layer's channel count is known at parse time from the model's facts (a cached survey, no torch), so its
# shards are expanded here as a `{shard}` wildcard (`0-63`, `64-127`, ...). Not Snakemake's `scattergather:`: its split
# count is one global number per scatter name, the same for every layer, while layers have 16 to 2,048 units and the
# shard size (atlas.units_per_shard) should be the same everywhere. Not a checkpoint either: nothing is unknown until
# a job runs, and a dry run lists every shard job.
#
# Exemplars: every unit's top-N exemplars come from the peaks the extraction's one pass per (model, dataset) stores
# (atlas_top_n, once per layer: no forward pass of its own); each shard's job (atlas_exemplars) then cuts its units' crops and Neuron Features from that table, and
# (atlas_indexes) computes nefesi's indexes from it where the nefesi study does not analyse the layer.
#
# Pages: one browsable page per layer (results/atlas/{model}/{layer}/index.html) and one per unit
# (results/atlas/{model}/{layer}/units/<channel>.html), from the layer's table and the evidence files named below.

from unitscope.studies.atlas.plan import AtlasPlan, atlas_is_off  # noqa: E402 (no torch: parse time only)

if config["atlas"]["enabled"]:
    ATLAS = plan(AtlasPlan.from_config, config)
    # the stores every target reads (one per dataset), declared to the extraction's one pass per (model, dataset)
    ATLAS_STORES = {
        key: [request_extraction(target.model, dataset, target.layer) for dataset in target.datasets]
        for key, target in ATLAS.targets.items()
    }

    rule atlas_categories:
        input:
            code=code("studies.atlas.stages:run_categories"),
            stores=lambda wc: ATLAS_STORES[plan(ATLAS.target, wc.model, wc.layer).key],
            manifests=lambda wc: [manifest_path(d) for d in plan(ATLAS.target, wc.model, wc.layer).datasets],
        output:
            "results/atlas/{model}/{layer}/shards/{shard}/categories.parquet",
        params:
            settings=lambda wc: plan(ATLAS.categories_settings, wc.model, wc.layer, wc.shard).as_params(),
        wildcard_constraints:
            shard=r"\d+-\d+",
        log:
            "logs/atlas/{model}/{layer}/{shard}/categories.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/{shard}/categories.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_categories.py"

    rule atlas_lesion:
        input:
            code=code("studies.atlas.stages:run_lesion"),
            stores=lambda wc: ATLAS_STORES[plan(ATLAS.target, wc.model, wc.layer).key],
            manifests=lambda wc: [manifest_path(d) for d in plan(ATLAS.target, wc.model, wc.layer).datasets],
            checkpoint=model_checkpoint,
        output:
            "results/atlas/{model}/{layer}/shards/{shard}/lesion.parquet",
        params:
            settings=lambda wc: plan(ATLAS.lesion_settings, wc.model, wc.layer, wc.shard).as_params(),
            model=lambda wc: model_ref(wc.model),
        wildcard_constraints:
            shard=r"\d+-\d+",
        threads: 2
        resources:
            mem_mb=4000,
        log:
            "logs/atlas/{model}/{layer}/{shard}/lesion.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/{shard}/lesion.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_lesion.py"

    rule atlas_top_n:
        input:
            code=code("studies.atlas.stages:run_top_n"),
            stores=lambda wc: ATLAS_STORES[plan(ATLAS.target, wc.model, wc.layer).key],
            manifests=lambda wc: [manifest_path(d) for d in plan(ATLAS.target, wc.model, wc.layer).datasets],
            checkpoint=model_checkpoint,
        output:
            table="results/atlas/{model}/{layer}/top_n.parquet",
            geometry="results/atlas/{model}/{layer}/top_n.json",
        params:
            settings=lambda wc: plan(ATLAS.top_n_settings, wc.model, wc.layer).as_params(),
            model=lambda wc: model_ref(wc.model),
        threads: 1  # a sort of the stored peaks; the model is built only for its receptive field
        log:
            "logs/atlas/{model}/{layer}/top_n.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/top_n.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_top_n.py"

    rule atlas_exemplars:
        input:
            code=code("studies.atlas.stages:run_exemplars"),
            table="results/atlas/{model}/{layer}/top_n.parquet",
            geometry="results/atlas/{model}/{layer}/top_n.json",
            manifests=lambda wc: [manifest_path(d) for d in plan(ATLAS.target, wc.model, wc.layer).datasets],
        output:
            images="results/atlas/{model}/{layer}/shards/{shard}/exemplars.npz",
            table="results/atlas/{model}/{layer}/shards/{shard}/exemplars.parquet",
        params:
            settings=lambda wc: plan(ATLAS.exemplars_settings, wc.model, wc.layer, wc.shard).as_params(),
        wildcard_constraints:
            shard=r"\d+-\d+",
        threads: 1  # small tensor ops (decoding, crops): a second thread only waits on a busy machine
        resources:
            mem_mb=4000,
        log:
            "logs/atlas/{model}/{layer}/{shard}/exemplars.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/{shard}/exemplars.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_exemplars.py"

    rule atlas_indexes:
        input:
            code=code("studies.atlas.stages:run_indexes"),
            table="results/atlas/{model}/{layer}/top_n.parquet",
            manifests=lambda wc: [manifest_path(d) for d in plan(ATLAS.target, wc.model, wc.layer).datasets],
            checkpoint=model_checkpoint,
        output:
            "results/atlas/{model}/{layer}/shards/{shard}/indexes.parquet",
        params:
            settings=lambda wc: plan(ATLAS.indexes_settings, wc.model, wc.layer, wc.shard).as_params(),
            model=lambda wc: model_ref(wc.model),
        wildcard_constraints:
            shard=r"\d+-\d+",
        threads: 2
        resources:
            mem_mb=4000,
        log:
            "logs/atlas/{model}/{layer}/{shard}/indexes.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/{shard}/indexes.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_indexes.py"

    rule atlas_actmax:
        input:
            code=code("studies.atlas.stages:run_actmax"),
            checkpoint=model_checkpoint,
        output:
            images="results/atlas/{model}/{layer}/shards/{shard}/actmax.npz",
            table="results/atlas/{model}/{layer}/shards/{shard}/actmax.parquet",
        params:
            settings=lambda wc: plan(ATLAS.actmax_settings, wc.model, wc.layer, wc.shard).as_params(),
            model=lambda wc: model_ref(wc.model),
        wildcard_constraints:
            shard=r"\d+-\d+",
        threads: 2
        resources:
            mem_mb=4000,
        log:
            "logs/atlas/{model}/{layer}/{shard}/actmax.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/{shard}/actmax.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_actmax.py"

    rule atlas_gather:
        input:
            unpack(lambda wc: ATLAS.evidence_files(wc.model, wc.layer)),
            code=code("studies.atlas.stages:run_gather"),
            nefesi=lambda wc: ATLAS.nefesi_table(wc.model, wc.layer),
            dissection=lambda wc: ATLAS.dissection_table(wc.model, wc.layer),
        output:
            "results/atlas/{model}/{layer}/units.parquet",
        params:
            settings=lambda wc: plan(ATLAS.gather_settings, wc.model, wc.layer).as_params(),
            evidence=lambda wc: ATLAS.evidence_kinds(wc.model, wc.layer),
        localrule: True  # reads the shards' small tables: seconds, not worth a cluster job
        log:
            "logs/atlas/{model}/{layer}/gather.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/gather.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_gather.py"

    # The layer's index page and every unit's page (units/<channel>.html, one folder written whole): the unit pages
    # show the shards' exemplar images (none when exemplars are off), the unit's IoU with every concept (the
    # dissection's tallies, when it dissects the layer) and the enabled studies that single the unit out (their
    # sections, so the report's studies run first).
    rule atlas_pages:
        input:
            code=code("studies.atlas.stages:run_pages"),
            table="results/atlas/{model}/{layer}/units.parquet",
            exemplars=lambda wc: ATLAS.exemplar_images(wc.model, wc.layer),
            actmax=lambda wc: ATLAS.actmax_images(wc.model, wc.layer),
            tallies=lambda wc: ATLAS.dissection_tallies(wc.model, wc.layer),
            sections=study_sections(),
        output:
            index="results/atlas/{model}/{layer}/index.html",
            units=directory("results/atlas/{model}/{layer}/units"),
        params:
            settings=lambda wc: plan(ATLAS.page_settings, wc.model, wc.layer),
        log:
            "logs/atlas/{model}/{layer}/pages.log",
        benchmark:
            "benchmarks/atlas/{model}/{layer}/pages.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_pages.py"

    rule atlas:
        input:
            code=code("studies.atlas.stages:run_index"),
            tables=ATLAS.tables(),
            pages=[f"{target.folder}/index.html" for target in ATLAS.targets.values()],
        output:
            "results/atlas/index.json",
        localrule: True
        log:
            "logs/atlas/index.log",
        benchmark:
            "benchmarks/atlas/index.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/atlas_index.py"

else:

    rule atlas:  # only says why there is nothing to build: it never runs, so it has no log or benchmark
        input:
            lambda wc: plan(atlas_is_off),
