rule merge_store:
    """Every base's energies and forces on every frame, in one xarray/zarr store."""
    input:
        reference=L.reference,
        split=L.split,
        predictions=lambda w: list(base_predictions(w).values()),
        bases=lambda w: list(base_models(w).values()),
    output:
        directory(L.store),
    params:
        predictions=lambda w: keyed(base_predictions(w)),
        bases=lambda w: keyed(base_models(w)),
        cfg=lambda w: spec_json({"dataset": config["datasets"][w.dataset], "bases": {
            m: config["bases"][m] for m in ensemble(config, w.dataset)},
            "training": config["training"]}),
        alignment=lambda w: config["datasets"][w.dataset]["energy_alignment"],
    log:
        L.log("merge_store"),
    benchmark:
        L.benchmark("merge_store")
    conda:
        env_file("elmlff")
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m elmlff merge --reference {input.reference} --split {input.split}"
        " --predictions {params.predictions} --bases {params.bases}"
        " --config-hash-of {params.cfg:q} --energy-alignment {params.alignment}"
        " --out {output} > {log} 2>&1"
