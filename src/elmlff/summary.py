"""A campaign summary (costs and test errors per model, the subset study's cost) made from files
under results/ only: metrics.csv, the store's provenance, each model's info and the Snakemake
``benchmark:`` files the rule declares as inputs (so the summed wall time never depends on which
jobs happened to have finished)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff import bases as B
from elmlff import meta, store
from elmlff.errors import ElmlffError
from elmlff.io import atomic_write_text
from elmlff.layout import GROUP_INFO, DatasetLayout
from elmlff.subsets import ALL


def benchmark_seconds(files: Sequence[Path]) -> dict[str, float]:
    """Wall seconds per job from Snakemake ``benchmark:`` files (``{job}.tsv``)."""
    out = {}
    for tsv in files:
        if not Path(tsv).exists():
            raise ElmlffError(f"benchmark file {tsv} not found", "run the job that writes it")
        out[Path(tsv).stem] = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return out


def job_intervals(files: Sequence[Path], seconds: Mapping[str, float]) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of every job, sorted: Snakemake writes a ``benchmark:``
    file when its job ends, so a job ran from its file's mtime minus its ``seconds``
    (:func:`benchmark_seconds` of the same files)."""
    ends = {Path(f).stem: Path(f).stat().st_mtime for f in files}
    return sorted((end - seconds[job], end) for job, end in ends.items())


def benchmark_window(files: Sequence[Path], seconds: Mapping[str, float]) -> tuple[float, float]:
    """(first start, last end), in epoch seconds, of one data set's jobs
    (:func:`job_intervals`). With several jobs at once the window is shorter than their summed
    time; it spans every invocation that wrote the files (a job rerun later stretches it)."""
    runs = job_intervals(files, seconds)
    if not runs:
        return 0.0, 0.0
    return runs[0][0], max(end for _, end in runs)


def busy_time(
    files: Sequence[Path], seconds: Mapping[str, float], pause: float = 60.0
) -> tuple[float, int]:
    """(seconds, pauses): the time of :func:`benchmark_window` less every pause longer than
    ``pause`` seconds in which none of the jobs ran (another invocation's wait, or the hole a
    job rerun later left), and how many such pauses there were. Within one invocation jobs
    follow each other within seconds, so a clean run's busy time is its wall time."""
    runs = job_intervals(files, seconds)
    if not runs:
        return 0.0, 0
    busy, n, (start, end) = 0.0, 0, runs[0]
    for a, b in runs[1:]:
        if a - end > pause:  # a pause: close the busy stretch
            busy, n, start = busy + end - start, n + 1, a
        end = max(end, b)
    return busy + end - start, n


def pauses_note(busy: float, n: int) -> str:
    """' (X min without the N pauses ...)' where the window holds pauses, else ''."""
    if not n:
        return ""
    what = "a pause" if n == 1 else f"{n} pauses"
    return (
        f" ({busy / 60:.1f} min without {what} of over a minute in which no job ran: separate "
        "invocations, or jobs rerun later)"
    )


def campaign_summary(dataset_dir: Path, out: Path, benchmarks: Sequence[Path]) -> str:
    """Markdown: per base and meta-model its package, training and prediction cost, epochs and
    test force RMSE; per baseline its test force RMSE; and the summed wall time of every
    benchmarked job. (A meta's prediction cost is for its val + test frames: Ensemble-direct
    from the stored base predictions, Ensemble-conserv with the bases run live.)"""
    lay = DatasetLayout.of(dataset_dir)
    metrics = Path(lay.metrics)
    if not metrics.exists():
        raise ElmlffError(f"{metrics} not found", "run the evaluate rule first")
    df = pd.read_csv(metrics)
    test = df[(df.split == "test") & (df.metric == "force_rmse_framemean")].set_index("model")
    bench = benchmark_seconds(benchmarks)
    versions = json.loads(store.open_store(lay.store).attrs["package_versions"])
    rows = [
        "| model | kind | package | epochs run / best | train [s] | predict [ms/structure] "
        "| test force RMSE, frame mean [meV/Å] |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    flags = df[(df.split == "test") & (df.flag.fillna("") != "")] if "flag" in df else df[:0]
    flagged = dict(zip(flags.model, flags.flag, strict=True))
    for model, r in test[test.kind == "base"].iterrows():
        fits = lay.trained_bases([model])[model]
        infos = [B.read_info(fits[f]) for f in fits]
        train = sum(bench.get(f"train_{model}_{f}", 0.0) for f in fits)
        preds = [np.load(lay.base_predictions(model, f)) for f in fits]
        ms = (
            1e3
            * sum(float(p["seconds"]) for p in preds)
            / max(sum(len(p["frames"]) for p in preds), 1)
        )
        pkg = B.distribution(infos[0]["family"])
        pkg = f"{pkg} {versions.get(pkg, '')}".strip()
        epochs = "/".join(
            "pretrained"
            if i.get("pretrained")
            else f"{i.get('epochs_run', '?')} / {i.get('best_epoch', '?')}"
            for i in infos
        )
        mark = " **(learned nothing)**" if model in flagged else ""
        rows.append(
            f"| {model}{mark} | base | {pkg} | {epochs} | {train:.0f} | {ms:.2f} | "
            f"{1e3 * r.value:.2f} [{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}] |"
        )
    diverged: dict[str, str] = {}
    for model, r in test[test.kind != "base"].iterrows():
        cost, pkg, mark = "| | | |", "elmlff", ""
        if r.kind == "meta":
            info = meta.read_info(lay.meta_model(model))
            why = meta.divergence(info)
            if why:
                diverged[model], mark = why, " **(diverged)**"
            p = np.load(lay.meta_predictions(model))
            train = bench.get(f"train_meta_{model}_all", info.get("train_seconds", 0.0))
            ms = 1e3 * float(p["seconds"]) / max(len(p["frames"]), 1)
            cost = (
                f"| {info.get('epochs_run', '?')} / {info.get('best_epoch', '?')} | {train:.0f} "
                f"| {ms:.2f} |"
            )
            pkg = info.get("package", pkg)
        rows.append(
            f"| {model}{mark} | {r.kind} | {pkg} {cost} "
            f"{1e3 * r.value:.2f} [{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}] |"
        )
    total = sum(bench.values())
    start, end = benchmark_window(benchmarks, bench)
    n = int(test.n_frames.iloc[0])
    study = subset_costs(lay, bench)
    paired = comparison_lines(Path(lay.comparisons))
    text = "\n".join(
        [
            f"Data set `{lay.dataset}`: {n} test frames; 95 % bootstrap intervals in brackets.",
            "",
            *rows,
            "",
            *[f"**{m}** {why}; it stays in the mean and the study." for m, why in flagged.items()],
            *[f"**{m}** {why}." for m, why in diverged.items()],
            *([""] if flagged or diverged else []),
            *paired,
            *study,
            f"Summed time of the {len(bench)} benchmarked jobs: {total / 60:.1f} min; wall "
            f"time from the first one's start to the last one's end: "
            f"{(end - start) / 60:.1f} min{pauses_note(*busy_time(benchmarks, bench))}.",
            "",
        ]
    )
    atomic_write_text(out, text)
    return text


def comparison_lines(comparisons_csv: Path, metric: str = "force_rmse_framemean") -> list[str]:
    """Markdown lines: each meta minus the best base, linear stacking and the mean on the test
    frames (``comparisons.csv``), with the paired bootstrap interval and what it supports."""
    if not comparisons_csv.exists():
        raise ElmlffError(f"{comparisons_csv} not found", "run the evaluate rule")
    df = pd.read_csv(comparisons_csv)
    df = df[df.metric == metric]
    if df.empty:
        return []
    refs = list(dict.fromkeys(df.reference))
    lines = [
        f"Paired differences meta − reference of the test {metric_label(metric)} [meV/Å], 95 % "
        "paired bootstrap interval over the same resampled frames (negative: the meta's error "
        "is smaller; *indistinguishable*: the interval holds zero):",
        "",
        "| meta | " + " | ".join(f"vs {r}" for r in refs) + " |",
        "|---|" + "---:|" * len(refs),
    ]
    for model, g in df.groupby("model", sort=False):
        cells = []
        for r in refs:
            row = g[g.reference == r]
            if row.empty:
                cells.append("")
                continue
            x = row.iloc[0]
            cells.append(
                f"{1e3 * x.difference:+.2f} [{1e3 * x.lo:+.2f}, {1e3 * x.hi:+.2f}] {x.verdict}"
            )
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def metric_label(metric: str) -> str:
    """How a table or sentence names a metric of :mod:`elmlff.metrics`."""
    return {
        "force_rmse_framemean": "force RMSE (frame mean, Eq. 9)",
        "force_mae_framemean": "force MAE (frame mean, Eq. 8)",
        "force_rmse": "force RMSE (pooled over all components)",
        "force_mae": "force MAE (pooled over all components)",
        "energy_mae_per_atom": "energy MAE per atom",
        "energy_rmse_per_atom": "energy RMSE per atom",
    }[metric]


def subset_costs(lay: DatasetLayout, bench: dict[str, float]) -> list[str]:
    """Markdown lines on the subset study's cost: per meta and size k its models and wall time
    (``train_subsets_{meta}_k{k}`` benchmarks), and the total against one training of the same
    meta on every base (``train_meta_{meta}_all``)."""
    from elmlff.study import calibration_summary, calibration_text

    groups: dict[str, dict[int, float]] = {}
    amortized: dict[str, float] = {}
    for job, sec in bench.items():
        m = re.fullmatch(r"train_subsets_(.+)_k(\d+)", job)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = sec
        m = re.fullmatch(r"train_subsets_amortized_(.+)", job)
        if m:
            amortized[m.group(1)] = sec
    cal = calibration_summary(lay.subsets_calibration)
    lines: list[str] = []
    for meta_name in sorted(amortized):
        sec = amortized[meta_name]
        info = json.loads((Path(lay.subset_amortized(meta_name)) / GROUP_INFO).read_text())
        one = bench.get(f"train_meta_{meta_name}_all")
        ratio = f" = {sec / one:.1f}x one training on every base ({one:.0f} s)" if one else ""
        c = cal.get(meta_name)
        why = meta.divergence(info)
        lines += [
            f"Subset study `{meta_name}`, amortized method (one model over random subsets, "
            f"every subset predicted by it): {len(info['subsets'])} subsets in {sec:.0f} s"
            f"{ratio}."
            + (f" **Its model {why}.**" if why else "")
            + (
                f" Test {metric_label('force_rmse_framemean')} {calibration_text(c)} "
                "(`subsets_calibration.csv`)."
                if c
                else ""
            ),
            "",
        ]
    for meta_name in sorted(groups):
        rows, total, count = [], 0.0, 0
        bad, names = 0, set()
        for k, sec in sorted(groups[meta_name].items()):
            info = json.loads((Path(lay.subset_group(meta_name, k)) / GROUP_INFO).read_text())
            n = len(info["subsets"])
            names |= set(info["subsets"])
            bad += sum(bool(meta.divergence(i)) for i in info["subsets"].values())
            total, count = total + sec, count + n
            rows.append(f"| {k} | {n} | {sec:.0f} | {sec / n:.1f} |")
        one = bench.get(f"train_meta_{meta_name}_all")
        ratio = f" = {total / one:.1f}x one training on every base ({one:.0f} s)" if one else ""
        what = "the amortized method's calibration sample, " if meta_name in amortized else ""
        lines += [
            f"Subset study `{meta_name}`, dedicated models ({what}one job per size k, models of "
            "a size trained together):",
            "",
            "| k | models | job wall time [s] | per model [s] |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            f"{count} subset models in {total:.0f} s{ratio}."
            + (
                " The full set's model is `train_meta`'s (the same spec, seed and frames), "
                "not counted here."
                if ALL not in names and Path(lay.meta_model(meta_name)).exists()
                else ""
            )
            + (
                f" **{bad} of them diverged** (non-finite training loss or val error; each "
                "stopped there and kept at its best val state, `diverged_epoch` in "
                f"`{Path(lay.subsets).name}`)."
                if bad
                else ""
            ),
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
