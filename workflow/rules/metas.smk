# Meta-models over a subset of bases (wildcard `subset`: `all` or bases joined by '+'; see
# elmlff.subsets), so a subset study fans out over these same rules.


rule train_meta:
    """Train a meta-model on the bases' out-of-sample predictions (early stopping on val)."""
    input:
        store=L.store,
        split=L.split,
        bases=lambda w: list(meta_base_models(w).values()),  # Ensemble-conserv: live bases
    output:
        directory(L.meta_model("{meta}", "{subset}")),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        subset=SUBSET_WILDCARD,
    params:
        spec=meta_json,
        ensemble=lambda w: " ".join(ensemble(config, w.dataset)),
        bases=lambda w: keyed(meta_base_models(w)),
        device=config["device"],
    log:
        L.log("metas/train_{meta}_{subset}"),
    benchmark:
        L.benchmark("train_meta_{meta}_{subset}")
    conda:
        env_file("meta")
    threads: 1
    # the critical path (Ensemble-conserv runs the live bases with second derivatives): first
    # when a core frees, before the subset study and MD that fill the other core
    priority: 10
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m elmlff train-meta --spec {params.spec:q}"
        " --store {input.store} --split {input.split} --subset {wildcards.subset}"
        " --ensemble {params.ensemble} --bases {params.bases} --dataset {wildcards.dataset}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule predict_meta:
    """Val + test predictions of a meta-model (Ensemble-conserv through the live bases)."""
    input:
        model=L.meta_model("{meta}", "{subset}"),
        store=L.store,
        split=L.split,
        bases=lambda w: list(meta_inference_bases(w).values()),
    output:
        L.meta_predictions("{meta}", "{subset}"),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        subset=SUBSET_WILDCARD,
    params:
        bases=lambda w: keyed(meta_inference_bases(w)),
        batch=config["evaluation"]["predict_batch_size"],
        device=config["device"],
    log:
        L.log("metas/predict_{meta}_{subset}"),
    benchmark:
        L.benchmark("predict_meta_{meta}_{subset}")
    conda:
        env_file("meta")
    threads: 1
    priority: 10  # the critical path, as train_meta
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m elmlff predict-meta --model {input.model} --store {input.store}"
        " --split {input.split} --bases {params.bases} --batch-size {params.batch}"
        " --device {params.device} --out {output} > {log} 2>&1"
