"""A campaign summary (costs and test errors per base) made from files under results/ only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff import store
from elmlff.bases import PACKAGES
from elmlff.errors import ElmlffError
from elmlff.io import atomic_write_text


def benchmark_seconds(bench_dir: Path) -> dict[str, float]:
    """Wall seconds per job from Snakemake ``benchmark:`` files (``{job}.tsv``)."""
    out = {}
    for tsv in sorted(Path(bench_dir).glob("*.tsv")):
        out[tsv.stem] = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return out


def campaign_summary(dataset_dir: Path, out: Path) -> str:
    """Markdown: per base and meta-model its package, training and prediction cost, epochs and
    test force RMSE; per baseline its test force RMSE; and the summed wall time of every
    benchmarked job. (A meta's prediction cost is for its val + test frames: Ensemble-direct
    from the stored base predictions, Ensemble-conserv with the bases run live.)"""
    d = Path(dataset_dir)
    metrics = d / "metrics.csv"
    if not metrics.exists():
        raise ElmlffError(f"{metrics} not found", "run the evaluate rule first")
    df = pd.read_csv(metrics)
    test = df[(df.split == "test") & (df.metric == "force_rmse_framemean")].set_index("model")
    bench = benchmark_seconds(d / "benchmarks")
    versions = json.loads(store.open_store(d / "predictions.zarr").attrs["package_versions"])
    rows = [
        "| model | kind | package | epochs | train [s] | predict [ms/structure] "
        "| test force RMSE [meV/Å] |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for model, r in test[test.kind == "base"].iterrows():
        infos = [
            json.loads(p.read_text()) for p in sorted(d.glob(f"bases/{model}/*/model/base.json"))
        ]
        train = sum(v for k, v in bench.items() if k.startswith(f"train_{model}_"))
        preds = [np.load(p) for p in sorted(d.glob(f"bases/{model}/*/predictions.npz"))]
        ms = (
            1e3
            * sum(float(p["seconds"]) for p in preds)
            / max(sum(len(p["frames"]) for p in preds), 1)
        )
        pkg = PACKAGES.get(infos[0]["family"], "?") if infos else "?"
        pkg = f"{pkg} {versions.get(pkg, '')}".strip()
        epochs = "/".join(str(i.get("epochs", "?")) for i in infos)
        rows.append(
            f"| {model} | base | {pkg} | {epochs} | {train:.0f} | {ms:.2f} | "
            f"{1e3 * r.value:.2f} [{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}] |"
        )
    for model, r in test[test.kind != "base"].iterrows():
        cost, pkg = "| | | |", "elmlff"
        mdir = d / "metas" / model / "all"
        if r.kind == "meta" and (mdir / "model" / "meta.json").exists():
            info = json.loads((mdir / "model" / "meta.json").read_text())
            p = np.load(mdir / "predictions.npz")
            train = bench.get(f"train_meta_{model}_all", info.get("train_seconds", 0.0))
            ms = 1e3 * float(p["seconds"]) / max(len(p["frames"]), 1)
            cost = f"| {info.get('epochs_run', '?')} | {train:.0f} | {ms:.2f} |"
            pkg = info.get("package", pkg)
        rows.append(
            f"| {model} | {r.kind} | {pkg} {cost} "
            f"{1e3 * r.value:.2f} [{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}] |"
        )
    total = sum(bench.values())
    n = int(test.n_frames.iloc[0])
    study = subset_costs(d, bench)
    text = "\n".join(
        [
            f"Data set `{d.name}`: {n} test frames; 95 % bootstrap intervals in brackets.",
            "",
            *rows,
            "",
            *study,
            f"Summed wall time of the {len(bench)} benchmarked jobs: {total / 60:.1f} min.",
            "",
        ]
    )
    atomic_write_text(out, text)
    return text


def subset_costs(dataset_dir: Path, bench: dict[str, float]) -> list[str]:
    """Markdown lines on the subset study's cost: per meta and size k its models and wall time
    (``train_subsets_{meta}_k{k}`` benchmarks), and the total against one training of the same
    meta on every base (``train_meta_{meta}_all``)."""
    d = Path(dataset_dir)
    lines: list[str] = []
    for meta_dir in sorted((d / "subsets").glob("*")):
        meta = meta_dir.name
        rows, total, count = [], 0.0, 0
        for k_dir in sorted(meta_dir.glob("k*"), key=lambda p: int(p.name[1:])):
            key = f"train_subsets_{meta}_{k_dir.name}"
            info_path = k_dir / "info.json"
            if key not in bench or not info_path.exists():
                continue
            n = len(json.loads(info_path.read_text())["subsets"])
            total, count = total + bench[key], count + n
            rows.append(f"| {k_dir.name[1:]} | {n} | {bench[key]:.0f} | {bench[key] / n:.1f} |")
        if not rows:
            continue
        one = bench.get(f"train_meta_{meta}_all")
        ratio = f" = {total / one:.1f}x one training on every base ({one:.0f} s)" if one else ""
        lines += [
            f"Subset study `{meta}` (one job per size k, models of a size trained together):",
            "",
            "| k | models | job wall time [s] | per model [s] |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            f"{count} subset models in {total:.0f} s{ratio}.",
            "",
        ]
    return lines


def splice(readme: Path, marker: str, text: str) -> None:
    """Replace the block between ``<!-- {marker} -->`` and ``<!-- /{marker} -->`` in a file."""
    readme = Path(readme)
    body = readme.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in body or end not in body:
        raise ElmlffError(f"{readme}: markers {start} ... {end} not found", "add them")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{text.strip()}\n{end}{tail}")
