# Meta-models over a subset of bases (wildcard `subset`: `all` or bases joined by '+'; see
# elmlff.subsets), so a subset study fans out over these same rules.


rule train_meta:
    """Train a meta-model on the bases' out-of-sample predictions (early stopping on val)."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        bases=lambda w: list(meta_base_models(w).values()),
    output:
        directory("results/{dataset}/metas/{meta}/{subset}/model"),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        subset=SUBSET_PATTERN,
    params:
        spec=lambda w: json.dumps(meta_spec(config, w.meta)),
        ensemble=lambda w: " ".join(ensemble(config, w.dataset)),
        bases=lambda w: keyed(meta_base_models(w)),
    log:
        "logs/{dataset}/metas/train_{meta}_{subset}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_meta_{meta}_{subset}.tsv"
    conda:
        env_file("meta")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m elmlff train-meta --name {wildcards.meta} --spec {params.spec:q}"
        " --store {input.store} --split {input.split} --subset {wildcards.subset}"
        " --ensemble {params.ensemble} --bases {params.bases} --dataset {wildcards.dataset}"
        " --out {output} > {log} 2>&1"


rule predict_meta:
    """Val + test predictions of a meta-model (Ensemble-conserv through the live bases)."""
    input:
        model="results/{dataset}/metas/{meta}/{subset}/model",
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        bases=lambda w: list(meta_base_models(w).values()),
    output:
        "results/{dataset}/metas/{meta}/{subset}/predictions.npz",
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        subset=SUBSET_PATTERN,
    params:
        bases=lambda w: keyed(meta_base_models(w)),
        batch=config["evaluation"]["predict_batch_size"],
    log:
        "logs/{dataset}/metas/predict_{meta}_{subset}.log",
    benchmark:
        "results/{dataset}/benchmarks/predict_meta_{meta}_{subset}.tsv"
    conda:
        env_file("meta")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m elmlff predict-meta --model {input.model} --store {input.store}"
        " --split {input.split} --bases {params.bases} --batch-size {params.batch}"
        " --out {output} > {log} 2>&1"
