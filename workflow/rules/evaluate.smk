rule baselines:
    """Fit the four baselines (best base chosen on val, plain and inverse-RMSE weighted mean,
    linear stacking) on the bases' out-of-sample predictions, with every base's val force RMSE:
    all that MD of the bases and baselines needs, so it need not wait for the meta-models."""
    input:
        store=L.store,
        split=L.split,
    output:
        L.baselines,
    log:
        L.log("baselines"),
    benchmark:
        L.benchmark("baselines")
    conda:
        env_file("elmlff")
    priority: 5  # MD waits for it (md_replica has the same)
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m elmlff baselines --store {input.store} --split {input.split}"
        " --dataset {wildcards.dataset} --out {output} > {log} 2>&1"


rule evaluate:
    """Tidy metrics for every model (bases, baselines, meta-models) with paired comparisons."""
    input:
        store=L.store,
        split=L.split,
        baselines=L.baselines,
        metas=lambda w: list(meta_predictions(w).values()),
    output:
        metrics=L.metrics,
        comparisons=L.comparisons,
        by_group=L.metrics_by_group,
    params:
        bootstrap=config["evaluation"]["bootstrap"],
        stress_from=config["evaluation"]["stress_from"],
        seed=config["evaluation"]["seed"],
        metas=lambda w: keyed(meta_predictions(w)),
        learned=config["evaluation"]["learned_ratio"],
    log:
        L.log("evaluate"),
    benchmark:
        L.benchmark("evaluate")
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff evaluate --store {input.store} --split {input.split}"
        " --dataset {wildcards.dataset} --bootstrap {params.bootstrap} --seed {params.seed}"
        " --metrics {output.metrics} --baselines {input.baselines} --metas {params.metas}"
        " --comparisons {output.comparisons} --learned-ratio {params.learned}"
        " --by-group {output.by_group} --stress-from {params.stress_from} > {log} 2>&1"


rule uncertainty:
    """U0/U1/U2 and deepmd-style force deviations of the bases on every test frame against the
    ensemble mean's error, Spearman rho, coverage; the direct-vs-conserv force delta."""
    input:
        store=L.store,
        split=L.split,
        baselines=L.baselines,
        pair=lambda w: list(force_delta_pair(w).values()),
        direct=lambda w: list(direct_force_bases(w).values()),
    output:
        table=L.uncertainty,
        summary=L.uncertainty_summary,
        coverage=L.uncertainty_coverage,
    params:
        pair=lambda w: keyed(force_delta_pair(w)),
        direct=lambda w: keyed(direct_force_bases(w)),
        bootstrap=config["evaluation"]["bootstrap"],
        rmse=spec_json(config["uncertainty"]["rmse"]),
    log:
        L.log("uncertainty"),
    conda:
        env_file("meta")  # a direct-force base's U_Δ loads it (orb-models)
    shell:
        "python -m elmlff uq stage --store {input.store} --split {input.split}"
        " --baselines {input.baselines} --pair {params.pair} --direct {params.direct}"
        " --dataset {wildcards.dataset}"
        " --bootstrap {params.bootstrap} --rmse {params.rmse:q} --out {output.table}"
        " --summary {output.summary}"
        " --coverage {output.coverage} > {log} 2>&1"


rule adversarial:
    """Test frames moved up in U - ΔE/kT through the live bases (and labelled where a reference
    calculator is configured)."""
    input:
        store=L.store,
        split=L.split,
        baselines=L.baselines,
        bases=lambda w: list(base_models(w).values()),
    output:
        frames=L.adversarial("extxyz"),
        table=L.adversarial("csv"),
        summary=L.adversarial("json"),
    params:
        starts=config["uncertainty"]["adversarial"]["starts"],
        settings=lambda w: spec_json(
            {k: v for k, v in config["uncertainty"]["adversarial"].items() if k != "starts"}
        ),
        reference=lambda w: (
            f"--reference {config['uncertainty']['reference']}"
            if config["uncertainty"]["reference"]
            else ""
        ),
        kwargs=spec_json(config["uncertainty"]["reference_kwargs"]),
        dir=lambda w: lay(w.dataset).dir,
        device=config["device"],
    log:
        L.log("adversarial"),
    benchmark:
        L.benchmark("adversarial")
    conda:
        env_file("meta")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m elmlff uq adversarial --dataset-dir {params.dir}"
        " --starts {params.starts} --settings {params.settings:q} {params.reference}"
        " --reference-kwargs {params.kwargs:q} --device {params.device} --out {output.frames}"
        " --table {output.table} --summary {output.summary} > {log} 2>&1"


rule select_for_labelling:
    """The most uncertain frames of the MD trajectories and adversarial samples, as extxyz."""
    input:
        pool=lambda w: labelling_pool(w.dataset),
    output:
        L.to_label,
    params:
        select=select_args,
    log:
        L.log("select_for_labelling"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff uq select {input.pool} {params.select} --out {output} > {log} 2>&1"
