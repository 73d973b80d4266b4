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


rule uncertainty:
    """U0/U1/U2 and deepmd-style force deviations of the bases on every test frame against the
    ensemble mean's error, Spearman rho, coverage; the direct-vs-conserv force delta."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        metrics="results/{dataset}/metrics.csv",
        pair=lambda w: list(force_delta_pair(w).values()),
    output:
        table="results/{dataset}/uncertainty.csv",
        summary="results/{dataset}/uncertainty_summary.json",
        coverage="results/{dataset}/uncertainty_coverage.csv",
    params:
        pair=lambda w: keyed(force_delta_pair(w)),
        bootstrap=config["evaluation"]["bootstrap"],
        rmse=json.dumps(config["uncertainty"]["rmse"]),
    log:
        "logs/{dataset}/uncertainty.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff uq stage --store {input.store} --split {input.split}"
        " --metrics {input.metrics} --pair {params.pair} --dataset {wildcards.dataset}"
        " --bootstrap {params.bootstrap} --rmse {params.rmse:q} --out {output.table}"
        " --summary {output.summary}"
        " --coverage {output.coverage} > {log} 2>&1"


rule adversarial:
    """Test frames moved up in U - ΔE/kT through the live bases (and labelled where a reference
    calculator is configured)."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        metrics="results/{dataset}/metrics.csv",
        bases=lambda w: list(base_models(w).values()),
    output:
        frames="results/{dataset}/uq/adversarial.extxyz",
        table="results/{dataset}/uq/adversarial.csv",
        summary="results/{dataset}/uq/adversarial.json",
    params:
        starts=config["uncertainty"]["adversarial"]["starts"],
        settings=lambda w: json.dumps(
            {k: v for k, v in config["uncertainty"]["adversarial"].items() if k != "starts"}
        ),
        reference=lambda w: (
            f"--reference {config['uncertainty']['reference']}"
            if config["uncertainty"]["reference"]
            else ""
        ),
        kwargs=json.dumps(config["uncertainty"]["reference_kwargs"]),
    log:
        "logs/{dataset}/adversarial.log",
    benchmark:
        "results/{dataset}/benchmarks/adversarial.tsv"
    conda:
        env_file("meta")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m elmlff uq adversarial --dataset-dir results/{wildcards.dataset}"
        " --starts {params.starts} --settings {params.settings:q} {params.reference}"
        " --reference-kwargs {params.kwargs:q} --out {output.frames} --table {output.table}"
        " --summary {output.summary} > {log} 2>&1"


rule select_for_labelling:
    """The most uncertain frames of the MD trajectories and adversarial samples, as extxyz."""
    input:
        pool=lambda w: labelling_pool(w.dataset),
    output:
        "results/{dataset}/uq/to_label.extxyz",
    params:
        select=select_args,
    log:
        "logs/{dataset}/select_for_labelling.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff uq select {input.pool} {params.select} --out {output} > {log} 2>&1"
