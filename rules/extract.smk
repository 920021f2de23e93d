# Activation extraction: one forward pass per (model, dataset) for every layer any target or study requests,
# then one Zarr store per (model, dataset, layer), each its own output (published from the pass by hard links).
# Batch size, workers and device are read from config in the script, not params: they change no result.


rule extract:
    input:
        code=code("extract:run_extraction"),
        manifest=lambda wc: manifest_path(wc.dataset),
        checkpoint=model_checkpoint,
    output:
        temp(directory("results/activations/{model}/{dataset}.pass")),
    params:
        model=lambda wc: model_ref(wc.model),
        layers=pass_layers,
    log:
        "logs/extract/{model}/{dataset}.log",
    benchmark:
        "benchmarks/extract/{model}/{dataset}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/extract.py"


# Its inputs repeat the pass's code, manifest and checkpoint, so that a change to any of them re-runs the pass
# even after the pass folder (temporary) is gone.
rule extract_store:
    input:
        extraction_pass="results/activations/{model}/{dataset}.pass",
        code=code("extract:run_extraction"),
        manifest=lambda wc: manifest_path(wc.dataset),
        checkpoint=model_checkpoint,
    output:
        directory("results/activations/{model}/{dataset}/{layer}.zarr"),
    params:
        settings=store_settings,
    localrule: True
    log:
        "logs/extract/{model}/{dataset}/{layer}.log",
    benchmark:
        "benchmarks/extract/{model}/{dataset}/{layer}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/extract_store.py"
