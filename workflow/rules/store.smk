rule merge_store:
    """Every base's energies and forces on every frame, in one xarray/zarr store."""
    input:
        reference="results/{dataset}/reference.zarr",
        split="results/{dataset}/split.json",
        predictions=lambda w: list(base_predictions(w).values()),
        bases=lambda w: list(base_models(w).values()),
    output:
        directory("results/{dataset}/predictions.zarr"),
    params:
        predictions=lambda w: keyed(base_predictions(w)),
        bases=lambda w: keyed(base_models(w)),
        cfg=lambda w: json.dumps({"dataset": config["datasets"][w.dataset], "bases": {
            m: config["bases"][m] for m in ensemble(config, w.dataset)},
            "training": config["training"]}),
    log:
        "logs/{dataset}/merge_store.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_store.tsv"
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff merge --reference {input.reference} --split {input.split}"
        " --predictions {params.predictions} --bases {params.bases}"
        " --config-hash-of {params.cfg:q} --out {output} > {log} 2>&1"
