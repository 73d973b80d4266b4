# Figures and tables read only files under results/ (no retraining needed to redraw them):
# `snakemake figures --profile profiles/figures` redraws all of them and runs nothing else, and
# `snakemake --report results/report.html` collects them with their captions.


rule force_rmse_figure:
    """Fig. 2a-style bars of test force RMSE per model of one data set, baselines included."""
    input:
        "results/{dataset}/metrics.csv",
    output:
        "results/{dataset}/figures/force_rmse.png",
    log:
        "logs/{dataset}/force_rmse_figure.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-rmse {input} --out {output} > {log} 2>&1"


rule force_rmse_campaign:
    """Fig. 2: test force RMSE per model (bases, baselines, metas), one panel per data set."""
    input:
        expand("results/{dataset}/metrics.csv", dataset=DATASETS),
    output:
        report(
            "results/figures/force_rmse.png",
            caption="../report/force_rmse.rst",
            category="Accuracy",
        ),
    log:
        "logs/force_rmse_campaign.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-rmse {input} --out {output} > {log} 2>&1"


rule subset_raincloud:
    """Fig. 3a: raincloud of the subset study's test RMSE against k, meta beside the mean."""
    input:
        "results/{dataset}/subsets.csv",
    output:
        report(
            "results/{dataset}/figures/subsets_raincloud.png",
            caption="../report/subsets_raincloud.rst",
            category="Subsets",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/subset_raincloud.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-subsets {input} --out {output} > {log} 2>&1"


rule parity_figure:
    """Fig. 3b: parity of the best meta and the best base, low- and high-force windows."""
    input:
        metrics="results/{dataset}/metrics.csv",
        baselines="results/{dataset}/baselines.json",
        store="results/{dataset}/predictions.zarr",
        split="results/{dataset}/split.json",
        metas=lambda w: list(meta_predictions(w).values()),
    output:
        report(
            "results/{dataset}/figures/parity.png",
            caption="../report/parity.rst",
            category="Accuracy",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/parity_figure.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-parity results/{wildcards.dataset} --out {output} > {log} 2>&1"


rule metrics_table:
    """Markdown table of the test metrics."""
    input:
        "results/{dataset}/metrics.csv",
    output:
        "results/{dataset}/metrics_table.md",
    log:
        "logs/{dataset}/metrics_table.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff table {input} --out {output} > {log} 2>&1"


rule campaign_summary:
    """Table 3-like: costs (from benchmark files) and test errors per model, the subset
    study's cost per k."""
    input:
        metrics="results/{dataset}/metrics.csv",
        store="results/{dataset}/predictions.zarr",
        study=subset_table_if_any,
    output:
        "results/{dataset}/summary.md",
    log:
        "logs/{dataset}/campaign_summary.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff summary results/{wildcards.dataset} --out {output} > {log} 2>&1"


rule table_html:
    """A Markdown table as an HTML page for the report."""
    input:
        "results/{dataset}/{table}.md",
    output:
        report(
            "results/{dataset}/report/{table}.html",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"table": "{table}"},
        ),
    wildcard_constraints:
        table="metrics_table|summary|md_table",
    log:
        "logs/{dataset}/table_html_{table}.log",
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
        table="results/{dataset}/uncertainty.csv",
        coverage="results/{dataset}/uncertainty_coverage.csv",
        summary="results/{dataset}/uncertainty_summary.json",
    output:
        report(
            "results/{dataset}/figures/uncertainty.png",
            caption="../report/uncertainty.rst",
            category="Uncertainty",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/uncertainty_figure.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff uq plot {input.table} --coverage {input.coverage}"
        " --summary {input.summary} --out {output} > {log} 2>&1"
