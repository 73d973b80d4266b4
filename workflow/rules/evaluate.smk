rule evaluate:
    """Fit the four baselines on out-of-sample predictions; tidy metrics for every model
    (bases, baselines, meta-models)."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        metas=lambda w: list(meta_predictions(w).values()),
    output:
        metrics="results/{dataset}/metrics.csv",
        baselines="results/{dataset}/baselines.json",
    params:
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["evaluation"]["seed"],
        metas=lambda w: keyed(meta_predictions(w)),
    log:
        "logs/{dataset}/evaluate.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate.tsv"
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff evaluate --store {input.store} --split {input.split}"
        " --dataset {wildcards.dataset} --bootstrap {params.bootstrap} --seed {params.seed}"
        " --metrics {output.metrics} --baselines {output.baselines} --metas {params.metas}"
        " > {log} 2>&1"
