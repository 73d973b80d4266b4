"""The paper's Table 1 across data sets (molecule x {force MAE, stability, h(r) error} x model)
and the stability survival figure, from each data set's ``metrics.csv``, ``comparisons.csv``
and ``md_summary.csv`` only.

Force MAE is pooled over all force components of the test frames (for one molecule, whose
frames all have the same atoms, it equals the frame mean of Eq. 8), with its 95 % bootstrap
interval. Stability is the percentage of MD replicas that never collapsed within the horizon;
h(r) error is ∫|h_MD − h_ref| dr over the stable part of the runs. The best value of each row
is bold (lowest MAE and h(r) error, highest stability); each meta's force MAE against the best
base comes as a paired bootstrap interval of the difference, with its verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from elmlff import store
from elmlff.io import atomic_path, atomic_write_text, read_result_csv
from elmlff.layout import DatasetLayout
from elmlff.summary import benchmark_seconds, benchmark_window

MAE = "force_mae"  # pooled over components (= frame mean for a single molecule)


def bold(cells: list[str], values: list[float], best: str) -> list[str]:
    """``cells`` with the best finite value (``min`` or ``max``) in bold, ties included."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return cells
    target = min(finite) if best == "min" else max(finite)
    return [
        f"**{c}**" if np.isfinite(v) and v == target else c
        for c, v in zip(cells, values, strict=True)
    ]


def rows_of(dataset_dir: Path, models: Sequence[str]) -> tuple[list[str], list[str], dict]:
    """Three Markdown rows (force MAE, stability %, h(r) error) of one data set over ``models``,
    the paired lines of its metas against the best base, and facts (horizon, temperature)."""
    lay = DatasetLayout.of(dataset_dir)
    met = read_result_csv(lay.metrics, "evaluate")
    test = met[(met.split == "test") & (met.metric == MAE)].set_index("model")
    md = read_result_csv(lay.md_summary, "md_summary")
    agg = md[md.replica == "all"].pivot_table(index="model", columns="metric", values="value")
    mae = [1e3 * test.value.get(m, np.nan) for m in models]
    flags = met[(met.split == "test") & (met.flag.fillna("") != "")] if "flag" in met else met[:0]
    flagged = dict(zip(flags.model, flags.flag, strict=False))
    mae_cells = [
        f"{v:.1f} [{1e3 * test.ci_low[m]:.1f}, {1e3 * test.ci_high[m]:.1f}]"
        + (" †" if m in flagged else "")
        if m in test.index
        else "–"
        for m, v in zip(models, mae, strict=True)
    ]
    stab = [
        agg.stable_percent.get(m, np.nan) if "stable_percent" in agg else np.nan for m in models
    ]
    hr = [agg.hr_mae.get(m, np.nan) if "hr_mae" in agg else np.nan for m in models]
    name = lay.dataset
    rows = [
        f"| {name} | force MAE [meV/Å] | " + " | ".join(bold(mae_cells, mae, "min")) + " |",
        "| | stability [%] | "
        + " | ".join(bold([f"{v:.0f}" if np.isfinite(v) else "–" for v in stab], stab, "max"))
        + " |",
        "| | h(r) error | "
        + " | ".join(bold([f"{v:.3f}" if np.isfinite(v) else "–" for v in hr], hr, "min"))
        + " |",
    ]
    cmp = read_result_csv(lay.comparisons, "evaluate")
    # the best base first, then the other references comparisons.csv has (linear stacking, mean)
    c = cmp[(cmp.metric == MAE) & cmp.model.isin(models)]
    c = c.assign(first=c.reference != "best_base").sort_values(["model", "first"], kind="stable")
    paired = [
        f"{name}: {r.model} − {'best base' if r.reference == 'best_base' else r.reference} force "
        f"MAE {1e3 * r.difference:+.1f} [{1e3 * r.lo:+.1f}, {1e3 * r.hi:+.1f}] meV/Å ({r.verdict})"
        for r in c.itertuples()
    ]
    per = md[md.replica != "all"]
    present = lay.benchmarks_present()
    bench = benchmark_seconds(present)
    start, end = benchmark_window(present, bench)
    facts = {
        "flagged": {m: why for m, why in flagged.items() if m in models},
        "job_minutes": sum(bench.values()) / 60,
        "window": (start, end),  # its first job's start, its last job's end (epoch s)
        "commit": store.made_at(lay.store),
        "jobs": len(bench),
        "horizon": sorted(set(per[per.metric == "horizon_ps"].value.round(6))),
        "temperature": sorted(set(per[per.metric == "temperature_K"].value)),
        "replicas": int(per.groupby("model").replica.nunique().max()) if len(per) else 0,
    }
    return rows, paired, facts


def _span(windows: Sequence[tuple[float, float]]) -> float:
    """Seconds from the earliest start to the latest end of several (start, end) windows."""
    return max(e for _, e in windows) - min(s for s, _ in windows) if windows else 0.0


def table1(dataset_dirs: Sequence[Path], models: Sequence[str], out: Path) -> str:
    """``table1.md``: every data set's three rows over ``models``, the paired comparisons of
    the metas with the best base, and the horizon, temperature and replicas that produced it."""
    head = [
        "| molecule | metric | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    rows, paired, horizons, temps, reps = [], [], set(), set(), set()
    flagged, runs, windows = [], [], []
    for d in dataset_dirs:
        r, p, f = rows_of(Path(d), models)
        rows += r
        paired += p
        horizons.update(f["horizon"])
        temps.update(f["temperature"])
        reps.add(f["replicas"])
        name = DatasetLayout.of(Path(d)).dataset
        flagged += [f"{name}: `{m}` {why}" for m, why in f["flagged"].items()]
        runs.append(
            f"{name} {(f['window'][1] - f['window'][0]) / 60:.1f} min wall, "
            f"{f['job_minutes']:.1f} min summed "
            f"({f['jobs']} jobs, commit {f['commit']})"
        )
        windows.append(f["window"])
    horizon = ", ".join(f"{h:g} ps" for h in sorted(horizons)) or "unknown"
    temp = ", ".join(f"{t:g} K" for t in sorted(temps)) or "unknown"
    text = "\n".join(
        [
            f"Table 1 (generated from results/): test force MAE (pooled over components, 95 % "
            f"bootstrap interval), MD stability (replicas without a bond deviation > 0.5 Å within "
            f"the horizon) and h(r) error (∫|h_MD − h_ref| dr over the stable part), from "
            f"{'/'.join(str(x) for x in sorted(reps))} replica{'' if reps == {1} else 's'} of "
            f"{horizon} at {temp} per model. "
            "Bold: the best of each row. – : not run.",
            "",
            *head,
            *rows,
            "",
            "Each meta's force MAE against the best base (chosen on val) and the other "
            "baselines it is compared with, paired bootstrap interval of the difference on the "
            "same resampled test frames:",
            "",
            *[f"- {x}" for x in paired],
            "",
            "† a base flagged in metrics.csv: its test force RMSE is not below "
            "`evaluation.learned_ratio` times the better trivial predictor's (zero or mean "
            "forces); it stays in the mean and the subset study: "
            + ("; ".join(flagged) if flagged else "none")
            + ".",
            "",
            "Time, from each data set's `benchmark:` files: the wall time from its first job's "
            "start to its last job's end, and the jobs' summed time (longer where jobs ran side "
            "by side): " + ", ".join(runs) + f"; all data sets {_span(windows) / 60:.1f} "
            "min wall (one span: data sets run in separate invocations count the pauses "
            "between them).",
            "",
        ]
    )
    atomic_write_text(out, text)
    return text


def stability_figure(dataset_dirs: Sequence[Path], models: Sequence[str], out: Path) -> None:
    """Survival curves: the fraction of each model's replicas not yet collapsed against time,
    one panel per data set (a stable run survives to its horizon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(dataset_dirs)  # at least 7 inches wide: the legend and the title fit one panel
    fig, axes = plt.subplots(1, n, figsize=(max(7.0, 3.6 * n), 3.4), squeeze=False)
    for ax, d in zip(axes[0], dataset_dirs, strict=True):
        lay = DatasetLayout.of(d)
        md = read_result_csv(lay.md_summary, "md_summary")
        per = md[md.replica != "all"].pivot_table(
            index=["model", "replica"], columns="metric", values="value"
        )
        horizon = float(per.horizon_ps.max()) if "horizon_ps" in per else 1.0
        for i, m in enumerate(models):
            if m not in per.index.get_level_values(0):
                continue
            t = per.loc[m].time_to_collapse_ps.to_numpy(dtype=float)
            t = np.sort(t[np.isfinite(t)])  # a run the uncertainty monitor stopped: unknown
            if not len(t):
                continue
            grid = np.linspace(0, horizon, 200)
            alive = [(t >= g).mean() * 100 for g in grid]
            style = "-" if i < 10 else "--"  # ten colours: the rest dashed, never a repeat
            ax.step(grid, alive, where="post", label=m, lw=1.3, color=f"C{i % 10}", ls=style)
        ax.set_title(lay.dataset, fontsize=10)
        ax.set_xlabel("time [ps]")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("replicas not collapsed [%]")
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = [m for m in models if m in handles]
    fig.legend(
        [handles[m] for m in order], order, fontsize=7, loc="lower center", ncol=min(6, len(order))
    )
    fig.suptitle("MD stability (collapse: a bond > 0.5 Å from its reference length)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
