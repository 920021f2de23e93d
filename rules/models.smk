# Model stage: a card per enabled model (parameters, layers, accuracy on a labelled set when one exists).


rule model_card:
    input:
        code=code("models.card:run_model_card"),
        checkpoint=model_checkpoint,
        eval_manifest=model_eval_manifest,
    output:
        "results/models/{model}/card.json",
    params:
        spec=model_params,
        data_dir=data_dir(),
        torch_home=torch_home(),
    log:
        "logs/models/{model}.log",
    benchmark:
        "benchmarks/models/{model}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/model_card.py"
