# Study 'faces': face-selective channels of one layer (selection, PCA, interventions with random and
# activation-matched controls, probes per layer, category comparison, heatmaps) and its report section.
# Entry points: src/unitscope/studies/faces/stages.py (one per rule, whose code inputs are only what it uses);
# params carry every setting that changes a stage's results.
from types import SimpleNamespace

from unitscope.studies.faces.plan import FacesConfigError, check_datasets, intervention_layer, probe_layers  # noqa: E402

FACES = config["faces"]
FACES_TITLE = "Face-selective units"
FACES_FIGURES = "results/report/figures/faces"

if FACES["enabled"]:
    try:
        check_datasets(FACES, config["datasets"])
        FACES_LAYER = intervention_layer(FACES, config["models"])
        FACES_PROBE_LAYERS = probe_layers(FACES, config["models"])
    except FacesConfigError as err:
        raise WorkflowError(f"unitscope: {err}") from None
    FACES_MODEL = SimpleNamespace(model=FACES["model"])
    FACES_SETS = [FACES["face_dataset"], *FACES["nonface_datasets"]]
    # Activation stores (declared to the extract rule) per layer, in FACES_SETS order.
    FACES_STORES = {
        layer: [request_extraction(FACES["model"], dataset, layer) for dataset in FACES_SETS]
        for layer in dict.fromkeys([FACES_LAYER, *FACES_PROBE_LAYERS])
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
            model=FACES["model"],
            layer=FACES_LAYER,
            datasets=FACES_SETS,
            percentile=FACES["selection"]["percentile"],
            fdr=FACES["selection"]["fdr"],
        log:
            "logs/faces/selection.log",
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
            layer=FACES_LAYER,
            levels=FACES["pca_levels"],
        log:
            "logs/faces/pca.log",
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
            model=FACES["model"],
            spec=model_params(FACES_MODEL),
            layer=FACES_LAYER,
            datasets=FACES_SETS,
            rule=FACES["selection"]["use"],
            interventions={k: v for k, v in FACES["interventions"].items() if k != "alpha"},  # alpha: report only
            probe=FACES["probe"],
            pca_levels=FACES["pca_levels"],
            seed=config["seed"],
            data_dir=data_dir(),
            torch_home=torch_home(),
        log:
            "logs/faces/interventions.log",
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
            report(
                f"{FACES_FIGURES}/interventions.png",
                caption="../workflow/report/faces_interventions.rst",
                category=FACES_TITLE,
            ),
        log:
            "logs/faces/interventions_figure.log",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_interventions_figure.py"

    rule faces_probes:
        input:
            code=code("studies.faces.stages:run_probes"),
            stores=[store for layer in FACES_PROBE_LAYERS for store in FACES_STORES[layer]],
        output:
            table="results/faces/probes.parquet",
            coefficients="results/faces/probe_coefficients.parquet",
            figure=report(
                f"{FACES_FIGURES}/probes.png", caption="../workflow/report/faces_probes.rst", category=FACES_TITLE
            ),
        params:
            model=FACES["model"],
            layers=FACES_PROBE_LAYERS,
            datasets=FACES_SETS,
            folds=FACES["probe"]["folds"],
            C=FACES["probe"]["C"],
            seed=config["seed"],
        log:
            "logs/faces/probes.log",
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
            layer=FACES_LAYER,
            datasets=FACES_SETS,
            rule=FACES["selection"]["use"],
            n_bootstrap=FACES["n_bootstrap"],
            seed=config["seed"],
        log:
            "logs/faces/categories.log",
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
            model=FACES["model"],
            spec=model_params(FACES_MODEL),
            layer=FACES_LAYER,
            datasets=FACES_SETS,
            rule=FACES["selection"]["use"],
            heatmaps=FACES["heatmaps"],
            seed=config["seed"],
            data_dir=data_dir(),
            torch_home=torch_home(),
        log:
            "logs/faces/heatmaps.log",
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
                name=["selection", "pca", "interventions", "probes", "categories", "heatmaps"],
            ),
        output:
            "results/faces/section.json",
        params:
            settings={
                "rule": FACES["selection"]["use"],
                "percentile": FACES["selection"]["percentile"],
                "fdr": FACES["selection"]["fdr"],
                "alpha": FACES["interventions"]["alpha"],
                "pca_levels": FACES["pca_levels"],
                "face_dataset": FACES["face_dataset"],
            },
        log:
            "logs/faces/section.log",
        conda:
            ENV
        script:
            "../workflow/scripts/faces_section.py"
