rule prepare_dataset:
    """Read the data set's parts (units converted once), draw the seeded split."""
    input:
        data_input,
    output:
        store=directory(L.reference),
        split=L.split,
    params:
        spec=dataset_json,
    log:
        L.log("prepare_dataset"),
    benchmark:
        L.benchmark("prepare_dataset")
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff prepare --name {wildcards.dataset} --spec {params.spec:q}"
        " --store {output.store} --split {output.split} > {log} 2>&1"
