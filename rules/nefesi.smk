# Study 'nefesi': top-N exemplars, Neuron Features, four selectivity indexes per channel, image and hierarchical
# decomposition (src/unitscope/studies/nefesi/). Per target model: the top-N of all its layers, sorted from the peaks
# the extraction's one pass per (model, dataset) stores (each layer is a store request: no pass of nefesi's own); per
# layer: probes (transformed exemplar crops), index table, NFs; then figures and the section. Every rule's code is its
# entry point in studies/nefesi/stages.py and what that uses.


from unitscope.studies.nefesi.plan import NefesiPlan  # noqa: E402 (no torch: parse time only)

NEFESI = plan(NefesiPlan, config)  # the targets, checked, and every rule's settings (frozen, built once here)
# each target's stores, layer-major (every dataset's store of its first layer, then of its second, ...)
NEFESI_STORES = {
    model: [request_extraction(model, d, layer) for layer in target["layers"] for d in target["datasets"]]
    for model, target in NEFESI.targets.items()
}


rule nefesi_top_n:
    input:
        code=code("studies.nefesi.stages:run_top_n"),
        manifests=lambda wc: [manifest_path(d) for d in NEFESI.target(wc.model)["datasets"]],
        stores=lambda wc: NEFESI_STORES[wc.model],
    output:
        exemplars="results/nefesi/{model}/exemplars.parquet",
        images="results/nefesi/{model}/images.parquet",
    params:
        settings=lambda wc: NEFESI.top_n_settings(wc.model).as_params(),
    log:
        "logs/nefesi/{model}/top_n.log",
    benchmark:
        "benchmarks/nefesi/{model}/top_n.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_top_n.py"


rule nefesi_layer:
    input:
        code=code("studies.nefesi.stages:run_layer"),
        exemplars="results/nefesi/{model}/exemplars.parquet",
        images="results/nefesi/{model}/images.parquet",
        checkpoint=model_checkpoint,
    output:
        table="results/nefesi/{model}/{layer}/indexes.parquet",
        nf="results/nefesi/{model}/{layer}/nf.npz",
        hierarchy="results/nefesi/{model}/{layer}/hierarchy.parquet",
        info="results/nefesi/{model}/{layer}/layer.json",
    params:
        settings=lambda wc: NEFESI.layer_settings(wc.model, wc.layer).as_params(),
        model=lambda wc: model_ref(wc.model),
    threads: 2
    resources:
        mem_mb=4000,
    log:
        "logs/nefesi/{model}/{layer}/layer.log",
    benchmark:
        "benchmarks/nefesi/{model}/{layer}/layer.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_layer.py"


rule nefesi_layer_figures:
    input:
        code=code("studies.nefesi.stages:run_layer_figures"),
        table="results/nefesi/{model}/{layer}/indexes.parquet",
        nf="results/nefesi/{model}/{layer}/nf.npz",
        info="results/nefesi/{model}/{layer}/layer.json",
    output:
        grid=report(
            "results/report/figures/nefesi/{model}/{layer}_nf.png",
            caption="../workflow/report/nefesi_nf.rst",
            category="Neuron Features (nefesi)",
            subcategory="{model}",
            labels={"model": "{model}", "layer": "{layer}", "figure": "NF grid"},
        ),
        top=report(
            "results/report/figures/nefesi/{model}/{layer}_top.png",
            caption="../workflow/report/nefesi_top.rst",
            category="Neuron Features (nefesi)",
            subcategory="{model}",
            labels={"model": "{model}", "layer": "{layer}", "figure": "top channels per index"},
        ),
    params:
        settings=NEFESI.layer_figures_settings.as_params(),
    localrule: True
    log:
        "logs/nefesi/{model}/{layer}/figures.log",
    benchmark:
        "benchmarks/nefesi/{model}/{layer}/figures.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_layer_figures.py"


rule nefesi_model_figures:
    input:
        code=code("studies.nefesi.stages:run_model_figures"),
        tables=lambda wc: NEFESI.layer_files(wc.model, "indexes.parquet"),
        nfs=lambda wc: NEFESI.layer_files(wc.model, "nf.npz"),
        hierarchies=lambda wc: NEFESI.layer_files(wc.model, "hierarchy.parquet"),
    output:
        histograms=report(
            "results/report/figures/nefesi/{model}/histograms.png",
            caption="../workflow/report/nefesi_histograms.rst",
            category="Neuron Features (nefesi)",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "index histograms"},
        ),
        hierarchy=report(
            "results/report/figures/nefesi/{model}/hierarchy.png",
            caption="../workflow/report/nefesi_hierarchy.rst",
            category="Neuron Features (nefesi)",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "hierarchical decomposition"},
        ),
        tree="results/nefesi/{model}/hierarchy.json",
    params:
        settings=lambda wc: NEFESI.model_figures_settings(wc.model).as_params(),
    localrule: True
    log:
        "logs/nefesi/{model}/model_figures.log",
    benchmark:
        "benchmarks/nefesi/{model}/model_figures.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_model_figures.py"


rule nefesi_decomposition:
    input:
        code=code("studies.nefesi.stages:run_decomposition"),
        images="results/nefesi/{model}/images.parquet",
        exemplars="results/nefesi/{model}/exemplars.parquet",
        nf=lambda wc: NEFESI.decomposition_layer_file(wc.model, "nf.npz"),
        info=lambda wc: NEFESI.decomposition_layer_file(wc.model, "layer.json"),
        checkpoint=model_checkpoint,
    output:
        figure=report(
            "results/report/figures/nefesi/{model}/decomposition_{dataset}_{index}.png",
            caption="../workflow/report/nefesi_decomposition.rst",
            category="Neuron Features (nefesi)",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "image decomposition", "image": "{dataset} {index}"},
        ),
        record="results/nefesi/{model}/decomposition/{dataset}_{index}.json",
    wildcard_constraints:
        index=r"\d+",
    params:
        settings=lambda wc: NEFESI.decomposition_settings(wc.model).as_params(),
        model=lambda wc: model_ref(wc.model),
    log:
        "logs/nefesi/{model}/decomposition_{dataset}_{index}.log",
    benchmark:
        "benchmarks/nefesi/{model}/decomposition_{dataset}_{index}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_decomposition.py"


# The section also draws one figure per unit it singles out (its NF beside its top exemplar crops), named
# <model>__<layer>__<channel>.png like the unit's page, which shows it.
rule nefesi_section:
    input:
        code=code("studies.nefesi.stages:run_section"),
        tables=NEFESI.all_files("indexes.parquet"),
        infos=NEFESI.all_files("layer.json"),
        nfs=NEFESI.all_files("nf.npz"),
        exemplars=[f"results/nefesi/{m}/exemplars.parquet" for m in NEFESI.targets],
        images=[f"results/nefesi/{m}/images.parquet" for m in NEFESI.targets],
        trees=[f"results/nefesi/{m}/hierarchy.json" for m in NEFESI.targets],
        decompositions=[f for m in NEFESI.targets for f in NEFESI.decompositions(m, "record")],
        figures=NEFESI.figures(),
    output:
        section="results/nefesi/section.json",
        units=directory(NEFESI.UNITS),
    params:
        settings=NEFESI.section_settings.as_params(),
        models=NEFESI.section_models(),  # the files it reads per model, and the model's preprocessing
    localrule: True
    log:
        "logs/nefesi/section.log",
    benchmark:
        "benchmarks/nefesi/section.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/nefesi_section.py"
