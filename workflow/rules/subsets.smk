# The subset study (Fig. 3a): a meta-model on every chosen k-subset of the bases. Dedicated
# method: one job per meta and size k trains all that size's subsets together (elmlff.study).
# Amortized method: one job per meta trains one model over random subsets and predicts every
# subset; the dedicated jobs then train only a calibration sample. The full set's dedicated
# model is train_meta's where the campaign trains that meta (the same model). One table at the end.


rule train_subsets:
    """Every chosen subset of size k: Ensemble-direct grouped (shared graphs and batches; one
    vmapped step for all where that pays), Ensemble-conserv one after another; val + test
    predictions."""
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


rule train_subsets_amortized:
    """One Ensemble-direct model over random subsets of the bases, every subset predicted."""
    input:
        store=L.store,
        split=L.split,
    output:
        directory(L.subset_amortized("{meta}")),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
    params:
        spec=amortized_meta_json,
        ensemble=lambda w: " ".join(ensemble(config, w.dataset)),
        subsets=lambda w: " ".join(subset_all_names(w)),
        device=config["device"],
    log:
        L.log("subsets/train_{meta}_amortized"),
    benchmark:
        L.benchmark("train_subsets_amortized_{meta}")
    conda:
        env_file("meta")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=480,
    shell:
        "python -m elmlff train-subsets --amortized --spec {params.spec:q}"
        " --store {input.store} --split {input.split} --subsets {params.subsets}"
        " --ensemble {params.ensemble} --dataset {wildcards.dataset}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule subset_table:
    """subsets.csv: every subset's meta-model beside the four baselines of the same bases."""
    input:
        store=L.store,
        split=L.split,
        groups=lambda w: list(subset_group_dirs(w)),
        full=lambda w: [p for pair in subset_full_set(w).values() for p in pair],
    output:
        **subset_table_outputs(),
    params:
        groups=lambda w: " ".join(f"{m}={d}" for d, m in subset_group_dirs(w).items()),
        full=lambda w: " ".join(f"--full {m}={','.join(p)}" for m, p in subset_full_set(w).items()),
        calibration=lambda w, output: (
            f"--calibration {output.calibration}" if "calibration" in output.keys() else ""
        ),
    log:
        L.log("subset_table"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff subset-table {params.groups} --store {input.store}"
        " --split {input.split} --dataset {wildcards.dataset} --out {output.table}"
        " {params.full} {params.calibration} > {log} 2>&1"
