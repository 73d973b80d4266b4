"""A campaign's findings as prose, every number read from files under results/: the README's
results section is this text, spliced in (``make readme-table``), so no number there is typed.

Each sentence names its metric. A sentence that says one model's error is lower or higher than
another's is the verdict of a paired bootstrap interval in ``comparisons.csv``; where the
interval holds zero it says the two cannot be told apart. Sections whose files the campaign did
not make (no subset study, MD or uncertainty) are left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff import meta as M
from elmlff.errors import ElmlffError
from elmlff.io import atomic_write_text, read_result_csv
from elmlff.layout import DatasetLayout
from elmlff.summary import benchmark_seconds, benchmark_window, busy_time, metric_label, pauses_note

#: the metric every accuracy sentence uses (the paper's Eq. 9)
METRIC = "force_rmse_framemean"
#: how a comparisons.csv verdict reads in a sentence
VERDICT = {
    "better": "is lower than",
    "worse": "is higher than",
    "indistinguishable": "cannot be told apart from",
}


def _name(path: str) -> str:
    """A result file's path below the data set's directory, as prose names it."""
    parts = Path(path).parts
    return "/".join(parts[parts.index("figures") :] if "figures" in parts else parts[-1:])


def _meV(v: float) -> str:
    return f"{1e3 * v:.2f}"


def _interval(r: Any) -> str:
    return f"{_meV(r.value)} [{_meV(r.ci_low)}, {_meV(r.ci_high)}] meV/Å"


def run_facts(lay: DatasetLayout, benchmarks: Sequence[Path]) -> list[str]:
    """When and at which commit the campaign ran, its wall time (first job's start to last
    job's end) and summed job time, with the subset study's share."""
    from elmlff import store

    bench = benchmark_seconds(benchmarks)
    total = sum(bench.values())
    start, end = benchmark_window(benchmarks, bench)
    study = sum(s for j, s in bench.items() if j.startswith("train_subsets_"))
    newest = max(Path(b).stat().st_mtime for b in benchmarks) if benchmarks else time.time()
    commit = store.made_at(lay.store)
    share = f", {study / 60:.1f} min of it the subset study" if study else ""
    return [
        f"**Run.** Dataset `{lay.dataset}`, finished "
        f"{time.strftime('%Y-%m-%d', time.gmtime(newest))} (store made at commit `{commit}`): "
        f"{(end - start) / 60:.1f} min wall from the first job's start to the last "
        f"one's end{pauses_note(*busy_time(benchmarks, bench))}; the {len(bench)} "
        f"benchmarked jobs took {total / 60:.1f} min summed (their "
        f"`benchmark:` files{share}; more than the wall time where jobs ran side by side).",
        "",
    ]


def accuracy(lay: DatasetLayout, candidates: Sequence[str]) -> list[str]:
    """The best base (chosen on val), each headline meta's test error and the verdicts of its
    paired intervals against the references; the ablations with their intervals; the bases
    flagged as having learned nothing."""
    df = read_result_csv(lay.metrics, "evaluate")
    cmp = read_result_csv(lay.comparisons, "evaluate")
    label = metric_label(METRIC)
    test = df[(df.split == "test") & (df.metric == METRIC)].set_index("model")
    chosen = json.loads(Path(lay.baselines).read_text())["baselines"]["best_base"]["info"]
    best = str(chosen["chosen"])
    n = int(test.n_frames.iloc[0])
    lines = [
        f"**Accuracy** (test {label}, 95 % bootstrap intervals over the {n} test frames). "
        f"The best single base, chosen on val, is `{best}`: "
        f"{_interval(test.loc[best])}.",
    ]
    c = cmp[(cmp.metric == METRIC) & (cmp.split == "test")]
    for meta in candidates:
        if meta not in test.index:
            continue
        said = []
        for _, r in c[c.model == meta].iterrows():
            said.append(
                f"{VERDICT[r.verdict]} {r.reference}'s (difference "
                f"{1e3 * r.difference:+.2f} [{1e3 * r.lo:+.2f}, {1e3 * r.hi:+.2f}] meV/Å)"
            )
        claims = "; its error " + ", ".join(said) if said else ""
        lines.append(f"`{meta}`: {_interval(test.loc[meta])}{claims}.")
    for kind, what in (("baseline", "Baselines"), ("meta", "Ablations (never chosen)")):
        rows = test[(test.kind == kind) & ~test.index.isin([*candidates, "best_base"])]
        if len(rows):
            parts = [f"`{m}` {_interval(r)}" for m, r in rows.iterrows()]
            lines.append(f"{what}: " + "; ".join(parts) + ".")
    lines.append(
        "Differences are the meta's error minus the reference's on the same resampled test "
        f"frames (paired bootstrap, `{_name(lay.comparisons)}`); a difference whose interval "
        "holds zero "
        "decides nothing."
    )
    if "flag" in df:
        flagged = df[(df.split == "test") & (df.flag.fillna("") != "")]
        for m, why in dict(zip(flagged.model, flagged.flag, strict=True)).items():
            lines.append(f"**`{m}` {why}**; it stays in the mean and the study.")
    for m in test[test.kind == "meta"].index:
        d = lay.meta_model(m)
        why = M.divergence(M.read_info(d)) if (Path(d) / M.INFO_FILE).exists() else ""
        if why:
            lines.append(f"**`{m}` {why}.**")
    return [" ".join(lines), ""]


def subset_study(lay: DatasetLayout) -> list[str]:
    """Per meta and size k: the median test error of its subset models against the median of
    the plain mean of the same subsets, and the subset chosen on val with its test error."""
    from elmlff.study import AMORTIZED, calibration_summary, calibration_text, shown_method

    df = shown_method(read_result_csv(lay.subsets, "subset_table"))
    d = df[df.metric == METRIC]
    cal = calibration_summary(lay.subsets_calibration)
    base = read_result_csv(lay.metrics, "evaluate")
    base = base[(base.split == "test") & (base.metric == METRIC) & (base.kind == "base")]
    base = base.set_index("model").value
    out: list[str] = []
    for meta, g in d[d.kind == "meta"].groupby("meta", sort=False):
        test, val = g[g.split == "test"], g[g.split == "val"]
        mean = d[(d.kind == "baseline") & (d.meta == "mean") & (d.split == "test")]
        rows = [
            f"| k | subsets | `{meta}` median | plain mean median | chosen on val | its test |",
            "|---:|---:|---:|---:|---|---:|",
        ]
        for k, gk in test.groupby("k"):
            pick = val[val.k == k].sort_values("value").subset.iloc[0]
            rows.append(
                f"| {k} | {len(gk)} | {_meV(gk.value.median())} | "
                f"{_meV(mean[mean.k == k].value.median())} | `{pick}` | "
                f"{_meV(gk[gk.subset == pick].value.iloc[0])} |"
            )
        one = test[test.k == 1]
        gain = [base[m] - v for m, v in zip(one.models, one.value, strict=True) if m in base]
        single = (
            f" A meta on a single base against that base alone (test point values, no "
            f"interval): its error is the smaller in {sum(x > 0 for x in gain)} of {len(gain)} "
            f"cases, median difference meta − base {-1e3 * float(np.median(gain)):+.2f} meV/Å."
            if gain
            else ""
        )
        bad = g[g.split == "test"]
        bad = bad[bad.diverged_epoch.notna()].subset.nunique() if "diverged_epoch" in g else 0
        diverged = (
            f" **{bad} of the {test.subset.nunique()} subset models' training diverged** "
            "(non-finite loss; each kept at its best val state, `diverged_epoch` in "
            f"`{_name(lay.subsets)}`)."
            if bad
            else ""
        )
        amortized = "method" in g and (g.method == AMORTIZED).any()
        how = (
            "one model trained over random subsets (the amortized method), evaluated on"
            if amortized
            else "a model trained on"
        )
        c = cal.get(meta) if amortized else None
        calibrated = (
            f" Test {metric_label(METRIC)} of the amortized models {calibration_text(c)} "
            "(`subsets_calibration.csv`)."
            if c
            else ""
        )
        out += [
            f"**Subset study** (`{_name(lay.figure('subsets_raincloud'))}`): `{meta}`, {how} "
            "every subset of the "
            f"bases, test {metric_label(METRIC)} in meV/Å by subset size k, beside the plain mean "
            f"of the same bases; the subset of each size is chosen on val.{single}{calibrated}"
            f"{diverged}",
            "",
            *rows,
            "",
        ]
    return out


def uncertainty(lay: DatasetLayout) -> list[str]:
    """Spearman ρ of each uncertainty against the error it should rank, the accuracy at half
    coverage, the force delta and its cost, and the adversarial samples' U."""
    info = json.loads(Path(lay.uncertainty_summary).read_text())
    rho = {(r["uncertainty"], r["error"]): r for r in info["spearman"]}

    def r(u: str, err: str) -> str:
        x = rho.get((u, err))
        if x is None or not np.isfinite(x["rho"]):
            return "n/a"
        return f"{x['rho']:.2f} [{x['ci_low']:.2f}, {x['ci_high']:.2f}]"

    ranks = ", ".join(
        f"{u} {r(u, err)}"
        for (u, err) in rho
        if err in ("dF", "dF_w") and u in ("U0", "U1", "U2", "std_mean", "std_max")
    )
    text = [
        f"**Uncertainty** (`{_name(lay.figure('uncertainty'))}`, {info['n_frames']} test "
        "frames). Spearman ρ "
        "(95 % bootstrap interval) of each uncertainty against the ensemble mean's worst-atom "
        f"force error ΔF (U2 against its weighted mean's): {ranks}."
    ]
    cov = pd.read_csv(lay.uncertainty_coverage)
    half = cov[np.isclose(cov.coverage, 0.5)]
    full = cov[np.isclose(cov.coverage, 1.0)]
    if len(half) and len(full):
        at = dict(zip(half.uncertainty, half.rmse, strict=True))
        text.append(
            f"Pooled force RMSE of the mean force on every test frame: {_meV(full.rmse.iloc[0])}"
            f" meV/Å; on the half with the lowest U1: {_meV(at.get('U1', np.nan))} meV/Å "
            f"(the oracle, keeping the half of smallest true error: "
            f"{_meV(at.get('oracle (true error)', np.nan))})."
        )
    if ("force_delta", "rmse_direct") in rho:
        cost = info.get("force_delta_cost")
        text.append(
            "The direct-vs-conservative force delta U_Δ ranks Ensemble-direct's own force RMSE "
            f"per frame with ρ = {r('force_delta', 'rmse_direct')}, against "
            f"{r('std_mean', 'rmse_direct')} for the bases' mean force spread on the same "
            "frames" + (f"; it costs {cost:.3f}x one Ensemble-conserv evaluation." if cost else ".")
        )
    for m, cost in (info.get("direct_force_delta_cost") or {}).items():
        text.append(
            f"The direct-force base `{m}`'s own force delta (its direct forces against −dE/dx of "
            f"its energy head) ranks its per-frame force RMSE with ρ = "
            f"{r(f'force_delta_{m}', f'rmse_{m}')} (U1 of the ensemble: "
            f"{r('U1', f'rmse_{m}')}); it costs {cost:.2f}x one force call of `{m}`."
        )
    adv = Path(lay.adversarial("json"))
    if adv.exists():
        a = json.loads(adv.read_text())
        steps = a.get("settings", {}).get("steps", "?")
        text.append(
            f"Adversarial sampling ({steps} steps from {len(a['starts'])} test frames): mean U1 "
            f"{1e3 * a['U_start_mean']:.0f} meV/Å at the start, {1e3 * a['U_end_mean']:.0f} at "
            f"the end; U1 ended higher than it started on "
            f"{a['U_raised_fraction'] * len(a['starts']):.0f} of {len(a['starts'])} frames"
            + (f" ({a['note']})." if a.get("note") else ".")
        )
    return [" ".join(text), ""]


def md(lay: DatasetLayout) -> list[str]:
    """The MD table as the md_summary rule wrote it (its header says horizon and temperature)."""
    table = Path(lay.table("md_table"))
    if not table.exists():
        raise ElmlffError(f"{table} not found", "run the md_summary rule first")
    where = f"`{_name(lay.table('md_table'))}`, `{_name(lay.figure('md_hr'))}`"
    return [f"**MD** ({where}). " + table.read_text().strip(), ""]


def findings(
    dataset_dir: Path | str, out: Path | str, benchmarks: Sequence[Path], candidates: Sequence[str]
) -> str:
    """Write ``findings.md`` of a campaign's data set: run facts, accuracy with paired
    verdicts, the subset study, MD and uncertainty, from whichever of their files exist."""
    lay = DatasetLayout.of(Path(dataset_dir))
    parts = run_facts(lay, [Path(b) for b in benchmarks]) + accuracy(lay, candidates)
    if Path(lay.subsets).exists():
        parts += subset_study(lay)
    if Path(lay.table("md_table")).exists():
        parts += md(lay)
    if Path(lay.uncertainty_summary).exists():
        parts += uncertainty(lay)
    text = "\n".join(parts).rstrip() + "\n"
    atomic_write_text(Path(out), text)
    return text
