# Figures and tables read only files under results/ (no retraining needed to redraw them).


rule force_rmse_figure:
    """Fig. 2a-style bars of test force RMSE per model, baselines included."""
    input:
        "results/{dataset}/metrics.csv",
    output:
        report(
            "results/{dataset}/figures/force_rmse.png",
            caption="../report/force_rmse.rst",
            category="Accuracy",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/force_rmse_figure.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff plot-rmse {input} --out {output} > {log} 2>&1"


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
    """Costs (from benchmark files) and test errors per model, for the README."""
    input:
        metrics="results/{dataset}/metrics.csv",
        store="results/{dataset}/predictions.zarr",
    output:
        "results/{dataset}/summary.md",
    log:
        "logs/{dataset}/campaign_summary.log",
    conda:
        env_file("elmlff")
    shell:
        "python -m elmlff summary results/{wildcards.dataset} --out {output} > {log} 2>&1"
