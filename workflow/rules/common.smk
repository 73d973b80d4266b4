# Config validation and input functions shared by every stage.
import json
from dataclasses import asdict
from pathlib import Path

from elmlff.config import base_spec, ensemble, left_out, md_spec, meta_spec, validate_config
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
    metrics_table,
    campaign_summary,
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


def md_model_inputs(wildcards):
    """What loading an MD model needs: its bases, plus baselines.json or the meta's model."""
    from elmlff.baselines import BASELINES

    name, d = wildcards.model, wildcards.dataset
    out = {"store": f"results/{d}/predictions.zarr", "split": f"results/{d}/split.json"}
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


def final_outputs():
    out = []
    for d in DATASETS:
        out += [
            f"results/{d}/metrics.csv",
            f"results/{d}/metrics_table.md",
            f"results/{d}/figures/force_rmse.png",
            f"results/{d}/summary.md",
        ]
        if md_models(d):
            out += [
                f"results/{d}/md_summary.csv",
                f"results/{d}/md_table.md",
                f"results/{d}/figures/md_hr.png",
            ]
    return out
