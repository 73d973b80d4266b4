"""``elmlff`` command line: one sub-command per workflow stage (rules stay thin).

Errors in input come out as one line, ``elmlff: error: <what>; fix: <how>``, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from elmlff.errors import ElmlffError


def _pairs(items: list[str]) -> dict[str, dict[str, Path]]:
    """``model/fit=path`` items -> {model: {fit: path}}."""
    out: dict[str, dict[str, Path]] = {}
    for item in items:
        key, _, path = item.partition("=")
        model, _, fit = key.partition("/")
        if not path or not fit:
            raise ElmlffError(f"bad argument {item!r}", "write MODEL/FIT=PATH")
        out.setdefault(model, {})[fit] = Path(path)
    return out


def _keyvalue(item: str) -> tuple[str, Path]:
    key, _, path = item.partition("=")
    if not key or not path:
        raise ElmlffError(f"bad argument {item!r}", "write NAME=PATH")
    return key, Path(path)


def _meta_spec(text: str):
    from elmlff.meta.params import MetaSpec

    try:
        return MetaSpec(**json.loads(text)).check()
    except (TypeError, json.JSONDecodeError) as err:
        raise ElmlffError(
            f"--spec is not a meta-model spec ({err})",
            "pass the JSON of a MetaSpec (the rules do: rerun through snakemake)",
        ) from None


DEVICE_HELP = "torch device: auto (cuda where the job sees one), cpu, cuda or cuda:N"


def _device(name: str) -> str:
    """The torch device a job runs on; a GPU that is asked for must be there."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ElmlffError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ElmlffError(
                f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                "GPU(s) here",
                "set `device: auto` (or cpu) in the config, or run where that GPU is visible",
            )
    return name


def main(argv: list[str] | None = None) -> int:
    # a job's threads: Snakemake sets OMP_NUM_THREADS to the rule's; deepmd-kit reads its own
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ["DP_INTRA_OP_PARALLELISM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    p = argparse.ArgumentParser(prog="elmlff", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser(
        "check-config",
        help="validate config files as the workflow merges them (config/config.yaml first)",
    )
    s.add_argument("config", type=Path, nargs="+", help="files, each over the ones before")
    s.add_argument("--alone", action="store_true", help="without config/config.yaml under it")

    s = sub.add_parser("prepare", help="read a data set, split it, write the reference store")
    s.add_argument("--name", required=True)
    s.add_argument("--spec", required=True, help="the data set's config as JSON")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)

    s = sub.add_parser("train", help="train one base fit")
    s.add_argument("--spec", required=True, help="BaseSpec as JSON")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--fit", default="full")
    s.add_argument("--dataset", default="")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("predict", help="predict a base fit's frames")
    s.add_argument("--base", required=True, type=Path)
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--fit", default="full")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--hvp-seed", type=int, default=None, help="also Hessian-vector products")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("merge", help="merge base predictions into predictions.zarr")
    s.add_argument("--reference", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--predictions", nargs="+", required=True, help="MODEL/FIT=predictions.npz")
    s.add_argument("--bases", nargs="+", required=True, help="MODEL/FIT=base directory")
    s.add_argument("--config-hash-of", default="{}", help="JSON whose hash goes in provenance")
    s.add_argument(
        "--energy-alignment", default="none", help="none or per_element (elmlff.alignment)"
    )
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("train-meta", help="train a meta-model on a subset of bases")
    s.add_argument("--spec", required=True, help="the meta's MetaSpec as JSON")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--subset", default="all")
    s.add_argument("--ensemble", nargs="+", required=True, help="the data set's bases, in order")
    s.add_argument("--bases", nargs="*", default=[], help="MODEL/FIT=base directory")
    s.add_argument("--dataset", default="")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("predict-meta", help="val + test predictions of a meta-model")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--bases", nargs="*", default=[], help="MODEL/FIT=base directory")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("train-subsets", help="train a meta-model on many subsets of one size")
    s.add_argument("--spec", required=True, help="the meta's MetaSpec as JSON")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument(
        "--subsets", nargs="+", required=True, help="subset names (one size k unless amortized)"
    )
    s.add_argument("--amortized", action="store_true", help="one direct model over random subsets")
    s.add_argument("--ensemble", nargs="+", required=True, help="the data set's bases, in order")
    s.add_argument("--bases", nargs="*", default=[], help="MODEL/FIT=base directory (conserv)")
    s.add_argument("--dataset", default="")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("subset-table", help="subsets.csv from the subset study's groups")
    s.add_argument("groups", nargs="*", help="META=group directory")
    s.add_argument(
        "--full",
        action="append",
        default=[],
        help="META=MODEL_DIR,PREDICTIONS: the full set's model is train_meta's",
    )
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--dataset", default="")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--calibration", type=Path, help="also the amortized-vs-dedicated calibration")

    s = sub.add_parser("md-replica", help="one MD replica of a trained model")
    s.add_argument("--dataset-dir", required=True, type=Path, help="results/{dataset}")
    s.add_argument("--model", required=True, help="a base, baseline or meta-model name")
    s.add_argument("--subset", default="all")
    s.add_argument("--replica", type=int, default=0)
    s.add_argument("--settings", default="{}", help="MDSettings as JSON")
    s.add_argument("--diffusing-species", type=int, default=None)
    s.add_argument("--reference", choices=["test", "all"], default="test")
    s.add_argument("--reference-data", default=None, help="data spec of extra reference parts")
    s.add_argument("--start-elements", nargs="*", default=[], help="start from such frames")
    s.add_argument("--start-min-atoms", type=int, default=0, help="... with this many atoms")
    s.add_argument("--choose-from", nargs="*", default=[], help="metas best_meta picks from")
    s.add_argument("--trajectory", required=True, type=Path)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("md-summary", help="md_summary.csv and the Table-1-like table")
    s.add_argument("replicas", nargs="+", type=Path, help="replica JSON files")
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--table", required=True, type=Path)

    s = sub.add_parser("plot-hr", help="h(r) of MD trajectories against the test frames")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("baselines", help="the four baselines fitted on the meta frames")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, type=Path, help="the baselines JSON to write")

    s = sub.add_parser("evaluate", help="tidy metrics of bases, baselines and metas")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--dataset", required=True)
    s.add_argument("--bootstrap", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--metrics", required=True, type=Path)
    s.add_argument("--baselines", required=True, type=Path, help="the baselines stage's JSON")
    s.add_argument("--metas", nargs="*", default=[], help="NAME=meta predictions.npz")
    s.add_argument("--comparisons", type=Path, default=None, help="paired comparisons CSV")
    s.add_argument("--learned-ratio", type=float, default=0.5, help="flag bases above this")
    s.add_argument("--by-group", type=Path, default=None, help="per-element test metrics CSV")
    s.add_argument("--stress-from", default="best_base", help="the metas' stress: a base")

    s = sub.add_parser("plot-rmse", help="Fig. 2a-style force RMSE bars from metrics.csv files")
    s.add_argument("metrics", nargs="+", type=Path)
    s.add_argument("--log", nargs="*", default=[], help="data sets drawn on a log axis (Fig. 2b)")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("table", help="Markdown table of test metrics from metrics.csv files")
    s.add_argument("metrics", nargs="+", type=Path)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("plot-subsets", help="Fig. 3a raincloud of RMSE against k (subsets.csv)")
    s.add_argument("subsets", type=Path)
    s.add_argument("--meta", default=None, help="default: the first meta in the table")
    s.add_argument("--calibration", type=Path, help="subsets_calibration.csv (amortized)")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("plot-parity", help="Fig. 3b parity plot of a meta vs the best base")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--meta", default=None, help="default: the candidate of lowest val RMSE")
    s.add_argument(
        "--candidates", nargs="+", required=True, help="metas to choose from (no ablations)"
    )
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("plot-learning", help="the bases' learning curves (val force error)")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("html", help="an HTML page of a Markdown table (for the report)")
    s.add_argument("markdown", type=Path)
    s.add_argument("--title", default="")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("uq", help="uncertainty of ensembles")
    uq = s.add_subparsers(dest="uq_cmd", required=True)
    u = uq.add_parser("score", help="U0/U1/U2 and baselines of models' forces in an extxyz file")
    u.add_argument("file", type=Path, nargs="?", help="frames with arrays forces_<model>")
    u.add_argument("--out", required=True, type=Path, help="per-frame CSV")
    u.add_argument("--summary", type=Path, help="JSON: weights, Spearman rho with 95 %% CI")
    u.add_argument("--models", nargs="*", default=None, help="default: every forces_<model>")
    u.add_argument(
        "--rmse",
        nargs="*",
        default=[],
        metavar="MODEL=RMSE",
        help="each scored model's force RMSE in eV/Å (weights ∝ 1/RMSE), space or comma separated",
    )
    u.add_argument("--rmse-json", type=Path, help="JSON {model: RMSE} (or a uq summary)")
    u.add_argument("--ref-key", default="forces", help="per-atom array of reference forces")
    u.add_argument("--bootstrap", type=int, default=1000)
    u = uq.add_parser("stage", help="uncertainty.csv of a campaign's test frames")
    u.add_argument("--store", required=True, type=Path)
    u.add_argument("--split", required=True, type=Path)
    u.add_argument("--baselines", required=True, type=Path, help="the baselines JSON: val RMSEs")
    u.add_argument("--pair", nargs="*", default=[], help="direct=PATH conserv=PATH predictions")
    u.add_argument(
        "--direct", nargs="*", default=[], help="BASE=DIR of each direct-force base (its U_Δ)"
    )
    u.add_argument("--rmse", default="{}", help="JSON {base: force RMSE} over the val RMSEs")
    u.add_argument("--dataset", default="")
    u.add_argument("--bootstrap", type=int, default=1000)
    u.add_argument("--out", required=True, type=Path)
    u.add_argument("--summary", required=True, type=Path)
    u.add_argument("--coverage", required=True, type=Path)
    u = uq.add_parser("adversarial", help="move test frames up in U (live bases), label them")
    u.add_argument("--dataset-dir", required=True, type=Path, help="results/{dataset}")
    u.add_argument("--starts", type=int, default=8)
    u.add_argument("--settings", default="{}", help="AttackSettings as JSON")
    u.add_argument("--reference", default=None, help="module:Class of an ASE calculator")
    u.add_argument("--reference-kwargs", default="{}", help="its arguments as JSON")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--device", default="auto", help=DEVICE_HELP)
    u.add_argument("--out", required=True, type=Path, help="sampled frames (extxyz)")
    u.add_argument("--table", required=True, type=Path)
    u.add_argument("--summary", required=True, type=Path)
    u = uq.add_parser("select", help="the most uncertain frames of a pool, for labelling")
    u.add_argument("files", nargs="+", type=Path, help="extxyz with U in info")
    u.add_argument("--u-c", type=float, default=None, help="keep frames with U above this")
    u.add_argument("--top", type=int, default=None, help="keep the N most uncertain")
    u.add_argument("--key", default="uncertainty", help="info key of U (else 'U')")
    u.add_argument("--out", required=True, type=Path)
    u = uq.add_parser("plot", help="U against the true error (hexbin) and coverage curves")
    u.add_argument("table", type=Path)
    u.add_argument("--coverage", required=True, type=Path)
    u.add_argument("--summary", required=True, type=Path)
    u.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("summary", help="costs and test errors per model, from results/ only")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--benchmarks", nargs="*", default=[], type=Path, help="benchmark files")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("download", help="fetch, verify and extract a data set's archive")
    s.add_argument("--spec", required=True, help="JSON: url, sha256, members, strip_components")
    s.add_argument("--out", required=True, type=Path, help="the data set's path")

    s = sub.add_parser("table1", help="the paper's Table 1 over data sets, and survival curves")
    s.add_argument("dataset_dirs", nargs="+", type=Path)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--html", type=Path, help="the table as an HTML page for the report")
    s.add_argument("--figure", type=Path, help="survival curves of the MD replicas (PNG)")

    s = sub.add_parser("table2", help="the paper's Table 2 of a materials data set")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--stress-from", default="best_base", help="evaluation.stress_from")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--html", type=Path, help="the table as an HTML page for the report")

    s = sub.add_parser("eos", help="relax each element's crystal and fit its equation of state")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--elements", nargs="+", required=True)
    s.add_argument("--fmax", type=float, default=0.01, help="eV/Å")
    s.add_argument("--out", required=True, type=Path, help="eos.csv")
    s.add_argument("--table", type=Path, help="eos.md")
    s.add_argument("--html", type=Path, help="the table as an HTML page for the report")

    s = sub.add_parser("findings", help="the README's results prose, from results/ only")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--benchmarks", nargs="*", default=[], type=Path, help="benchmark files")
    s.add_argument("--candidates", nargs="*", default=[], help="the metas that are no ablation")
    s.add_argument("--out", required=True, type=Path)

    s = sub.add_parser("splice", help="put a generated Markdown file into a marked block")
    s.add_argument("markdown", type=Path, help="e.g. results/methane/summary.md")
    s.add_argument("--into", required=True, type=Path, help="e.g. README.md")
    s.add_argument("--marker", required=True, help="<!-- MARKER --> ... <!-- /MARKER -->")

    a = p.parse_args(argv)
    try:
        return _run(a)
    except ElmlffError as err:
        print(f"elmlff: error: {err}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    from elmlff import pipeline

    if a.cmd == "check-config":
        from elmlff.config import DEFAULT_CONFIG, load_config

        files = list(a.config)
        if not a.alone and not any(p.resolve() == DEFAULT_CONFIG.resolve() for p in files):
            files.insert(0, DEFAULT_CONFIG)  # the Snakefile's configfile: comes first
        cfg = load_config(*files)
        names = " + ".join(str(p) for p in files)
        print(f"{names}: valid; data sets {cfg['run']}, ensemble {cfg['ensemble']}")
    elif a.cmd == "prepare":
        pipeline.prepare(a.name, json.loads(a.spec), a.store, a.split)
    elif a.cmd == "train":
        from elmlff.bases import BaseSpec

        pipeline.train_base(
            BaseSpec(**json.loads(a.spec)), a.store, a.split, a.fit, a.out, a.dataset
        )
    elif a.cmd == "predict":
        pipeline.predict_base(
            a.base, a.store, a.split, a.fit, a.out, _device(a.device), a.batch_size, a.hvp_seed
        )
    elif a.cmd == "merge":
        pipeline.merge(
            a.reference,
            a.split,
            _pairs(a.predictions),
            _pairs(a.bases),
            a.out,
            json.loads(a.config_hash_of),
            a.energy_alignment,
        )
    elif a.cmd == "train-meta":
        pipeline.train_meta(
            _meta_spec(a.spec),
            a.store,
            a.split,
            a.subset,
            a.ensemble,
            _pairs(a.bases),
            a.out,
            a.dataset,
            _device(a.device),
        )
    elif a.cmd == "predict-meta":
        pipeline.predict_meta(
            a.model, a.store, a.split, _pairs(a.bases), a.out, a.batch_size, _device(a.device)
        )
    elif a.cmd == "train-subsets" and a.amortized:
        from elmlff.study import train_subsets_amortized

        train_subsets_amortized(
            _meta_spec(a.spec),
            a.store,
            a.split,
            a.subsets,
            a.ensemble,
            a.out,
            a.dataset,
            device=_device(a.device),
        )
    elif a.cmd == "train-subsets":
        from elmlff.study import train_subsets

        train_subsets(
            _meta_spec(a.spec),
            a.store,
            a.split,
            a.subsets,
            a.ensemble,
            _pairs(a.bases),
            a.out,
            a.dataset,
            device=_device(a.device),
        )
    elif a.cmd == "subset-table":
        from elmlff.study import subset_table

        groups: dict[str, list[Path]] = {}
        for item in a.groups:
            k, v = _keyvalue(item)
            groups.setdefault(k, []).append(v)
        full = {}
        for item in a.full:
            k, v = _keyvalue(item)
            model_dir, _, pred = str(v).partition(",")
            if not pred:
                raise ElmlffError(f"bad --full {item!r}", "write META=MODEL_DIR,PREDICTIONS")
            full[k] = (Path(model_dir), Path(pred))
        subset_table(groups, a.store, a.split, a.out, a.dataset, full)
        if a.calibration:
            from elmlff.study import calibration

            calibration(a.out, a.calibration, a.dataset)
    elif a.cmd == "md-replica":
        from elmlff.md.campaign import run_replica

        run_replica(
            a.dataset_dir,
            a.model,
            a.replica,
            json.loads(a.settings),
            a.trajectory,
            a.out,
            a.subset,
            a.diffusing_species,
            a.reference,
            json.loads(a.reference_data) if a.reference_data else None,
            _device(a.device),
            a.start_elements,
            a.choose_from,
            a.start_min_atoms,
        )
    elif a.cmd == "md-summary":
        from elmlff.md.campaign import summarize

        summarize(a.replicas, a.metrics, a.out, a.table)
        print(a.table.read_text())
    elif a.cmd == "plot-hr":
        from elmlff.md.campaign import h_of_r_figure

        h_of_r_figure(a.dataset_dir, a.models, a.out)
    elif a.cmd == "baselines":
        pipeline.baselines_stage(a.store, a.split, a.out, a.dataset)
    elif a.cmd == "evaluate":
        metas = dict(_keyvalue(m) for m in a.metas)
        pipeline.evaluate(
            a.store,
            a.split,
            a.metrics,
            a.baselines,
            a.dataset,
            a.bootstrap,
            a.seed,
            metas,
            a.comparisons,
            a.learned_ratio,
            a.by_group,
            a.stress_from,
        )
    elif a.cmd == "plot-rmse":
        from elmlff.plots import force_rmse_bars

        force_rmse_bars(a.metrics, a.out, log_datasets=a.log)
    elif a.cmd == "table":
        from elmlff.plots import metrics_table

        print(metrics_table(a.metrics, a.out))
    elif a.cmd == "plot-subsets":
        from elmlff.plots import subset_raincloud

        subset_raincloud(a.subsets, a.out, a.meta, calibration=a.calibration)
    elif a.cmd == "plot-parity":
        from elmlff.plots import parity

        parity(a.dataset_dir, a.out, a.meta, candidates=a.candidates)
    elif a.cmd == "plot-learning":
        from elmlff.plots import learning_curves

        learning_curves(a.dataset_dir, a.models, a.out)
    elif a.cmd == "html":
        from elmlff.io import atomic_write_text
        from elmlff.plots import markdown_to_html

        if not a.markdown.exists():
            raise ElmlffError(f"{a.markdown} not found", "make the table first")
        page = markdown_to_html(a.markdown.read_text(), a.title or a.markdown.stem)
        atomic_write_text(a.out, page)
    elif a.cmd == "uq":
        _run_uq(a)
    elif a.cmd == "summary":
        from elmlff.summary import campaign_summary

        print(campaign_summary(a.dataset_dir, a.out, a.benchmarks))
    elif a.cmd == "download":
        from elmlff.data.source import download

        download(json.loads(a.spec), a.out)
    elif a.cmd == "table2":
        from elmlff.io import atomic_write_text
        from elmlff.plots import markdown_to_html
        from elmlff.table2 import table2

        print(table2(a.dataset_dir, a.models, a.out, a.stress_from))
        if a.html:
            atomic_write_text(a.html, markdown_to_html(a.out.read_text(), "Table 2"))
    elif a.cmd == "eos":
        from elmlff import eos
        from elmlff.io import atomic_write_text
        from elmlff.plots import markdown_to_html
        from elmlff.table2 import eos_table

        eos.run(a.dataset_dir, a.models, a.elements, a.out, eos.EosSettings(fmax=a.fmax))
        if a.table:
            print(eos_table(a.out, a.table))
            if a.html:
                atomic_write_text(a.html, markdown_to_html(a.table.read_text(), "EOS"))
    elif a.cmd == "table1":
        from elmlff.table1 import stability_figure, table1

        print(table1(a.dataset_dirs, a.models, a.out))
        if a.html:
            from elmlff.io import atomic_write_text
            from elmlff.plots import markdown_to_html

            atomic_write_text(a.html, markdown_to_html(a.out.read_text(), "Table 1"))
        if a.figure:
            stability_figure(a.dataset_dirs, a.models, a.figure)
    elif a.cmd == "findings":
        from elmlff.findings import findings

        print(findings(a.dataset_dir, a.out, a.benchmarks, a.candidates))
    elif a.cmd == "splice":
        from elmlff.summary import splice

        if not a.markdown.exists():
            raise ElmlffError(f"{a.markdown} not found", "make it first (snakemake makes it)")
        splice(a.into, a.marker, a.markdown.read_text())
    return 0


def _run_uq(a: argparse.Namespace) -> None:
    from elmlff.uq import score

    if a.uq_cmd == "score":
        path, models, items = score.score_arguments(a.file, a.models, a.rmse)
        rmse = score.parse_rmse(items, a.rmse_json)
        table, summ = score.score_extxyz(
            path, a.out, a.summary, rmse or None, models, a.ref_key, a.bootstrap
        )
        print(f"{len(table)} frames -> {a.out}")
        if len(summ):
            print(summ.to_string(index=False))
    elif a.uq_cmd == "stage":
        pair = dict(_keyvalue(x) for x in a.pair)
        direct = {k: Path(v) for k, v in (_keyvalue(x) for x in a.direct)}
        score.score_store(
            a.store,
            a.split,
            a.baselines,
            a.out,
            a.summary,
            a.coverage,
            a.dataset,
            pair or None,
            a.bootstrap,
            rmse_given=json.loads(a.rmse),
            direct=direct or None,
        )
    elif a.uq_cmd == "adversarial":
        from elmlff.uq.adversarial import AttackSettings, adversarial_stage

        adversarial_stage(
            a.dataset_dir,
            a.out,
            a.table,
            a.summary,
            a.starts,
            AttackSettings(**json.loads(a.settings)),
            a.reference,
            json.loads(a.reference_kwargs),
            a.seed,
            _device(a.device),
        )
        print(a.summary.read_text())
    elif a.uq_cmd == "select":
        from elmlff.uq.adversarial import select_for_labelling

        n = select_for_labelling(a.files, a.out, a.key, a.u_c, a.top)
        print(f"{n} frames for labelling -> {a.out}")
    elif a.uq_cmd == "plot":
        from elmlff.uq.plots import uncertainty_figure

        uncertainty_figure(a.table, a.coverage, a.summary, a.out)


if __name__ == "__main__":
    sys.exit(main())
