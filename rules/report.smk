# Report: figures (flagged for `snakemake --report`), the HTML page, and results/summary.json.


rule report:
    default_target: True
    input:
        code=code("report.landing:build_report"),
        manifests=expand("results/data/{dataset}/manifest.parquet", dataset=list(config["datasets"])),
        cards=expand("results/models/{model}/card.json", model=enabled_models()),
        stores=activation_stores(),
        datasets_figure="results/report/figures/datasets.png",
        activation_figures=activation_figures(),
        sections=study_sections(),
        atlas=atlas_index(),
    output:
        html="results/report/index.html",
        summary="results/summary.json",
        units=directory("results/report/units"),
    params:
        config=results_config(),
        datasets=list(config["datasets"]),
        models=enabled_models(),
        targets=[list(target[:3]) for target in extraction_targets()],
    localrule: True
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/report.py"


rule figure_datasets:
    input:
        code=code("report.figures:datasets_figure"),
        manifests=expand("results/data/{dataset}/manifest.parquet", dataset=list(config["datasets"])),
    output:
        report(
            "results/report/figures/datasets.png",
            caption="../workflow/report/datasets.rst",
            category="Data",
        ),
    params:
        datasets=list(config["datasets"]),
    localrule: True
    log:
        "logs/report/figure_datasets.log",
    benchmark:
        "benchmarks/report/figure_datasets.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/figure_datasets.py"


rule figure_activations:
    input:
        code=code("report.figures:activation_figure"),
        store="results/activations/{model}/{dataset}/{layer}.zarr",
    output:
        report(
            "results/report/figures/activations/{model}/{dataset}/{layer}.png",
            caption="../workflow/report/activations.rst",
            category="Activations",
            subcategory="{model}",
            labels={"model": "{model}", "dataset": "{dataset}", "layer": "{layer}"},
        ),
    localrule: True
    log:
        "logs/report/figure_activations/{model}/{dataset}/{layer}.log",
    benchmark:
        "benchmarks/report/figure_activations/{model}/{dataset}/{layer}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/figure_activations.py"
