rule prepare_dataset:
    """Read the data set's parts (units converted once), draw the seeded split."""
    input:
        data_input,
    output:
        store=directory("results/{dataset}/reference.zarr"),
        split="results/{dataset}/split.json",
    params:
        spec=dataset_json,
    log:
        "logs/{dataset}/prepare_dataset.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_dataset.tsv"
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff prepare --name {wildcards.dataset} --spec {params.spec:q}"
        " --store {output.store} --split {output.split} > {log} 2>&1"
