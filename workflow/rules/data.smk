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



# one rule per data path that a data set downloads (its path is the output, so it runs only
# when the data are not on disk; data sets sharing a path share the rule)
for _path, (_dataset, _spec) in DOWNLOADS.items():

    rule:
        """Fetch a data set's published archive once, verify its sha256, extract what the
        campaign needs into the data set's `path` (renamed into place when complete)."""
        name:
            f"download_{_dataset}"
        output:
            directory(_path),
        params:
            spec=json.dumps(_spec, sort_keys=True),
        log:
            lay(_dataset).log("download"),
        conda:
            env_file("elmlff")
        resources:
            runtime=120,
        shell:
            "python -m elmlff download --spec {params.spec:q} --out {output} > {log} 2>&1"
