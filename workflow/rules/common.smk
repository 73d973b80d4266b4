# Config validation and input functions shared by every stage.
import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path

from elmlff.config import (
    amortized_study,
    base_spec,
    ensemble,
    left_out,
    longest_trainings,
    md_spec,
    meta_spec,
    dedicated_subsets,
    reuses_full_set,
    subset_study,
    validate_config,
)
from elmlff.bases import FAMILIES
from elmlff.errors import ElmlffError
from elmlff.layout import CAMPAIGN, DatasetLayout
from elmlff.smk import resume_after_kill, rule_environment
from elmlff.subsets import resolve as resolve_subset
from snakemake.logging import logger

# Snakemake reads the config files leniently (a key given twice: the last wins, silently):
# read every file it merged (configfile: and --configfile) again, refusing duplicate keys.
from elmlff.config import check_config_files

check_config_files(workflow.configfiles)
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

# After snakemake itself was killed, running the same command again must just work: with no
# other snakemake alive here, drop its stale locks and the temporaries killed jobs left.
if workflow.is_main_process:
    for _what in resume_after_kill():
        logger.warning(f"elmlff: removed {_what}, left by a killed run")

# Every path under results/ and logs/ comes from elmlff.layout: L gives the rules' patterns
# (wildcard {dataset}), lay(d) a data set's concrete paths.
L = DatasetLayout("{dataset}")


# Light rules run on the submitting host under a cluster executor.
localrules:
    all,
    merge_store,
    baselines,
    evaluate,
    force_rmse_figure,
    force_rmse_campaign,
    learning_curves_figure,
    subset_raincloud,
    parity_figure,
    metrics_table,
    campaign_summary,
    findings,
    table_html,
    uncertainty,
    uncertainty_figure,
    select_for_labelling,
    figures,
    subset_table,
    md_summary,
    md_hr_figure,


def lay(dataset):
    return DatasetLayout(dataset)


def spec_json(spec):
    """A spec as JSON for the shell command, keys sorted (restating a value reruns nothing)."""
    return json.dumps(spec if isinstance(spec, dict) else asdict(spec), sort_keys=True)


def env_file(name):
    """Path of envs/{name}.yaml relative to the rule files."""
    return f"../../envs/{name}.yaml"


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


#: the keys of a data set that decide its frames and split (the rest steers later stages: a
#: change there must not reread the data and retrain every base)
DATA_KEYS = ("format", "path", "units", "parts", "download", "pbc", "split")


def dataset_json(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return spec_json({k: spec[k] for k in DATA_KEYS if k in spec})


def base_json(wildcards):
    """The base's spec for this data set (its per-data-set settings over its own)."""
    return spec_json(base_spec(config, wildcards.model, wildcards.dataset))


def train_priority(wildcards):
    """1 for the data set's bases with the longest training (elmlff.config.longest_trainings):
    they start first when cores are few."""
    return int(wildcards.model in longest_trainings(config, wildcards.dataset))


def meta_json(wildcards):
    """The MetaSpec the meta's rules get (``ablation`` left out: it only steers figures, and
    toggling it must not retrain)."""
    spec = asdict(meta_spec(config, wildcards.meta))
    spec.pop("ablation")
    return spec_json(spec)


def rmse_log_axis(datasets):
    """plot-rmse's ``--log`` for the data sets whose force RMSE figure has a log axis."""
    logs = [d for d in datasets if config["datasets"][d].get("rmse_axis") == "log"]
    return ("--log " + " ".join(logs)) if logs else ""


def amortized_meta_json(wildcards):
    """The studied meta's spec for the amortized model: ``subsets.amortized_training`` over its
    training settings."""
    spec = json.loads(meta_json(wildcards))
    spec["training"] = {**spec["training"], **config["subsets"].get("amortized_training", {})}
    return spec_json(spec)


#: the `subset` wildcard: `all`, or configured bases joined by '+' (not any name: a benchmark
#: file `train_meta_ensemble_conserv_energy_all` must not parse as meta `ensemble_conserv`,
#: subset `energy_all`)
_BASE_NAMES = "|".join(re.escape(b) for b in sorted(config["bases"], key=len, reverse=True))
SUBSET_WILDCARD = rf"all|(?:{_BASE_NAMES})(?:\+(?:{_BASE_NAMES}))*"

#: {data path: (first data set, download spec)} of the data sets the campaign runs that give
#: `download:` (the config check refuses two different specs for one path)
DOWNLOADS = {}
for _d in DATASETS:
    if config["datasets"][_d].get("download"):
        DOWNLOADS.setdefault(config["datasets"][_d]["path"], (_d, config["datasets"][_d]["download"]))


def data_input(wildcards):
    return config["datasets"][wildcards.dataset]["path"]


def _per_base(dataset, path, models=None):
    """{model/fit: path(model, fit)} over the data set's bases (or ``models``) and fits."""
    models = ensemble(config, dataset) if models is None else models
    return {f"{m}/{fit}": path(m, fit) for m in models for fit in fits(dataset)}


def base_predictions(wildcards):
    return _per_base(wildcards.dataset, lay(wildcards.dataset).base_predictions)


def base_models(wildcards):
    return _per_base(wildcards.dataset, lay(wildcards.dataset).base_model)


def meta_base_models(wildcards, stage="training"):
    """Model directories (every fit) of the bases a meta runs live in ``stage`` (training or
    inference; MetaSpec decides), for the subset's bases; none for one that reads the store."""
    spec = meta_spec(config, wildcards.meta)
    live = spec.live_in_training if stage == "training" else spec.live_at_inference
    if not live:
        return {}
    models = ensemble(config, wildcards.dataset)
    if "subset" in wildcards.keys():
        models = resolve_subset(wildcards.subset, models)
    return _per_base(wildcards.dataset, lay(wildcards.dataset).base_model, models)


def meta_inference_bases(wildcards):
    return meta_base_models(wildcards, "inference")


def headline_metas():
    """The metas the campaign runs that are not ablations: what figures choose from."""
    return [m for m in config["run_metas"] if not meta_spec(config, m).ablation]


def meta_predictions(wildcards):
    """{meta: predictions} of every meta-model the campaign runs, on the whole ensemble."""
    return {m: lay(wildcards.dataset).meta_predictions(m) for m in config["run_metas"]}


def force_delta_pair(wildcards):
    """{direct, conserv: predictions} of the first direct and first conserv meta the campaign
    runs (their force delta U_Δ); empty unless both kinds run."""
    first = {}
    for m in headline_metas():
        first.setdefault(meta_spec(config, m).kind, m)
    if len(first) < 2:
        return {}
    return {k: lay(wildcards.dataset).meta_predictions(first[k]) for k in ("direct", "conserv")}


def direct_force_bases(wildcards):
    """{base: model directory (its first fit)} of the data set's direct-force bases, whose own
    direct-vs-conservative force delta U_Δ the uncertainty stage reports."""
    d = wildcards.dataset
    return {
        m: lay(d).base_model(m, fits(d)[0])
        for m in ensemble(config, d)
        if FAMILIES[config["bases"][m]["family"]].direct_forces
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
        pool.append(lay(d).adversarial("extxyz"))
    singles = set(ensemble(config, d))
    for m in md_models(d):
        if m not in singles and m != "best_base":
            pool += [lay(d).md_trajectory(m, r) for r in range(md_spec(config, d)["replicas"])]
    return pool


def select_args(wildcards):
    """--top N or --u-c X from the config's uncertainty.select."""
    select = config["uncertainty"]["select"]
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in select.items())


def subset_names(wildcards):
    """The subset names of size k this meta's train_subsets job trains for this data set."""
    return dedicated_subsets(config, wildcards.dataset, wildcards.meta)[int(wildcards.k)]


def subset_group_dirs(wildcards):
    """{directory: meta} of the data set's subset study: the dedicated groups (one per meta and
    size k: every subset, or the amortized method's calibration sample) and, under the
    amortized method, each meta's one model over random subsets."""
    d = wildcards.dataset
    metas = config["subsets"]["metas"]
    out = {lay(d).subset_group(m, k): m for m in metas for k in dedicated_subsets(config, d, m)}
    if amortized_study(config) and subset_study(config, d):
        out.update({lay(d).subset_amortized(m): m for m in metas})
    return out


def subset_full_set(wildcards):
    """{meta: [its train_meta model, predictions]} for the study's metas whose full-set model
    is train_meta's (elmlff.config.reuses_full_set)."""
    d = wildcards.dataset
    return {
        m: [lay(d).meta_model(m), lay(d).meta_predictions(m)]
        for m in config["subsets"]["metas"]
        if reuses_full_set(config, d, m)
    }


def subset_all_names(wildcards):
    """Every subset name of the data set's study (the amortized model predicts them all)."""
    return [n for names in subset_study(config, wildcards.dataset).values() for n in names]


def subset_table_outputs():
    """subsets.csv, and the calibration of the amortized method against dedicated models."""
    out = {"table": L.subsets}
    if amortized_study(config):
        out["calibration"] = L.subsets_calibration
    return out


def md_model_inputs(wildcards):
    """What loading an MD model needs: its bases, baselines.json (the bases' val RMSEs: the
    uncertainty monitor's weights), the meta's model (and the data set's files when it has
    extra MD reference parts). Only best_meta waits for evaluate (its metrics.csv)."""
    from elmlff.baselines import BASELINES

    name, d = wildcards.model, lay(wildcards.dataset)
    out = {
        "store": d.store,
        "split": d.split,
        "baselines": d.baselines,
    }
    if md_spec(config, wildcards.dataset).get("reference_parts"):
        out["data"] = config["datasets"][wildcards.dataset]["path"]
    bases = base_models(wildcards)
    if name == "best_meta":  # chosen at run time on val: every meta of the run
        out["metas"] = [d.meta_model(m) for m in config["run_metas"]]
        out["metrics"] = d.metrics
    elif name in config["metas"]:
        out["meta"] = d.meta_model(name)
    elif name not in BASELINES:
        bases = {k: v for k, v in bases.items() if k.split("/")[0] == name}
    out["bases"] = list(bases.values())
    return out


def runnable_models(dataset):
    """The models a data set has in this run: its trained bases, the baselines, the metas
    (and best_meta, the one of lowest val force RMSE, where there are metas)."""
    from elmlff.baselines import BASELINES

    metas = set(config["run_metas"]) | ({"best_meta"} if config["run_metas"] else set())
    return set(ensemble(config, dataset)) | set(BASELINES) | metas


def eos_models(dataset):
    """EOS models of a data set: those configured that this run has (forces-only metas are
    left out by the EOS step itself)."""
    return [m for m in config["eos"]["models"] if m in runnable_models(dataset)]


def eos_inputs(wildcards):
    """Every EOS model's bases, baselines.json and meta models."""
    from elmlff.baselines import BASELINES

    d = lay(wildcards.dataset)
    out = {"store": d.store, "split": d.split, "bases": list(base_models(wildcards).values())}
    names = eos_models(wildcards.dataset)
    if any(m in BASELINES for m in names):
        out["baselines"] = d.baselines
    out["metas"] = [d.meta_model(m) for m in names if m in config["metas"]]
    return out


def md_models(dataset):
    """MD models of a data set: those configured that this run trains."""
    return [m for m in md_spec(config, dataset)["models"] if m in runnable_models(dataset)]


def md_replica_results(wildcards):
    return [
        lay(wildcards.dataset).md_result(m, r)
        for m in md_models(wildcards.dataset)
        for r in range(md_spec(config, wildcards.dataset)["replicas"])
    ]


def md_settings_json(wildcards):
    return spec_json(md_spec(config, wildcards.dataset)["settings"])


def md_species_arg(wildcards):
    z = md_spec(config, wildcards.dataset).get("diffusing_species")
    return "" if z is None else f"--diffusing-species {z}"


def md_start_args(wildcards):
    """--start-elements and --start-min-atoms (which test frames MD starts from) and, for
    best_meta, --choose-from."""
    md = md_spec(config, wildcards.dataset)
    out = ""
    if md.get("start_elements"):
        out += " --start-elements " + " ".join(md["start_elements"])
    if md.get("start_min_atoms"):
        out += f" --start-min-atoms {md['start_min_atoms']}"
    if wildcards.model == "best_meta":
        out += " --choose-from " + " ".join(config["run_metas"])
    return out


def md_reference_args(wildcards):
    """--reference test|all, and the data set's extra reference parts as a data spec."""
    d = wildcards.dataset
    md = md_spec(config, d)
    out = f"--reference {md.get('reference', 'test')}"
    if md.get("reference_parts"):
        keys = ("format", "path", "units", "pbc")
        spec = {k: v for k, v in config["datasets"][d].items() if k in keys}
        spec["parts"] = {p: "pool" for p in md["reference_parts"]}
        out += f" --reference-data {shlex.quote(spec_json(spec))}"
    return out


def keyed(paths):
    """{key: path} -> 'key=path ...' for the CLI."""
    return " ".join(f"{k}={v}" for k, v in paths.items())


def subset_table_if_any(wildcards):
    """subsets.csv when the data set has a subset study (its costs go into summary.md)."""
    d = wildcards.dataset
    if not subset_study(config, d):
        return []
    return [lay(d).subsets] + ([lay(d).subsets_calibration] if amortized_study(config) else [])


def benchmark_files(wildcards):
    """Every ``benchmark:`` file of the data set's jobs: what campaign_summary sums."""
    d = wildcards.dataset
    out = [lay(d).benchmark("prepare_dataset"), lay(d).benchmark("merge_store")]
    out += [lay(d).benchmark("evaluate")]
    for m in ensemble(config, d):
        for fit in fits(d):
            out += [lay(d).benchmark(f"{job}_{m}_{fit}") for job in ("train", "predict")]
    for m in config["run_metas"]:
        out += [lay(d).benchmark(f"{job}_meta_{m}_all") for job in ("train", "predict")]
    for m in config["subsets"]["metas"]:
        groups = dedicated_subsets(config, d, m)
        out += [lay(d).benchmark(f"train_subsets_{m}_k{k}") for k in groups]
        if amortized_study(config) and subset_study(config, d):
            out += [lay(d).benchmark(f"train_subsets_amortized_{m}")]
    if has_uncertainty(d) and config["uncertainty"]["adversarial"]["starts"]:
        out += [lay(d).benchmark("adversarial")]
    for m in md_models(d):
        out += [lay(d).benchmark(f"md_{m}_replica{r}") for r in range(md_spec(config, d)["replicas"])]
    return out


def findings_inputs(wildcards):
    """What the findings prose reads: every result file of the data set the campaign makes."""
    d = wildcards.dataset
    out = {
        "metrics": lay(d).metrics,
        "comparisons": lay(d).comparisons,
        "baselines": lay(d).baselines,
        "store": lay(d).store,
    }
    if subset_study(config, d):
        out["subsets"] = lay(d).subsets
        if amortized_study(config):
            out["calibration"] = lay(d).subsets_calibration
    if md_models(d):
        out["md"] = lay(d).table("md_table")
    if has_uncertainty(d):
        out["uncertainty"] = lay(d).uncertainty_summary
        out["coverage"] = lay(d).uncertainty_coverage
        if config["uncertainty"]["adversarial"]["starts"]:
            out["adversarial"] = lay(d).adversarial("json")
    return out


def table1_inputs(wildcards):
    """Each Table 1 data set's metrics, comparisons and MD summary."""
    out = {}
    for d in config["table1"]["datasets"]:
        out[f"{d}_metrics"] = lay(d).metrics
        out[f"{d}_comparisons"] = lay(d).comparisons
        out[f"{d}_md"] = lay(d).md_summary
    return out


def figure_outputs():
    """Every figure and table, each made from files under results/ only."""
    out = [CAMPAIGN.figure("force_rmse")]
    if config.get("table1"):
        out += [CAMPAIGN.table("table1"), CAMPAIGN.figure("stability")]
    for d in DATASETS:
        tables = ["metrics_table", "summary", "findings"]
        figures = ["force_rmse", "learning_curves"]
        if headline_metas():
            figures += ["parity"]
        if subset_study(config, d):
            figures += ["subsets_raincloud"]
        if has_uncertainty(d):
            figures += ["uncertainty"]
        if md_models(d):
            figures += ["md_hr"]
            tables += ["md_table"]
        out += [lay(d).figure(f) for f in figures]
        out += [lay(d).table(t) for t in tables]
        out += [lay(d).table_html(t) for t in tables]
    return out


def final_outputs():
    out = []
    for d in DATASETS:
        out += [lay(d).metrics, lay(d).comparisons]
        if config.get("table2") and d in config["table2"]["datasets"]:
            out += [lay(d).table("table2")]
        if config.get("eos") and d in config["eos"]["datasets"]:
            out += [lay(d).eos, lay(d).table("eos")]
        if has_uncertainty(d):
            out += [lay(d).uncertainty]
        if labelling_pool(d):
            out += [lay(d).to_label]
        if subset_study(config, d):
            out += [lay(d).subsets]
        if md_models(d):
            out += [lay(d).md_summary]
    return out + figure_outputs()
