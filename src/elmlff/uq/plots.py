"""The uncertainty figure, from ``uncertainty.csv``, its coverage curves and summary only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff.errors import ElmlffError
from elmlff.io import atomic_path

COLORS = {
    "U0": "#8172B3",
    "U1": "#C44E52",
    "U2": "#DD8452",
    "std_mean": "#4C72B0",
    "std_max": "#55A868",
    "force_delta": "#937860",
    "oracle (true error)": "black",
}


def _hexbin(ax, x, y, xlabel, ylabel, title):
    x, y = np.asarray(x), np.asarray(y)
    ok = (x > 0) & (y > 0)
    hb = ax.hexbin(x[ok], y[ok], xscale="log", yscale="log", gridsize=30, mincnt=1, cmap="viridis")
    lo = min(x[ok].min(), y[ok].min())
    hi = max(x[ok].max(), y[ok].max())
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--", label="y = x")
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return hb


def uncertainty_figure(table_csv: Path, coverage_csv: Path, summary_json: Path, out: Path) -> None:
    """U1 against the mean force's max-atom error (hexbin, log axes), the accuracy-coverage
    curves of every uncertainty, and, where the table has it, the force delta against the
    direct model's error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for p in (table_csv, coverage_csv, summary_json):
        if not Path(p).exists():
            raise ElmlffError(f"{p} not found", "run the uncertainty rule first")
    t = pd.read_csv(table_csv)
    cov = pd.read_csv(coverage_csv)
    info = json.loads(Path(summary_json).read_text())
    rho = {(r["uncertainty"], r["error"]): r for r in info["spearman"]}
    delta = "force_delta" in t
    fig, axes = plt.subplots(1, 3 if delta else 2, figsize=(14.5 if delta else 10, 4.4))

    def label(u, err):
        r = rho.get((u, err))
        return "" if r is None else f"ρ = {r['rho']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    hb = _hexbin(
        axes[0],
        t.U1,
        t.dF,
        "U1 (inverse-RMSE weighted) [eV/Å]",
        "ΔF = max_j |F_ref - <F>| [eV/Å]",
        f"{info.get('dataset', '')} {info.get('frames', '')}: U1 vs the error, {label('U1', 'dF')}",
    )
    fig.colorbar(hb, ax=axes[0], label="frames")
    ax = axes[1]
    for u, g in cov.groupby("uncertainty", sort=False):
        ls = "--" if u.startswith("oracle") else "-"
        r = rho.get((u, "dF_w" if u == "U2" else "dF"))
        extra = f" (ρ {r['rho']:.2f})" if r else ""
        ax.plot(
            g.coverage, 1e3 * g.rmse, ls, color=COLORS.get(u, "0.5"), lw=1.2, label=f"{u}{extra}"
        )
    ax.set_xlabel("coverage (fraction of frames kept, most uncertain removed)")
    ax.set_ylabel("force RMSE of the ensemble mean [meV/Å]")
    ax.set_title("accuracy-coverage", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if delta:
        hb = _hexbin(
            axes[2],
            t.force_delta,
            t.rmse_direct,
            "U_Δ = RMS(F_direct - F_conserv) [eV/Å]",
            "Ensemble-direct force RMSE [eV/Å]",
            f"force delta vs direct error, {label('force_delta', 'rmse_direct')}\n"
            f"(ensemble std_mean: {label('std_mean', 'rmse_direct')})",
        )
        fig.colorbar(hb, ax=axes[2], label="frames")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
