# Config validation and input functions shared by every stage.
import json
from dataclasses import asdict
from pathlib import Path

from elmlff.config import (
    base_spec,
    ensemble,
    left_out,
    md_spec,
    meta_spec,
    subset_groups,
    validate_config,
)
from elmlff.errors import ElmlffError
from elmlff.smk import rule_environment
from elmlff.subsets import PATTERN as SUBSET_PATTERN
from elmlff.subsets import resolve as resolve_subset
from snakemake.logging import logger

# Schema validation with defaults filled in; a bad config stops here with one line.
validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = config["run"]

# Bases whose family cannot run here (NEP without GPUMD) leave the DAG; say so once.
for _base, _why in left_out(config).items():
    logger.warning(f"elmlff: base '{_base}' left out of this run: {_why}")
for _d in DATASETS:
    if not ensemble(config, _d):
        raise ElmlffError(
            f"data set '{_d}': no base of its ensemble can run here",
            "add bases whose families are installed to `ensemble`",
        )

# Rules run `python -m elmlff ...` (see elmlff.smk.rule_environment).
rule_environment(workflow.basedir)


# Light rules run on the submitting host under a cluster executor.
localrules:
    all,
    merge_store,
    evaluate,
    force_rmse_figure,
    force_rmse_campaign,
    subset_raincloud,
    parity_figure,
    metrics_table,
    campaign_summary,
    table_html,
    uncertainty,
    uncertainty_figure,
    select_for_labelling,
    figures,
    subset_table,
    md_summary,
    md_hr_figure,


def env_file(name):
    """Path of envs/{name}.yaml relative to the rule files."""
    return f"../../envs/{name}.yaml"


for _d in DATASETS:
    if not Path(config["datasets"][_d]["path"]).exists():
        raise ElmlffError(
            f"data set '{_d}': path {config['datasets'][_d]['path']} not found "
            f"(working directory {Path.cwd()})",
            f"fix `datasets.{_d}.path` in the config or run snakemake from the project root",
        )


def fits(dataset):
    """Base fits of a data set: ['full'], or ['cv0', ...] under K-fold cross-fitting."""
    k = config["datasets"][dataset]["split"]["kfold"]
    return [f"cv{i}" for i in range(k)] if k >= 2 else ["full"]


def models_of_family(family):
    """Every base of a family that some data set of this run trains."""
    names = {m for d in DATASETS for m in ensemble(config, d)}
    return sorted(m for m in names if config["bases"][m]["family"] == family)


def families():
    return sorted({config["bases"][m]["family"] for d in DATASETS for m in ensemble(config, d)})


def dataset_json(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset])


def base_json(wildcards):
    return json.dumps(asdict(base_spec(config, wildcards.model)))


def data_input(wildcards):
    return config["datasets"][wildcards.dataset]["path"]


def _per_base(dataset, pattern):
    return {
        f"{m}/{fit}": pattern.format(dataset=dataset, model=m, fit=fit)
        for m in ensemble(config, dataset)
        for fit in fits(dataset)
    }


def base_predictions(wildcards):
    return _per_base(wildcards.dataset, "results/{dataset}/bases/{model}/{fit}/predictions.npz")


def base_models(wildcards):
    return _per_base(wildcards.dataset, "results/{dataset}/bases/{model}/{fit}/model")


def meta_base_models(wildcards):
    """Model directories of the subset's bases (every fit), for metas that run them live."""
    models = resolve_subset(wildcards.subset, ensemble(config, wildcards.dataset))
    return {
        k: v for k, v in base_models(wildcards).items() if k.split("/")[0] in models
    }


def meta_predictions(wildcards):
    """{meta: predictions} of every meta-model the campaign runs, on the whole ensemble."""
    return {
        m: f"results/{wildcards.dataset}/metas/{m}/all/predictions.npz" for m in config["run_metas"]
    }


def force_delta_pair(wildcards):
    """{direct, conserv: predictions} of the first direct and first conserv meta the campaign
    runs (their force delta U_Δ); empty unless both kinds run."""
    first = {}
    for m in config["run_metas"]:
        spec = config["metas"][m]
        if spec.get("fit_on", "out_of_sample") == "out_of_sample":
            first.setdefault(spec["kind"], m)
    if len(first) < 2:
        return {}
    return {
        k: f"results/{wildcards.dataset}/metas/{first[k]}/all/predictions.npz"
        for k in ("direct", "conserv")
    }


def has_uncertainty(d):
    """The uncertainty stage needs an ensemble of two or more bases."""
    return len(ensemble(config, d)) >= 2


def labelling_pool(d):
    """Frames of data set ``d`` that carry U: adversarial samples and the MD trajectories of
    models with two or more bases (ensembles record U every step)."""
    if not has_uncertainty(d):
        return []
    pool = []
    if config["uncertainty"]["adversarial"]["starts"]:
        pool.append(f"results/{d}/uq/adversarial.extxyz")
    singles = set(ensemble(config, d))
    for m in md_models(d):
        if m not in singles and m != "best_base":
            pool += [
                f"results/{d}/md/{m}/replica{r}.extxyz"
                for r in range(md_spec(config, d)["replicas"])
            ]
    return pool


def select_args(wildcards):
    """--top N or --u-c X from the config's uncertainty.select."""
    select = config["uncertainty"]["select"]
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in select.items())


def subset_names(wildcards):
    """The study's subset names of size k for this data set."""
    return subset_groups(config, wildcards.dataset)[int(wildcards.k)]


def subset_base_models(wildcards):
    """Every base fit's model directory when the studied meta runs its bases live (conserv);
    nothing for Ensemble-direct, which learns from the store alone."""
    if config["metas"][wildcards.meta]["kind"] != "conserv":
        return {}
    return base_models(wildcards)


def subset_group_dirs(wildcards):
    """{group directory: meta} of the data set's subset study (one per meta and size k)."""
    return {
        f"results/{wildcards.dataset}/subsets/{m}/k{k}": m
        for m in config["subsets"]["metas"]
        for k in subset_groups(config, wildcards.dataset)
    }


def md_model_inputs(wildcards):
    """What loading an MD model needs: its bases, plus baselines.json or the meta's model."""
    from elmlff.baselines import BASELINES

    name, d = wildcards.model, wildcards.dataset
    out = {
        "store": f"results/{d}/predictions.zarr",
        "split": f"results/{d}/split.json",
        "metrics": f"results/{d}/metrics.csv",  # val RMSEs: the uncertainty monitor's weights
    }
    bases = base_models(wildcards)
    if name in config["metas"]:
        out["meta"] = f"results/{d}/metas/{name}/all/model"
    elif name in BASELINES:
        out["baselines"] = f"results/{d}/baselines.json"
    else:
        bases = {k: v for k, v in bases.items() if k.split("/")[0] == name}
    out["bases"] = list(bases.values())
    return out


def md_models(dataset):
    """MD models of a data set: those configured that this run trains."""
    from elmlff.baselines import BASELINES

    avail = set(ensemble(config, dataset)) | set(BASELINES) | set(config["run_metas"])
    return [m for m in md_spec(config, dataset)["models"] if m in avail]


def md_replica_results(wildcards):
    return [
        f"results/{wildcards.dataset}/md/{m}/replica{r}.json"
        for m in md_models(wildcards.dataset)
        for r in range(md_spec(config, wildcards.dataset)["replicas"])
    ]


def md_settings_json(wildcards):
    return json.dumps(md_spec(config, wildcards.dataset)["settings"])


def md_species_arg(wildcards):
    z = md_spec(config, wildcards.dataset).get("diffusing_species")
    return "" if z is None else f"--diffusing-species {z}"


def keyed(paths):
    """{key: path} -> 'key=path ...' for the CLI."""
    return " ".join(f"{k}={v}" for k, v in paths.items())


def subset_table_if_any(wildcards):
    """subsets.csv when the data set has a subset study (its costs go into summary.md)."""
    if subset_groups(config, wildcards.dataset):
        return [f"results/{wildcards.dataset}/subsets.csv"]
    return []


def figure_outputs():
    """Every figure and table, each made from files under results/ only."""
    out = ["results/figures/force_rmse.png"]
    for d in DATASETS:
        tables = ["metrics_table", "summary"]
        out += [f"results/{d}/figures/force_rmse.png"]
        if config["run_metas"]:
            out += [f"results/{d}/figures/parity.png"]
        if subset_groups(config, d):
            out += [f"results/{d}/figures/subsets_raincloud.png"]
        if has_uncertainty(d):
            out += [f"results/{d}/figures/uncertainty.png"]
        if md_models(d):
            out += [f"results/{d}/figures/md_hr.png"]
            tables += ["md_table"]
        out += [f"results/{d}/{t}.md" for t in tables]
        out += [f"results/{d}/report/{t}.html" for t in tables]
    return out


def final_outputs():
    out = []
    for d in DATASETS:
        out += [f"results/{d}/metrics.csv"]
        if has_uncertainty(d):
            out += [f"results/{d}/uncertainty.csv"]
        if labelling_pool(d):
            out += [f"results/{d}/uq/to_label.extxyz"]
        if subset_groups(config, d):
            out += [f"results/{d}/subsets.csv"]
        if md_models(d):
            out += [f"results/{d}/md_summary.csv"]
    return out + figure_outputs()
