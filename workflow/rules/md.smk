# MD benchmark: one job per model and replica (any base, baseline or meta-model through the
# ASE EnsembleCalculator), then the tidy summary and the Table-1-like table.


rule md_replica:
    """MD of one model from a seeded random test frame; stops early on collapse/NaN/heat."""
    input:
        unpack(md_model_inputs),
    output:
        trajectory=L.md_trajectory("{model}", "{replica}"),
        result=L.md_result("{model}", "{replica}"),
    wildcard_constraints:
        replica=r"\d+",
    params:
        settings=md_settings_json,
        species=md_species_arg,
        reference=md_reference_args,
        start=md_start_args,
        dir=lambda w: lay(w.dataset).dir,
        device=config["device"],
    log:
        L.log("md/{model}_replica{replica}"),
    benchmark:
        L.benchmark("md_{model}_replica{replica}")
    conda:
        env_file("meta")
    threads: 1
    priority: 5  # before the subset study: Ensemble-conserv's MD ends the critical path
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m elmlff md-replica --dataset-dir {params.dir}"
        " --model {wildcards.model} --replica {wildcards.replica} --settings {params.settings:q}"
        " {params.species} {params.reference}{params.start} --trajectory {output.trajectory}"
        " --device {params.device} --out {output.result} > {log} 2>&1"


rule md_summary:
    """md_summary.csv (tidy) and md_table.md (force MAE, stability, h(r) error, speed)."""
    input:
        replicas=md_replica_results,
        metrics=L.metrics,
    output:
        summary=L.md_summary,
        table=L.table("md_table"),
    log:
        L.log("md_summary"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff md-summary {input.replicas} --metrics {input.metrics}"
        " --out {output.summary} --table {output.table} > {log} 2>&1"


rule md_hr_figure:
    """h(r) of every MD model against the test frames, from the trajectories alone."""
    input:
        replicas=md_replica_results,
        store=L.store,
    output:
        report(
            L.figure("md_hr"),
            caption="../report/md_hr.rst",
            category="MD",
            subcategory="{dataset}",
        ),
    params:
        models=lambda w: " ".join(md_models(w.dataset)),
        dir=lambda w: lay(w.dataset).dir,
    log:
        L.log("md_hr_figure"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-hr {params.dir} --models {params.models}"
        " --out {output} > {log} 2>&1"
