# The subset study (Fig. 3a): a meta-model on every chosen k-subset of the bases. One job per
# meta and size k trains all that size's subsets together (elmlff.study), then one table.


rule train_subsets:
    """Every chosen subset of size k: Ensemble-direct grouped (shared graphs and batches, one
    vmapped step for all), Ensemble-conserv one after another; val + test predictions."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        bases=lambda w: list(subset_base_models(w).values()),
    output:
        directory("results/{dataset}/subsets/{meta}/k{k}"),
    wildcard_constraints:
        meta="|".join(config["metas"]) or "^$",
        k=r"\d+",
    params:
        spec=lambda w: json.dumps(meta_spec(config, w.meta)),
        ensemble=lambda w: " ".join(ensemble(config, w.dataset)),
        subsets=lambda w: " ".join(subset_names(w)),
        bases=lambda w: keyed(subset_base_models(w)),
        device=config["device"],
    log:
        "logs/{dataset}/subsets/train_{meta}_k{k}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_subsets_{meta}_k{k}.tsv"
    conda:
        env_file("meta")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=480,
    shell:
        "python -m elmlff train-subsets --name {wildcards.meta} --spec {params.spec:q}"
        " --store {input.store} --split {input.split} --subsets {params.subsets}"
        " --ensemble {params.ensemble} --bases {params.bases} --dataset {wildcards.dataset}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule subset_table:
    """subsets.csv: every subset's meta-model beside the four baselines of the same bases."""
    input:
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        groups=lambda w: list(subset_group_dirs(w)),
    output:
        "results/{dataset}/subsets.csv",
    params:
        groups=lambda w: " ".join(f"{m}={d}" for d, m in subset_group_dirs(w).items()),
    log:
        "logs/{dataset}/subset_table.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff subset-table {params.groups} --store {input.store}"
        " --split {input.split} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
