# Study 'faces': face-selective channels of one layer (selection, PCA, interventions with random and
# activation-matched controls, probes per layer, category comparison, heatmaps) and its report section.
# Entry points: src/unitscope/studies/faces/stages.py (one per rule, whose code inputs are only what it uses).
# Settings: src/unitscope/studies/faces/plan.py builds each rule's settings once (FacesPlan); a rule gets only
# those that change its results, whole, as `params: settings`.
from types import SimpleNamespace

from unitscope.studies.faces.plan import FacesPlan  # noqa: E402

FACES = config["faces"]
FACES_TITLE = "Face-selective units"
FACES_FIGURES = "results/report/figures/faces"

if FACES["enabled"]:
    FACES_PLAN = plan(FacesPlan.from_config, config)
    FACES_LAYER = FACES_PLAN.layer
    FACES_MODEL = SimpleNamespace(model=FACES_PLAN.model)
    FACES_SETS = list(FACES_PLAN.datasets)
    # Activation stores (declared to the extract rule) per layer, in FACES_SETS order.
    FACES_STORES = {
        layer: [request_extraction(FACES_PLAN.model, dataset, layer) for dataset in FACES_SETS]
        for layer in dict.fromkeys([FACES_LAYER, *FACES_PLAN.probe_layers])
    }

    rule faces_selection:
        input:
            code=code("studies.faces.stages:run_selection"),
            stores=FACES_STORES[FACES_LAYER],
        output:
            table="results/faces/selection.parquet",
            figure=report(
                f"{FACES_FIGURES}/selection.png",
                caption="../workflow/report/faces_selection.rst",
                category=FACES_TITLE,
            ),
        params:
            settings=FACES_PLAN.selection.as_params(),
        log:
            "logs/faces/selection.log",
        benchmark:
            "benchmarks/faces/selection.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_selection.py"

    rule faces_pca:
        input:
            code=code("studies.faces.stages:run_pca"),
            store=FACES_STORES[FACES_LAYER][0],
        output:
            table="results/faces/pca.parquet",
            figure=report(
                f"{FACES_FIGURES}/pca.png", caption="../workflow/report/faces_pca.rst", category=FACES_TITLE
            ),
        params:
            settings=FACES_PLAN.pca.as_params(),
        log:
            "logs/faces/pca.log",
        benchmark:
            "benchmarks/faces/pca.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_pca.py"

    rule faces_interventions:
        input:
            code=code("studies.faces.stages:run_interventions"),
            stores=FACES_STORES[FACES_LAYER],
            manifests=[manifest_path(dataset) for dataset in FACES_SETS],
            selection="results/faces/selection.parquet",
            checkpoint=lambda wildcards: model_checkpoint(FACES_MODEL),
        output:
            conditions="results/faces/conditions.parquet",
            controls="results/faces/controls.parquet",
            pca="results/faces/condition_pca.parquet",
        params:
            settings=FACES_PLAN.interventions.as_params(),  # not interventions.alpha: report only
            model=model_ref(FACES_PLAN.model),
        log:
            "logs/faces/interventions.log",
        benchmark:
            "benchmarks/faces/interventions.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_interventions.py"

    rule faces_interventions_figure:
        input:
            code=code("studies.faces.stages:run_interventions_figure"),
            conditions="results/faces/conditions.parquet",
            controls="results/faces/controls.parquet",
            pca="results/faces/condition_pca.parquet",
        output:
            figure=report(
                f"{FACES_FIGURES}/interventions.png",
                caption="../workflow/report/faces_interventions.rst",
                category=FACES_TITLE,
            ),
            verdicts=f"{FACES_FIGURES}/verdicts.png",
        localrule: True
        log:
            "logs/faces/interventions_figure.log",
        benchmark:
            "benchmarks/faces/interventions_figure.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_interventions_figure.py"

    rule faces_probes:
        input:
            code=code("studies.faces.stages:run_probes"),
            stores=[store for layer in FACES_PLAN.probe_layers for store in FACES_STORES[layer]],
        output:
            table="results/faces/probes.parquet",
            coefficients="results/faces/probe_coefficients.parquet",
            figure=report(
                f"{FACES_FIGURES}/probes.png", caption="../workflow/report/faces_probes.rst", category=FACES_TITLE
            ),
        params:
            settings=FACES_PLAN.probes.as_params(),
        log:
            "logs/faces/probes.log",
        benchmark:
            "benchmarks/faces/probes.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_probes.py"

    rule faces_categories:
        input:
            code=code("studies.faces.stages:run_categories"),
            stores=FACES_STORES[FACES_LAYER],
            selection="results/faces/selection.parquet",
        output:
            categories="results/faces/categories.parquet",
            selectivity="results/faces/selectivity.parquet",
            figure=report(
                f"{FACES_FIGURES}/categories.png",
                caption="../workflow/report/faces_categories.rst",
                category=FACES_TITLE,
            ),
        params:
            settings=FACES_PLAN.categories.as_params(),
        log:
            "logs/faces/categories.log",
        benchmark:
            "benchmarks/faces/categories.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_categories.py"

    rule faces_heatmaps:
        input:
            code=code("studies.faces.stages:run_heatmaps"),
            manifests=[manifest_path(dataset) for dataset in FACES_SETS],
            selection="results/faces/selection.parquet",
            checkpoint=lambda wildcards: model_checkpoint(FACES_MODEL),
        output:
            table="results/faces/heatmaps.parquet",
            figure=report(
                f"{FACES_FIGURES}/heatmaps.png",
                caption="../workflow/report/faces_heatmaps.rst",
                category=FACES_TITLE,
            ),
        params:
            settings=FACES_PLAN.heatmaps.as_params(),
            model=model_ref(FACES_PLAN.model),
        log:
            "logs/faces/heatmaps.log",
        benchmark:
            "benchmarks/faces/heatmaps.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_heatmaps.py"

    rule faces_section:
        input:
            code=code("studies.faces.stages:run_section"),
            selection="results/faces/selection.parquet",
            pca="results/faces/pca.parquet",
            conditions="results/faces/conditions.parquet",
            controls="results/faces/controls.parquet",
            probes="results/faces/probes.parquet",
            categories="results/faces/categories.parquet",
            selectivity="results/faces/selectivity.parquet",
            heatmaps="results/faces/heatmaps.parquet",
            figures=expand(
                f"{FACES_FIGURES}/{{name}}.png",
                name=["selection", "pca", "interventions", "verdicts", "probes", "categories", "heatmaps"],
            ),
        output:
            "results/faces/section.json",
        params:
            settings=FACES_PLAN.section.as_params(),
        localrule: True
        log:
            "logs/faces/section.log",
        benchmark:
            "benchmarks/faces/section.tsv",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_section.py"
