# Materials data sets (pretrained bases): Table 2 and the equations of state per data set,
# defined where the config asks for them (`table2:`, `eos:`).


if config.get("table2"):

    rule table2:
        """The paper's Table 2 of one materials data set: energy, force and stress MAE per element
        and model, paired comparisons against the best base, how energies were aligned."""
        input:
            metrics=L.metrics,
            by_group=L.metrics_by_group,
            baselines=L.baselines,
            store=L.store,
            # the inference time of the bases and metas
            bases=lambda w: list(base_predictions(w).values()),
            metas=lambda w: list(meta_predictions(w).values()),
        output:
            table=L.table("table2"),
            html=report(
                L.table_html("table2"),
                caption="../report/table2.rst",
                category="Tables",
                subcategory="{dataset}",
            ),
        params:
            dir=lambda w: lay(w.dataset).dir,
            models=" ".join(config["table2"]["models"]),
            stress_from=config["evaluation"]["stress_from"],
        log:
            L.log("table2"),
        conda:
            env_file("elmlff")
        shell:
            "python -m elmlff table2 {params.dir} --models {params.models}"
            " --stress-from {params.stress_from} --out {output.table} --html {output.html}"
            " > {log} 2>&1"


if config.get("eos"):

    rule eos:
        """Relax each element's ground-state crystal and fit its equation of state with every
        chosen model that has an energy, against WIEN2k-PBE (ase.collections.dcdft)."""
        input:
            unpack(eos_inputs),
        output:
            csv=L.eos,
            table=L.table("eos"),
            html=report(
                L.table_html("eos"),
                caption="../report/eos.rst",
                category="Tables",
                subcategory="{dataset}",
            ),
        params:
            dir=lambda w: lay(w.dataset).dir,
            models=lambda w: " ".join(eos_models(w.dataset)),
            elements=" ".join(config["eos"]["elements"]),
            fmax=config["eos"]["fmax"],
        log:
            L.log("eos"),
        benchmark:
            L.benchmark("eos")
        conda:
            env_file("meta")
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120,
        shell:
            "python -m elmlff eos {params.dir} --models {params.models} --elements {params.elements}"
            " --fmax {params.fmax} --out {output.csv} --table {output.table} --html {output.html}"
            " > {log} 2>&1"
