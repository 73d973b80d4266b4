# Figures and tables read only files under results/ (no retraining needed to redraw them):
# `snakemake figures --profile profiles/figures` redraws all of them and runs nothing else, and
# `snakemake --report results/report.html` collects them with their captions.


rule force_rmse_figure:
    """Fig. 2a-style bars of test force RMSE per model of one data set, baselines included."""
    input:
        L.metrics,
    output:
        L.figure("force_rmse"),
    params:
        log=lambda w: rmse_log_axis([w.dataset]),
    log:
        L.log("force_rmse_figure"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-rmse {input} {params.log} --out {output} > {log} 2>&1"


rule learning_curves_figure:
    """Each base's validation force error against epoch (from base.json), checkpoint marked."""
    input:
        unpack(base_models),
    output:
        report(
            L.figure("learning_curves"),
            caption="../report/learning_curves.rst",
            category="Accuracy",
            subcategory="{dataset}",
        ),
    params:
        dir=lambda w: lay(w.dataset).dir,
        models=lambda w: " ".join(ensemble(config, w.dataset)),
    log:
        L.log("learning_curves_figure"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-learning {params.dir} --models {params.models}"
        " --out {output} > {log} 2>&1"


rule force_rmse_campaign:
    """Fig. 2: test force RMSE per model (bases, baselines, metas), one panel per data set."""
    input:
        expand(L.metrics, dataset=DATASETS),
    output:
        report(
            CAMPAIGN.figure("force_rmse"),
            caption="../report/force_rmse.rst",
            category="Accuracy",
        ),
    params:
        log=rmse_log_axis(DATASETS),
    log:
        CAMPAIGN.log("force_rmse_campaign"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-rmse {input} {params.log} --out {output} > {log} 2>&1"


rule subset_raincloud:
    """Fig. 3a: raincloud of the subset study's test RMSE against k, meta beside the mean."""
    input:
        **subset_table_outputs(),
    output:
        report(
            L.figure("subsets_raincloud"),
            caption="../report/subsets_raincloud.rst",
            category="Subsets",
            subcategory="{dataset}",
        ),
    params:
        calibration=lambda w, input: (
            f"--calibration {input.calibration}" if "calibration" in input.keys() else ""
        ),
    log:
        L.log("subset_raincloud"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-subsets {input.table} {params.calibration} --out {output}"
        " > {log} 2>&1"


rule parity_figure:
    """Fig. 3b: parity of the best meta and the best base, low- and high-force windows."""
    input:
        metrics=L.metrics,
        baselines=L.baselines,
        store=L.store,
        split=L.split,
        metas=lambda w: list(meta_predictions(w).values()),
    output:
        report(
            L.figure("parity"),
            caption="../report/parity.rst",
            category="Accuracy",
            subcategory="{dataset}",
        ),
    params:
        dir=lambda w: lay(w.dataset).dir,
        candidates=lambda w: " ".join(headline_metas()),
    log:
        L.log("parity_figure"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-parity {params.dir} --candidates {params.candidates}"
        " --out {output} > {log} 2>&1"


rule metrics_table:
    """Markdown table of the test metrics."""
    input:
        L.metrics,
    output:
        L.table("metrics_table"),
    log:
        L.log("metrics_table"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff table {input} --out {output} > {log} 2>&1"


rule campaign_summary:
    """Table 3-like: costs (from benchmark files) and test errors per model, the subset
    study's cost per k."""
    input:
        metrics=L.metrics,
        comparisons=L.comparisons,
        store=L.store,
        study=subset_table_if_any,
        benchmarks=benchmark_files,
    output:
        L.table("summary"),
    params:
        dir=lambda w: lay(w.dataset).dir,
    log:
        L.log("campaign_summary"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff summary {params.dir} --benchmarks {input.benchmarks}"
        " --out {output} > {log} 2>&1"


rule findings:
    """The README's results prose (run facts, accuracy with paired verdicts, the subset
    study, MD, uncertainty), every number read from results/."""
    input:
        unpack(findings_inputs),
        benchmarks=benchmark_files,
    output:
        L.table("findings"),
    params:
        dir=lambda w: lay(w.dataset).dir,
        candidates=lambda w: " ".join(headline_metas()),
    log:
        L.log("findings"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff findings {params.dir} --benchmarks {input.benchmarks}"
        " --candidates {params.candidates} --out {output} > {log} 2>&1"


rule table_html:
    """A Markdown table as an HTML page for the report."""
    input:
        L.table("{table}"),
    output:
        report(
            L.table_html("{table}"),
            caption="../report/tables.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"table": "{table}"},
        ),
    wildcard_constraints:
        table="metrics_table|summary|md_table|findings",
    log:
        L.log("table_html_{table}"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff html {input} --title '{wildcards.dataset}: {wildcards.table}'"
        " --out {output} > {log} 2>&1"


rule figures:
    """Every figure and table of the campaign (redraw from results/ with profiles/figures)."""
    input:
        figure_outputs(),
    default_target: False


rule uncertainty_figure:
    """U1 against the true error (hexbin), accuracy-coverage curves, force delta."""
    input:
        table=L.uncertainty,
        coverage=L.uncertainty_coverage,
        summary=L.uncertainty_summary,
    output:
        report(
            L.figure("uncertainty"),
            caption="../report/uncertainty.rst",
            category="Uncertainty",
            subcategory="{dataset}",
        ),
    log:
        L.log("uncertainty_figure"),
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff uq plot {input.table} --coverage {input.coverage}"
        " --summary {input.summary} --out {output} > {log} 2>&1"


if config.get("table1"):

    rule table1:
        """The paper's Table 1 over data sets (force MAE, stability, h(r) error per model, best
        per row bold, paired comparisons of the metas with the best base) and the survival
        curves of the MD replicas, from results/ only."""
        input:
            unpack(table1_inputs),
        output:
            table=CAMPAIGN.table("table1"),
            html=report(
                CAMPAIGN.table_html("table1"),
                caption="../report/table1.rst",
                category="Tables",
                subcategory="campaign",
            ),
            figure=report(
                CAMPAIGN.figure("stability"),
                caption="../report/stability.rst",
                category="MD",
                subcategory="campaign",
            ),
        params:
            dirs=lambda w: " ".join(lay(d).dir for d in config["table1"]["datasets"]),
            models=" ".join(config["table1"]["models"]),
        log:
            CAMPAIGN.log("table1"),
        conda:
            env_file("elmlff")
        shell:
            "python -m elmlff table1 {params.dirs} --models {params.models}"
            " --out {output.table} --html {output.html} --figure {output.figure} > {log} 2>&1"
