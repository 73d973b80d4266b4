# MD benchmark: one job per model and replica (any base, baseline or meta-model through the
# ASE EnsembleCalculator), then the tidy summary and the Table-1-like table.


rule md_replica:
    """MD of one model from a seeded random test frame; stops early on collapse/NaN/heat."""
    input:
        unpack(md_model_inputs),
    output:
        trajectory="results/{dataset}/md/{model}/replica{replica}.extxyz",
        result="results/{dataset}/md/{model}/replica{replica}.json",
    wildcard_constraints:
        replica=r"\d+",
    params:
        settings=md_settings_json,
        species=md_species_arg,
    log:
        "logs/{dataset}/md/{model}_replica{replica}.log",
    benchmark:
        "results/{dataset}/benchmarks/md_{model}_replica{replica}.tsv"
    conda:
        env_file("meta")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m elmlff md-replica --dataset-dir results/{wildcards.dataset}"
        " --model {wildcards.model} --replica {wildcards.replica} --settings {params.settings:q}"
        " {params.species} --trajectory {output.trajectory} --out {output.result} > {log} 2>&1"


rule md_summary:
    """md_summary.csv (tidy) and md_table.md (force MAE, stability, h(r) error, speed)."""
    input:
        replicas=md_replica_results,
        metrics="results/{dataset}/metrics.csv",
    output:
        summary="results/{dataset}/md_summary.csv",
        table="results/{dataset}/md_table.md",
    log:
        "logs/{dataset}/md_summary.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff md-summary {input.replicas} --metrics {input.metrics}"
        " --out {output.summary} --table {output.table} > {log} 2>&1"


rule md_hr_figure:
    """h(r) of every MD model against the test frames, from the trajectories alone."""
    input:
        replicas=md_replica_results,
        store="results/{dataset}/predictions.zarr",
    output:
        report(
            "results/{dataset}/figures/md_hr.png",
            caption="../report/md_hr.rst",
            category="MD",
            subcategory="{dataset}",
        ),
    params:
        models=lambda w: " ".join(md_models(w.dataset)),
    log:
        "logs/{dataset}/md_hr_figure.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-hr results/{wildcards.dataset} --models {params.models}"
        " --out {output} > {log} 2>&1"
