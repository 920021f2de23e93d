# Study 'lesions': interventions behind the labels other studies attach to units (src/unitscope/studies/lesions/).
# Class units: nefesi's class-selective units and the units most important for a class, lesioned on a labelled set
# against random and activation-matched sets; then the figure and the section. Every rule's code is its entry point
# in studies/lesions/stages.py and what that uses.


from types import SimpleNamespace

from unitscope.studies.lesions.plan import LesionsPlan  # noqa: E402 (no torch: parse time only)

LESIONS = config["lesions"]
LESIONS_DIR = "results/lesions/class_units"

if LESIONS["enabled"]:
    LESIONS_PLAN = plan(LesionsPlan.from_config, config)
    LESIONS_CLASS = LESIONS_PLAN.class_units
    LESIONS_MODEL = SimpleNamespace(model=LESIONS_CLASS.model)
    LESIONS_COLOUR = LESIONS_PLAN.colour_units  # None when lesions.colour_units.enabled is false
    LESIONS_COLOUR_DIR = "results/lesions/colour_units"
    LESIONS_CONCEPT = LESIONS_PLAN.concept_units  # None when lesions.concept_units.enabled is false
    LESIONS_CONCEPT_DIR = "results/lesions/concept_units"
    LESIONS_CONCEPT_MODEL = SimpleNamespace(model=LESIONS_PLAN.concept_model)
    # the colour and concept units' tables the section reads (none of a part that is off)
    LESIONS_PART_TABLES = {
        **(
            {"colour_compared": f"{LESIONS_COLOUR_DIR}/compared.parquet", "colour_layers": f"{LESIONS_COLOUR_DIR}/layers.parquet"}
            if LESIONS_COLOUR
            else {}
        ),
        **({"concept_compared": f"{LESIONS_CONCEPT_DIR}/compared.parquet"} if LESIONS_CONCEPT else {}),
    }
    LESIONS_FIGURES = "results/report/figures/lesions"
    # the colour and concept units' figures the section shows (none of a part that is off)
    LESIONS_PART_FIGURES = {
        **({"colour_figure": f"{LESIONS_FIGURES}/colour_units.png"} if LESIONS_COLOUR else {}),
        **({"concept_figure": f"{LESIONS_FIGURES}/concept_units.png"} if LESIONS_CONCEPT else {}),
    }

    rule lesions_class_units:
        input:
            code=code("studies.lesions.stages:run_class_units"),
            store=request_extraction(LESIONS_CLASS.model, LESIONS_CLASS.dataset, LESIONS_CLASS.layer),
            manifest=manifest_path(LESIONS_CLASS.dataset),
            exemplars=f"results/nefesi/{LESIONS_CLASS.model}/exemplars.parquet",
            images=f"results/nefesi/{LESIONS_CLASS.model}/images.parquet",
            checkpoint=lambda wildcards: model_checkpoint(LESIONS_MODEL),
        output:
            units=f"{LESIONS_DIR}/units.parquet",
            conditions=f"{LESIONS_DIR}/conditions.parquet",
            sets=f"{LESIONS_DIR}/sets.parquet",
            pooled=f"{LESIONS_DIR}/pooled.parquet",
            agreement=f"{LESIONS_DIR}/agreement.parquet",
            info=f"{LESIONS_DIR}/info.json",
        params:
            settings=LESIONS_CLASS.as_params(),  # not lesions.alpha: report only
            model=model_ref(LESIONS_CLASS.model),
        threads: 2
        resources:
            mem_mb=4000,
        log:
            "logs/lesions/class_units.log",
        benchmark:
            "benchmarks/lesions/class_units.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/lesions_class_units.py"

    if LESIONS_COLOUR:

        rule lesions_colour_units:
            input:
                code=code("studies.lesions.stages:run_colour_units"),
                data="results/actmax/colored_mnist.npz",
                checkpoint="results/actmax/model.pt",
                info="results/actmax/model.json",
                probe="results/actmax/probe.parquet",
            output:
                conditions=f"{LESIONS_COLOUR_DIR}/conditions.parquet",
                compared=f"{LESIONS_COLOUR_DIR}/compared.parquet",
                layers=f"{LESIONS_COLOUR_DIR}/layers.parquet",
            params:
                settings=LESIONS_COLOUR.as_params(),
            threads: 2
            resources:
                mem_mb=4000,
            log:
                "logs/lesions/colour_units.log",
            benchmark:
                "benchmarks/lesions/colour_units.tsv"
            conda:
                ENV
            script:
                "../workflow/scripts/lesions_colour_units.py"

        rule lesions_colour_figure:
            input:
                code=code("studies.lesions.stages:run_colour_figure"),
                compared=f"{LESIONS_COLOUR_DIR}/compared.parquet",
            output:
                figure=report(
                    f"{LESIONS_FIGURES}/colour_units.png",
                    caption="../workflow/report/lesions_colour_units.rst",
                    category="Interventions behind the labels",
                ),
            localrule: True
            log:
                "logs/lesions/colour_figure.log",
            benchmark:
                "benchmarks/lesions/colour_figure.tsv"
            conda:
                ENV
            script:
                "../workflow/scripts/lesions_colour_figure.py"

    if LESIONS_CONCEPT:

        rule lesions_concept_units:
            input:
                code=code("studies.lesions.stages:run_concept_units"),
                units=f"results/dissection/{LESIONS_PLAN.concept_model}/units.parquet",
                concepts=DISSECTION_CONCEPTS,
                checkpoint=lambda wildcards: model_checkpoint(LESIONS_CONCEPT_MODEL),
            output:
                conditions=f"{LESIONS_CONCEPT_DIR}/conditions.parquet",
                compared=f"{LESIONS_CONCEPT_DIR}/compared.parquet",
            params:
                settings=LESIONS_CONCEPT.as_params(),
                model=model_ref(LESIONS_PLAN.concept_model),
            threads: 2
            resources:
                mem_mb=6000,
            log:
                "logs/lesions/concept_units.log",
            benchmark:
                "benchmarks/lesions/concept_units.tsv"
            conda:
                ENV
            script:
                "../workflow/scripts/lesions_concept_units.py"

        rule lesions_concept_figure:
            input:
                code=code("studies.lesions.stages:run_concept_figure"),
                compared=f"{LESIONS_CONCEPT_DIR}/compared.parquet",
            output:
                figure=report(
                    f"{LESIONS_FIGURES}/concept_units.png",
                    caption="../workflow/report/lesions_concept_units.rst",
                    category="Interventions behind the labels",
                ),
            localrule: True
            log:
                "logs/lesions/concept_figure.log",
            benchmark:
                "benchmarks/lesions/concept_figure.tsv"
            conda:
                ENV
            script:
                "../workflow/scripts/lesions_concept_figure.py"

    LESIONS_AGREEMENT = LESIONS_PLAN.agreement
    LESIONS_FACES = (
        {"faces_selection": "results/faces/selection.parquet", "faces_conditions": "results/faces/conditions.parquet"}
        if LESIONS_AGREEMENT.faces
        else {}
    )

    rule lesions_agreement:
        input:
            code=code("studies.lesions.stages:run_agreement"),
            class_agreement=f"{LESIONS_DIR}/agreement.parquet",
            nefesi=[f"results/nefesi/{m}/{layer}/indexes.parquet" for m, layer in LESIONS_AGREEMENT.nefesi_layers()],
            dissection=[f"results/dissection/{m}/units.parquet" for m in LESIONS_AGREEMENT.dissected_models()],
            # the actmax study's registry runs whose units nefesi or the dissection also label (the colour score)
            actmax_arrays=[f"results/actmax/registry/{m}/{layer}.npz" for m, layer in LESIONS_AGREEMENT.actmax_targets()],
            actmax_runs=[f"results/actmax/registry/{m}/{layer}.parquet" for m, layer in LESIONS_AGREEMENT.actmax_targets()],
            # atlas layers whose units it optimises where no registry target does (ATLAS: rules/atlas.smk, read when
            # the job list is built, after every rules file is included)
            atlas_actmax=lambda wc: [
                path for m, layer in LESIONS_AGREEMENT.atlas_actmax_layers() for path in ATLAS.shard_files(m, layer, "actmax")
            ],
            **LESIONS_FACES,
        output:
            table="results/lesions/agreement.parquet",
        params:
            settings=LESIONS_AGREEMENT.as_params(),
        log:
            "logs/lesions/agreement.log",
        benchmark:
            "benchmarks/lesions/agreement.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/lesions_agreement.py"

    rule lesions_class_figure:
        input:
            code=code("studies.lesions.stages:run_class_figure"),
            pooled=f"{LESIONS_DIR}/pooled.parquet",
            units=f"{LESIONS_DIR}/units.parquet",
            agreement=f"{LESIONS_DIR}/agreement.parquet",
        output:
            figure=report(
                "results/report/figures/lesions/class_units.png",
                caption="../workflow/report/lesions_class_units.rst",
                category="Interventions behind the labels",
            ),
        localrule: True
        log:
            "logs/lesions/class_figure.log",
        benchmark:
            "benchmarks/lesions/class_figure.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/lesions_class_figure.py"

    rule lesions_section:
        input:
            code=code("studies.lesions.stages:run_section"),
            sets=f"{LESIONS_DIR}/sets.parquet",
            pooled=f"{LESIONS_DIR}/pooled.parquet",
            units=f"{LESIONS_DIR}/units.parquet",
            agreement=f"{LESIONS_DIR}/agreement.parquet",
            info=f"{LESIONS_DIR}/info.json",
            methods="results/lesions/agreement.parquet",
            figure="results/report/figures/lesions/class_units.png",
            **LESIONS_PART_TABLES,
            **LESIONS_PART_FIGURES,
        output:
            section="results/lesions/section.json",
        params:
            settings=LESIONS_PLAN.section.as_params(),
        localrule: True
        log:
            "logs/lesions/section.log",
        benchmark:
            "benchmarks/lesions/section.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/lesions_section.py"
