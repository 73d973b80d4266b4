# The subset study (Fig. 3a): a meta-model on every chosen k-subset of the bases. One job per
# meta and size k trains all that size's subsets together (elmlff.study), then one table.


rule train_subsets:
    """Every chosen subset of size k: Ensemble-direct grouped (shared graphs and batches, one
    vmapped step for all), Ensemble-conserv one after another; val + test predictions."""
    input:
        store=L.store,
        split=L.split,
        bases=lambda w: list(meta_inference_bases(w).values()),  # conserv predicts through them
    output:
        directory(L.subset_group("{meta}", "{k}")),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        k=r"\d+",
    params:
        spec=meta_json,
        ensemble=lambda w: " ".join(ensemble(config, w.dataset)),
        subsets=lambda w: " ".join(subset_names(w)),
        bases=lambda w: keyed(meta_inference_bases(w)),
        device=config["device"],
    log:
        L.log("subsets/train_{meta}_k{k}"),
    benchmark:
        L.benchmark("train_subsets_{meta}_k{k}")
    conda:
        env_file("meta")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=480,
    shell:
        "python -m elmlff train-subsets --spec {params.spec:q}"
        " --store {input.store} --split {input.split} --subsets {params.subsets}"
        " --ensemble {params.ensemble} --bases {params.bases} --dataset {wildcards.dataset}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule subset_table:
    """subsets.csv: every subset's meta-model beside the four baselines of the same bases."""
    input:
        store=L.store,
        split=L.split,
        groups=lambda w: list(subset_group_dirs(w)),
    output:
        L.subsets,
    params:
        groups=lambda w: " ".join(f"{m}={d}" for d, m in subset_group_dirs(w).items()),
    log:
        L.log("subset_table"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff subset-table {params.groups} --store {input.store}"
        " --split {input.split} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
