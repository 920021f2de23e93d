# Data stage: a manifest per dataset (which images, their labels, hashes, and why any was excluded).


rule manifest:
    input:
        code=code("data.manifest:run_manifest"),
        files=dataset_files,
    output:
        "results/data/{dataset}/manifest.parquet",
    params:
        dataset=manifest_spec,
        odd_names=dataset_odd_names,
        seed=config["seed"],
        data_dir=data_dir(),
        resources_dir=config["resources_dir"],
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/data/{dataset}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/manifest.py"
