# Study 'dissection' (issue 7): Network Dissection of units against concept masks (CamVid objects and colors,
# or the Broden layout), detectors and distinct concepts per layer, and the rotation experiment.
# Each rule's entry point is in src/unitscope/studies/dissection/stages.py; its `settings` param is the settings
# object studies.dissection.plan builds for it, holding every setting that changes its results and no other (batch
# size is read from the config in the scripts: it changes none).
import re
from types import SimpleNamespace

from unitscope.studies.dissection.plan import concept_inputs, dissection_plan, dissection_targets  # noqa: E402

DISSECTION_TARGETS = plan(dissection_targets, config)
DISSECTION = config.get("dissection", {})
DISSECTION_TITLE = "Network dissection"
DISSECTION_FIGURES = "results/report/figures/dissection"

if DISSECTION.get("enabled", False):
    DISSECTION_ROTATION = DISSECTION["rotation"]["enabled"]
    DISSECTION_CONCEPTS = concept_inputs(config, data_dir())
    # The tallies of the first target name the images and concepts for the section and the depth figure.
    DISSECTION_FIRST = next(iter(DISSECTION_TARGETS))
    # Per (model, layer): the figure of its top units.
    DISSECTION_UNIT_FIGURES = {
        f"{model}/{layer}": f"{DISSECTION_FIGURES}/units/{model}/{layer}.png"
        for model, layers in DISSECTION_TARGETS.items()
        for layer in layers
    }
    # Per (model, layer): a folder with one figure per unit the section singles out (units.study_units).
    DISSECTION_UNIT_IMAGES = {
        f"{model}/{layer}": f"{DISSECTION_FIGURES}/units/{model}/{layer}"
        for model, layers in DISSECTION_TARGETS.items()
        for layer in layers
    }
    DISSECTION_PLAN = plan(dissection_plan, config)

    rule dissection_dissect:
        input:
            code=code("studies.dissection.stages:run_dissection"),
            checkpoint=model_checkpoint,
            concepts=lambda wc: DISSECTION_CONCEPTS,
        output:
            units="results/dissection/{model}/units.parquet",
            layers="results/dissection/{model}/layers.parquet",
            tallies="results/dissection/{model}/tallies.npz",
        params:
            settings=lambda wc: DISSECTION_PLAN.dissect[wc.model].as_params(),
            model=lambda wc: model_ref(wc.model),
        threads: 2
        log:
            "logs/dissection/dissect/{model}.log",
        benchmark:
            "benchmarks/dissection/dissect/{model}.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/dissection_dissect.py"

    rule dissection_figure_units:
        input:
            code=code("studies.dissection.stages:run_unit_figures"),
            units="results/dissection/{model}/units.parquet",
            tallies="results/dissection/{model}/tallies.npz",
        output:
            figure=report(
                f"{DISSECTION_FIGURES}/units/{{model}}/{{layer}}.png",
                caption="../workflow/report/dissection_units.rst",
                category=DISSECTION_TITLE,
                subcategory="{model}",
                labels={"model": "{model}", "layer": "{layer}"},
            ),
            # <model>__<layer>__<unit>.png for each unit the section lists (shown on the unit pages)
            unit_images=directory(f"{DISSECTION_FIGURES}/units/{{model}}/{{layer}}"),
        wildcard_constraints:
            # a configured layer only, so that <layer>.png is never read as the folder of a layer "<layer>.png"
            layer="|".join(re.escape(layer) for layers in DISSECTION_TARGETS.values() for layer in layers),
        params:
            settings=DISSECTION_PLAN.figure_units.as_params(),
        log:
            "logs/dissection/figure_units/{model}/{layer}.log",
        benchmark:
            "benchmarks/dissection/figure_units/{model}/{layer}.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/dissection_figure_units.py"

    if DISSECTION_ROTATION:
        DISSECTION_ROTATION_MODEL = DISSECTION["rotation"]["model"]

        rule dissection_rotation:
            input:
                code=code("studies.dissection.stages:run_rotation"),
                checkpoint=lambda wc: model_checkpoint(SimpleNamespace(model=DISSECTION_ROTATION_MODEL)),
                concepts=lambda wc: DISSECTION_CONCEPTS,
            output:
                "results/dissection/rotation.parquet",
            params:
                settings=DISSECTION_PLAN.rotation.as_params(),
                model=model_ref(DISSECTION_ROTATION_MODEL),
            threads: 2
            log:
                "logs/dissection/rotation.log",
            benchmark:
                "benchmarks/dissection/rotation.tsv"
            conda:
                ENV
            script:
                "../workflow/scripts/dissection_rotation.py"

    rule dissection_section:
        input:
            code=code("studies.dissection.stages:run_section"),
            layers=[f"results/dissection/{model}/layers.parquet" for model in DISSECTION_TARGETS],
            units=[f"results/dissection/{model}/units.parquet" for model in DISSECTION_TARGETS],
            tallies=f"results/dissection/{DISSECTION_FIRST}/tallies.npz",
            rotation=["results/dissection/rotation.parquet"] if DISSECTION_ROTATION else [],
            unit_figures=list(DISSECTION_UNIT_FIGURES.values()),
            unit_images=list(DISSECTION_UNIT_IMAGES.values()),
        output:
            section="results/dissection/section.json",
            depth_figure=report(
                f"{DISSECTION_FIGURES}/depth.png",
                caption="../workflow/report/dissection_depth.rst",
                category=DISSECTION_TITLE,
            ),
            rotation_figure=[
                report(
                    f"{DISSECTION_FIGURES}/rotation.png",
                    caption="../workflow/report/dissection_rotation.rst",
                    category=DISSECTION_TITLE,
                )
            ]
            if DISSECTION_ROTATION
            else [],
        params:
            settings=DISSECTION_PLAN.section.as_params(),
            unit_figures=DISSECTION_UNIT_FIGURES,
            unit_images=DISSECTION_UNIT_IMAGES,
        localrule: True
        log:
            "logs/dissection/section.log",
        benchmark:
            "benchmarks/dissection/section.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/dissection_section.py"
