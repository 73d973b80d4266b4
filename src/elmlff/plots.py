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
    log_datasets: Sequence[str] = (),
) -> None:
    """Fig. 2a-style bars: force RMSE per model (bases, baselines, metas), one panel per data set,
    with 95 % bootstrap intervals; the panels of ``log_datasets`` on a log axis (Fig. 2b)."""
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
        if name in log_datasets:
            low = v if err is None else v - err[0]
            ax.set_yscale("log")
            ax.set_ylim(0.7 * np.nanmin(low), 1.6 * np.nanmax(top))
            ax.set_ylabel(ax.get_ylabel() + ", log scale")
        else:
            ax.set_ylim(0, 1.12 * np.nanmax(top))
        ax.grid(axis="y", alpha=0.3, which="both" if name in log_datasets else "major")
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path | str) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(out).suffix.lstrip(".") or "png")


def subset_raincloud(
    subsets_csv: Path | str,
    out: Path | str,
    meta: str | None = None,
    baseline: str = "mean",
    metric: str = "force_rmse_framemean",
    split: str = "test",
    calibration: Path | str | None = None,
) -> None:
    """Fig. 3a: test force RMSE of every k-subset meta-model against k, as rainclouds (half
    violin, box, jittered points) with the plain mean of the same subsets beside each, and the
    best single base (chosen on val among all bases) as a dashed line. The title names the
    method that drew the meta's cloud; under the amortized method it also gives its calibration
    against dedicated models (``subsets_calibration.csv``)."""
    from elmlff.study import (
        AMORTIZED,
        DEDICATED,
        calibration_summary,
        calibration_text,
        shown_method,
    )

    plt = _pyplot()
    path = Path(subsets_csv)
    if not path.exists():
        raise ElmlffError(f"{path} not found", "run the subset study (rule subset_table)")
    df = shown_method(pd.read_csv(path))
    df = df[(df.metric == metric) & (df.split == split)]
    metas = list(dict.fromkeys(df[df.kind == "meta"].meta))
    if not metas:
        raise ElmlffError(f"no meta-model rows in {path}", "rerun the subset_table rule")
    meta = meta or metas[0]
    series = [(meta, "meta"), (baseline, "baseline")]
    colors = {meta: KIND_COLOR["meta"], baseline: KIND_COLOR["baseline"]}
    ks = sorted(df.k.unique())
    fig, ax = plt.subplots(figsize=(max(6.5, 0.95 * len(ks) + 2.0), 4.8))
    rng = np.random.default_rng(0)
    allv = 1e3 * df[df.meta.isin([meta, baseline])].value.to_numpy()
    log = allv.max() / max(allv.min(), 1e-12) > 4
    medians: dict[str, list[float]] = {meta: [], baseline: []}
    for k in ks:
        for side, (name, kind) in zip((-1, 1), series, strict=True):
            v = 1e3 * df[(df.k == k) & (df.meta == name) & (df.kind == kind)].value.to_numpy()
            if len(v) == 0:
                medians[name].append(np.nan)
                continue
            medians[name].append(float(np.median(v)))
            c, x0 = colors[name], k + side * 0.2
            if len(np.unique(v)) > 2:  # the cloud: a half violin pointing away from k
                y = np.log10(v) if log else v
                parts = ax.violinplot([y], positions=[x0], widths=0.36, showextrema=False)
                for body in parts["bodies"]:
                    verts = body.get_paths()[0].vertices
                    keep = verts[:, 0] * side >= x0 * side
                    verts[~keep, 0] = x0
                    if log:
                        verts[:, 1] = 10 ** verts[:, 1]
                    body.set_facecolor(c)
                    body.set_edgecolor(c)
                    body.set_alpha(0.35)
            ax.boxplot(
                v,
                positions=[x0],
                widths=0.07,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": "white", "edgecolor": c},
                medianprops={"color": c, "linewidth": 1.5},
                whiskerprops={"color": c},
                capprops={"color": c},
            )
            jitter = x0 - side * (0.07 + 0.08 * rng.random(len(v)))  # the rain, towards k
            ax.scatter(jitter, v, s=7, color=c, alpha=0.7, linewidths=0, zorder=3)
    for name, kind in series:
        ax.plot(
            [k + (-0.2 if kind == "meta" else 0.2) for k in ks],
            medians[name],
            color=colors[name],
            lw=1,
            alpha=0.8,
            label=f"{LABELS.get(name, name)} (median)",
        )
    best = df[(df.meta == "best_base") & (df.subset == "all")]
    if len(best):
        ax.axhline(
            1e3 * best.value.iloc[0],
            color="black",
            ls="--",
            lw=0.8,
            label="best single base (chosen on val)",
        )
    if log:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    pad = 1.12 if log else 1.0
    span = allv.max() - allv.min()
    ax.set_ylim(
        allv.min() / pad if log else allv.min() - 0.05 * span,
        allv.max() * pad if log else allv.max() + 0.05 * span,
    )
    counts = df[(df.meta == meta) & (df.kind == "meta")].groupby("k").size()
    ax.set_xticks(ks, [f"{k}\n({counts.get(k, 0)})" for k in ks])
    ax.set_xlabel("number of bases k (subsets)")
    ax.set_ylabel(f"force RMSE, {split} (frame mean) [meV/Å]")
    rows = df[(df.meta == meta) & (df.kind == "meta")]
    method = rows.method.iloc[0] if "method" in rows and len(rows) else DEDICATED
    how = {
        DEDICATED: "dedicated method: one model per subset",
        AMORTIZED: "amortized method: one model over random subsets",
    }[method]
    title = (
        f"{df.dataset.iloc[0]}: {LABELS.get(meta, meta)} vs {LABELS.get(baseline, baseline)} "
        f"on {rows.subset.nunique()} subsets\n({how})"
    )
    cal = calibration_summary(calibration).get(meta) if calibration else None
    if method == AMORTIZED and cal:
        title += f"\n{calibration_text(cal)}"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def learning_curves(dataset_dir: Path | str, models: Sequence[str], out: Path | str) -> None:
    """Each base's validation force error against epoch, from the ``history`` in its
    ``base.json`` (the first fit under K-fold), the epoch of the checkpoint kept marked. The
    families record different errors: schnetpack and NequIP the val force MAE over all val
    frames, DeePMD its lcurve's force RMSE on one val batch; the legend says which."""
    from elmlff import bases as B
    from elmlff.layout import DatasetLayout

    lay = DatasetLayout.of(dataset_dir)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    missing: list[str] = []  # bases whose base.json has no learning curve (an older run)
    for i, (model, fits) in enumerate(lay.trained_bases(list(models)).items()):
        info = B.read_info(next(iter(fits.values())))
        hist = info.get("history") or []
        key, what = (
            ("val_force_mae", "MAE, val")
            if hist and "val_force_mae" in hist[0]
            else ("val_force_rmse", "RMSE, one val batch")
        )
        pts = [(h["epoch"], h[key]) for h in hist if np.isfinite(h.get(key, np.nan))]
        if not pts:
            missing.append(model)
            continue
        x, y = np.array(pts).T
        color = f"C{i % 10}"
        ax.plot(x, 1e3 * y, color=color, lw=1.2, label=f"{model} ({what})")
        best = info.get("best_epoch")
        if best in x:
            ax.plot(best, 1e3 * y[list(x).index(best)], "o", color=color, ms=4)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation force error [meV/Å]")
    ax.set_title(f"{lay.dataset}: learning curves of the bases (dot: checkpoint kept)", fontsize=9)
    if missing:
        ax.text(
            0.01,
            0.01,
            "no curve recorded: " + ", ".join(missing),
            transform=ax.transAxes,
            fontsize=7,
            color="0.4",
        )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)


def choose_meta(metrics: pd.DataFrame, candidates: Sequence[str] | None = None) -> str:
    """The meta-model with the lowest *val* frame-mean force RMSE among ``candidates`` (default:
    every meta in ``metrics``); the test split never takes part in the choice."""
    m = metrics
    val = m[(m.kind == "meta") & (m.split == "val") & (m.metric == "force_rmse_framemean")]
    if candidates is not None:
        val = val[val.model.isin(list(candidates))]
    if val.empty:
        raise ElmlffError(
            "no meta-model with val metrics to choose from", "train and predict a meta-model"
        )
    return str(val.sort_values("value").model.iloc[0])


def parity(
    dataset_dir: Path | str,
    out: Path | str,
    meta: str | None = None,
    split: str = "test",
    candidates: Sequence[str] | None = None,
) -> None:
    """Fig. 3b: a meta-model's force components against the reference on the test split, with
    insets on a low-force and a high-force window where the MAE of the best base and of the meta
    are printed. ``meta`` defaults to :func:`choose_meta` over ``candidates`` (the campaign's
    metas that are not ablations): lowest val force RMSE, never chosen on test."""
    import json

    from elmlff import keys, store
    from elmlff.data import Split
    from elmlff.layout import DatasetLayout
    from elmlff.meta import read_predictions

    plt = _pyplot()
    lay = DatasetLayout.of(dataset_dir)
    df = read_metrics([lay.metrics])
    chosen = meta is None
    if chosen:
        meta = choose_meta(df, candidates)
    pred = Path(lay.meta_predictions(meta))
    if not pred.exists():
        raise ElmlffError(f"{pred} not found", f"run predict_meta for '{meta}'")
    weights = json.loads(Path(lay.baselines).read_text())["baselines"]["best_base"]["weights"]
    best = max(weights, key=weights.get)
    ds = store.open_store(lay.store)
    frames = store.frames_from_dataset(ds)
    idx = np.sort(Split.load(lay.split).roles[split])
    atoms = frames.atom_index(idx)
    ref = frames.forces[atoms].ravel()
    y_meta = read_predictions(meta, pred, frames)[1][atoms].ravel()
    m = ds["model"].values.astype(str).tolist().index(best)
    y_base = ds[keys.BASE_FORCES].values[m][atoms].ravel()
    a = np.abs(ref)
    lo_w = float(np.quantile(a, 0.10))
    hi_w = float(np.quantile(ref, 0.99))
    windows = {
        "low": (np.abs(ref) <= lo_w, (-lo_w, lo_w)),
        "high": (ref >= hi_w, (hi_w, float(ref.max()))),
    }
    fig = plt.figure(figsize=(10.0, 6.0))
    grid = fig.add_gridspec(2, 2, width_ratios=[1.6, 1.0])
    ax = fig.add_subplot(grid[:, 0])
    lim = float(max(np.abs(ref).max(), np.abs(y_meta).max(), np.abs(y_base).max())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.7)
    name = LABELS.get(meta, meta)
    for y, c, label in ((y_base, "base", f"best base ({best})"), (y_meta, "meta", name)):
        ax.scatter(ref, y, s=3, alpha=0.35, color=KIND_COLOR[c], lw=0, label=label)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("reference force component [eV/Å]")
    ax.set_ylabel("predicted force component [eV/Å]")
    mae = 1e3 * np.mean(np.abs(y_meta - ref)), 1e3 * np.mean(np.abs(y_base - ref))
    how = "chosen on val: lowest force RMSE, no ablations" if chosen else "as asked"
    ax.set_title(
        f"{lay.dataset}, {split}: {len(idx)} frames, {len(ref)} components\n"
        f"{name} ({how})\n"
        f"pooled force MAE: {name} {mae[0]:.1f}, best base (chosen on val) {mae[1]:.1f} meV/Å",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=8, markerscale=3, framealpha=0.9)
    for row, (wname, (mask, (x0, x1))) in enumerate(windows.items()):
        ins = fig.add_subplot(grid[row, 1])
        pad = 0.08 * (x1 - x0)
        lo, hi = x0 - pad, x1 + pad
        ins.plot([lo, hi], [lo, hi], color="black", lw=0.6)
        for y, c in ((y_base, "base"), (y_meta, "meta")):
            ins.scatter(ref[mask], y[mask], s=4, alpha=0.5, color=KIND_COLOR[c], lw=0)
        ins.set_xlim(lo, hi)
        ins.set_ylim(lo, hi)
        ins.set_aspect("equal")
        ins.tick_params(labelsize=7)
        ins.set_xlabel("reference [eV/Å]", fontsize=8)
        ins.set_ylabel("predicted [eV/Å]", fontsize=8)
        e_meta = 1e3 * np.mean(np.abs(y_meta[mask] - ref[mask]))
        e_base = 1e3 * np.mean(np.abs(y_base[mask] - ref[mask]))
        what = "|F| <= 10 % quantile" if wname == "low" else "F >= 99 % quantile"
        ins.set_title(
            f"{wname} force ({what}, {mask.sum()} comp.)\n"
            f"MAE {name} {e_meta:.1f}, best base {e_base:.1f} meV/Å",
            fontsize=8,
        )
        ax.add_patch(
            plt.Rectangle((lo, lo), hi - lo, hi - lo, fill=False, ec="0.3", lw=0.8, zorder=4)
        )
        ax.annotate(
            f"{wname} window",
            (min(hi, lim), lo),
            xytext=(0, -3),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            color="0.3",
        )
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def markdown_to_html(text: str, title: str) -> str:
    """A standalone HTML page of the Markdown this package writes (headings, pipe tables,
    paragraphs), for the Snakemake report."""
    import html

    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #bbb;"
        "padding:3px 7px}td{text-align:right}td:first-child{text-align:left}</style>"
        "</head><body>",
    ]
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [html.escape(c.strip()) for c in s.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        flush()
        if s.startswith("#"):
            level = len(s) - len(s.lstrip("#"))
            out.append(f"<h{level}>{html.escape(s.lstrip('#').strip())}</h{level}>")
        elif s:
            out.append(f"<p>{html.escape(s).replace('`', '')}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out)
