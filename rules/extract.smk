# Activation extraction: one Zarr store per (model, dataset, layer) via forward hooks.
# Batch size, workers and device are read from config in the script, not params: they change no result.


rule extract:
    input:
        code=code("extract:run_extraction"),
        manifest=lambda wc: manifest_path(wc.dataset),
        checkpoint=model_checkpoint,
    output:
        directory("results/activations/{model}/{dataset}/{layer}.zarr"),
    params:
        spec=model_params,
        save_maps=target_save_maps,
        data_dir=data_dir(),
        torch_home=torch_home(),
    log:
        "logs/extract/{model}/{dataset}/{layer}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/extract.py"
