"""Figures and tables, made from ``results/`` files only (never from numbers typed in)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff.errors import ElmlffError
from elmlff.io import atomic_path, atomic_write_text

KIND_ORDER = {"base": 0, "baseline": 1, "meta": 2}
KIND_COLOR = {"base": "#4C72B0", "baseline": "#8C8C8C", "meta": "#C44E52"}
LABELS = {
    "best_base": "best base",
    "mean": "mean",
    "weighted_mean": "weighted mean",
    "linear_stacking": "linear stacking",
    "ensemble_direct": "Ensemble-direct",
    "ensemble_direct_insample": "direct, in-sample",
    "ensemble_conserv": "Ensemble-conserv",
    "ensemble_conserv_energy": "conserv, energies only",
}


def read_metrics(paths: Sequence[Path | str]) -> pd.DataFrame:
    frames = []
    for p in paths:
        if not Path(p).exists():
            raise ElmlffError(f"metrics file not found: {p}", "run the evaluate rule first")
        frames.append(pd.read_csv(p))
    return pd.concat(frames, ignore_index=True)


def _select(df: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    sel = df[(df.metric == metric) & (df.split == split)].copy()
    if sel.empty:
        raise ElmlffError(
            f"no '{metric}' rows for split '{split}' in the metrics", "rerun the evaluate rule"
        )
    sel["order"] = sel.kind.map(KIND_ORDER)
    # bases in the store's (config's) order, then baselines, then metas: as written in the CSV
    return sel.sort_values("order", kind="stable")


def force_rmse_bars(
    metrics_csv: Sequence[Path | str],
    out: Path | str,
    metric: str = "force_rmse_framemean",
    split: str = "test",
) -> None:
    """Fig. 2a-style bars: force RMSE per model (bases, baselines, metas), one panel per data set,
    with 95 % bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_metrics(metrics_csv)
    datasets = list(dict.fromkeys(df.dataset))
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(max(5.5, 1.0 + 0.75 * df.model.nunique()) * len(datasets), 4.8),
        squeeze=False,
    )
    for ax, name in zip(axes[0], datasets, strict=True):
        sel = _select(df[df.dataset == name], metric, split)
        x = np.arange(len(sel))
        v = 1e3 * sel.value.to_numpy()
        err = None
        if sel.ci_low.notna().all():
            err = np.vstack([v - 1e3 * sel.ci_low.to_numpy(), 1e3 * sel.ci_high.to_numpy() - v])
        ax.bar(
            x,
            v,
            yerr=err,
            capsize=3,
            color=[KIND_COLOR[k] for k in sel.kind],
            edgecolor="black",
            linewidth=0.5,
        )
        top = v if err is None else v + err[1]
        for xi, vi, ti in zip(x, v, top, strict=True):
            ax.annotate(
                f"{vi:.1f}",
                (xi, ti),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        labels = [LABELS.get(m, m) for m in sel.model]
        ax.set_xticks(x, labels, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_ylabel(
            f"force RMSE, {split} ({'frame mean' if 'framemean' in metric else 'pooled'}) [meV/Å]"
        )
        ax.set_title(f"{name}: {int(sel.n_frames.iloc[0])} {split} frames")
        ax.set_ylim(0, 1.12 * np.nanmax(v if err is None else v + err[1]))
        ax.grid(axis="y", alpha=0.3)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c) for k, c in KIND_COLOR.items() if k in set(df.kind)
    ]
    axes[0][0].legend(
        handles,
        [k for k in KIND_COLOR if k in set(df.kind)],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        framealpha=0.9,
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)


def metrics_table(metrics_csv: Sequence[Path | str], out: Path | str, split: str = "test") -> str:
    """Markdown table of the split's headline metrics per data set and model (meV units)."""
    df = read_metrics(metrics_csv)
    df = df[df.split == split]
    cols = [
        ("force_rmse_framemean", "F RMSE (frame mean) [meV/Å]"),
        ("force_mae_framemean", "F MAE (frame mean) [meV/Å]"),
        ("force_rmse", "F RMSE (pooled) [meV/Å]"),
        ("energy_mae_per_atom", "E MAE [meV/atom]"),
    ]
    lines = []
    for name, sub in df.groupby("dataset", sort=False):
        n = int(sub.n_frames.iloc[0])
        lines += [
            f"### {name} ({split} split, {n} frames; 95 % bootstrap interval in brackets)",
            "",
            "| model | kind | " + " | ".join(c[1] for c in cols) + " |",
            "|---|---|" + "---:|" * len(cols),
        ]
        sub = sub.assign(order=sub.kind.map(KIND_ORDER))
        for (model, kind), g in sub.sort_values("order", kind="stable").groupby(
            ["model", "kind"], sort=False
        ):
            cells = []
            for metric, _ in cols:
                if not (g.metric == metric).any():
                    cells.append("n/a")  # e.g. no energy from a forces-only meta-model
                    continue
                r = g[g.metric == metric].iloc[0]
                ci = (
                    f" [{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}]"
                    if np.isfinite(r.ci_low)
                    else ""
                )
                cells.append(f"{1e3 * r.value:.2f}{ci}")
            lines.append(f"| {LABELS.get(model, model)} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    atomic_write_text(out, text)
    return text
