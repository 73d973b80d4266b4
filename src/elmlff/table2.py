"""The paper's Table 2 for a materials data set (element x {energy, force, stress MAE} x model)
and the equation-of-state table, from ``metrics.csv``, ``metrics_by_group.csv``,
``baselines.json``, ``eos.csv`` and the store's alignment attributes only.

Energies are per atom after the store's per-element alignment (fitted on the meta split; the
table says so); force MAE is pooled over components; stress MAE is over the six independent
components. Each cell has its 95 % bootstrap interval over the test frames of that element
(``all``: every test frame); bold is the best of each row. Every model's force and energy MAE
against the best base (chosen on val) comes as a paired bootstrap interval of the difference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff import keys, store
from elmlff.io import atomic_write_text, read_result_csv
from elmlff.layout import DatasetLayout
from elmlff.table1 import bold

#: (metric, row label, factor to the label's unit)
ROWS = (
    ("energy_mae_per_atom", "energy MAE [meV/atom]", 1e3),
    ("force_mae", "force MAE [meV/Å]", 1e3),
    ("stress_mae", "stress MAE [GPa]", 1.0),
)


def _cells(df: pd.DataFrame, models: Sequence[str], metric: str, k: float) -> tuple[list, list]:
    """Each model's ``value [ci_low, ci_high]`` of ``metric`` times ``k`` (– where absent), and
    the values (NaN where absent) for bolding."""
    sel = df[df.metric == metric].set_index("model")
    vals = [k * sel.value.get(m, np.nan) for m in models]
    d = 1 if k > 1 else 3  # meV: one decimal; GPa: three

    def cell(m: str) -> str:
        return f"{k * sel.value[m]:.{d}f} [{k * sel.ci_low[m]:.{d}f}, {k * sel.ci_high[m]:.{d}f}]"

    return [cell(m) if m in sel.index else "–" for m in models], vals


def alignment_sentence(store_path: Path) -> str:
    """How the store's base energies were aligned, with the offsets per base (eV/atom)."""
    off = store.energy_offsets(store.open_store(store_path))
    if off is None:
        return "base energies as predicted (no alignment)."
    from ase.data import chemical_symbols

    per = "; ".join(
        f"{m}: " + ", ".join(f"{chemical_symbols[z]} {c:+.3f}" for z, c in row.items())
        for m, row in off.items()
    )
    return (
        "each base's energies shifted by per-element offsets (eV/atom) fitted by least "
        f"squares on the meta split ({per})."
    )


def _peak_mib(tsv: Path) -> float:
    """Peak resident memory (MiB) of a job from its Snakemake ``benchmark:`` file (NaN if none)."""
    if not tsv.exists():
        return np.nan
    return float(pd.read_csv(tsv, sep="\t").max_rss.max())


def inference_costs(lay: DatasetLayout, metas: Sequence[str]) -> list[str]:
    """Markdown lines: each base's inference time per structure and per atom (energy, forces
    and stress, from its predictions file) and its predict job's peak memory; each meta's time
    per atom on its val + test frames relative to the bases' summed time per atom."""
    from elmlff import meta

    ds = store.open_store(lay.store)
    n_atoms = ds[keys.N_ATOMS].values
    bases = ds["model"].values.astype(str).tolist()

    def cost(paths: list[Path]) -> tuple[float, int, int]:
        zs = [np.load(p) for p in paths]
        frames = np.concatenate([z["frames"] for z in zs])
        return sum(float(z["seconds"]) for z in zs), len(frames), int(n_atoms[frames].sum())

    rows = [
        "| model | ms/structure | ms/atom | ratio to the bases' sum (per atom) "
        "| peak memory [MiB] |",
        "|---|---:|---:|---:|---:|",
    ]
    total = 0.0
    for b, fits in lay.trained_bases(bases).items():
        sec, nf, na = cost([Path(lay.base_predictions(b, fit)) for fit in fits])
        total += sec / na
        mem = max(_peak_mib(Path(lay.benchmark(f"predict_{b}_{fit}"))) for fit in fits)
        rows.append(f"| {b} | {1e3 * sec / nf:.1f} | {1e3 * sec / na:.2f} | | {mem:.0f} |")
    rows.append(f"| sum of the bases | | {1e3 * total:.2f} | 1 | |")
    notes = []
    for m in metas:
        path = Path(lay.meta_predictions(m))
        if not path.exists():
            continue
        kind = meta.read_info(lay.meta_model(m)).get("kind", "")
        sec, nf, na = cost([path])
        mem = _peak_mib(Path(lay.benchmark(f"predict_meta_{m}_all")))
        ratio = sec / na / total
        shown = f"{100 * ratio:.2f} %" if kind == "direct" else f"{ratio:.2f}x"
        rows.append(f"| {m} | {1e3 * sec / nf:.1f} | {1e3 * sec / na:.3f} | {shown} | {mem:.0f} |")
        notes.append(
            f"`{m}`: "
            + (
                "its own forward on the stored base predictions (target < 1 % of the bases)"
                if kind == "direct"
                else "energy and forces −dE/dx through the bases run live, bases included "
                "(target < 3x)"
            )
        )
    return [
        "Inference cost on this run's machine (from the predictions files and Snakemake's "
        "benchmark files): the bases' energy, forces and stress on every frame; the "
        "meta-models' on the val + test frames, per atom against the bases' summed time per "
        "atom. " + "; ".join(notes) + ".",
        "",
        *rows,
    ]


def table2(dataset_dir: Path, models: Sequence[str], out: Path, stress_from: str) -> str:
    """``table2.md`` of one materials data set over ``models``."""
    from elmlff.pipeline import verdict

    lay = DatasetLayout.of(Path(dataset_dir))
    met = read_result_csv(lay.metrics, "evaluate")
    grp = read_result_csv(lay.metrics_by_group, "evaluate")
    grp["reference"] = grp.reference.fillna("")
    chosen = json.loads(Path(lay.baselines).read_text())["baselines"]["best_base"]["info"]
    best = chosen["chosen"]
    stress_base = best if stress_from == "best_base" else stress_from
    flagged = met[(met.split == "test") & (met.flag.fillna("") != "")].model.unique().tolist()
    head = [
        "| element | metric | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    rows = []
    blocks = [(g, grp[(grp.group == g) & (grp.reference == "")]) for g in sorted(set(grp.group))]
    blocks.append(("all", met[met.split == "test"]))
    for g, df in blocks:
        first = True
        for metric, label, k in ROWS:
            if metric not in set(df.metric):
                continue
            cells, vals = _cells(df, models, metric, k)
            cells = [
                c + (" †" if m in flagged and c != "–" else "")
                for c, m in zip(cells, models, strict=True)
            ]
            rows.append(
                (f"| {g} | " if first else "| | ")
                + f"{label} | "
                + " | ".join(bold(cells, vals, "min"))
                + " |"
            )
            first = False
    paired = []
    cmp = grp[(grp.reference == "best_base") & grp.model.isin(models) & (grp.model != best)]
    for r in cmp[cmp.metric.isin(["force_mae", "energy_mae_per_atom"])].itertuples():
        unit = "meV/Å" if r.metric == "force_mae" else "meV/atom"
        what = "force" if r.metric == "force_mae" else "energy"
        paired.append(
            f"{r.group}: {r.model} − best base ({best}) {what} MAE {1e3 * r.value:+.1f} "
            f"[{1e3 * r.ci_low:+.1f}, {1e3 * r.ci_high:+.1f}] {unit} "
            f"({verdict(r.ci_low, r.ci_high)})"
        )
    n_test = int(met[(met.split == "test")].n_frames.max())
    text = "\n".join(
        [
            f"Table 2 (generated from results/{lay.dataset}/): test errors per element and over "
            f"all {n_test} test frames, 95 % bootstrap intervals over frames; energy MAE per "
            "atom, force MAE pooled over components, stress MAE over the six independent "
            "components. Bold: the best of each row. – : the model has no such output.",
            "",
            *head,
            *rows,
            "",
            "Energies: " + alignment_sentence(Path(lay.store)),
            f"Stress: each base's own (strain derivative of its energy); the baselines' the "
            f"weighted sum of the bases' with their force weights; the meta-models' is "
            f"`{stress_base}`'s (`evaluation.stress_from: {stress_from}`). Best base chosen on "
            f"val by force RMSE: `{best}`.",
            "",
            "Each model against the best base, paired bootstrap interval of the difference on "
            "the same resampled test frames of each element:",
            "",
            *[f"- {x}" for x in paired],
            "",
            "† flagged in metrics.csv (test force RMSE not below `evaluation.learned_ratio` of "
            "the better trivial predictor's): " + (", ".join(flagged) or "none") + ".",
            "",
            *inference_costs(lay, [m for m in models if Path(lay.meta_model(m)).exists()]),
            "",
        ]
    )
    atomic_write_text(out, text)
    return text


def eos_table(eos_csv: Path, out: Path) -> str:
    """``eos.md``: V0 error (%) and B0 error (GPa) per element and model against WIEN2k-PBE."""
    df = pd.read_csv(eos_csv)
    models = list(dict.fromkeys(df.model))
    head = [
        "| element | metric | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    rows = []
    for el in sorted(set(df.element)):
        d = df[df.element == el].set_index("model")
        ref = d.iloc[0]
        for col, label, fmt in (
            ("v0_error_percent", f"V0 error [%] (WIEN2k {ref.ref_v0:.2f} Å³/atom)", "{:+.2f}"),
            ("b0_error_gpa", f"B0 error [GPa] (WIEN2k {ref.ref_b0:.1f} GPa)", "{:+.1f}"),
        ):
            vals = [abs(d[col].get(m, np.nan)) for m in models]
            cells = [fmt.format(d[col][m]) if m in d.index else "–" for m in models]
            rows.append(
                (f"| {el} | " if col.startswith("v0") else "| | ")
                + f"{label} | "
                + " | ".join(bold(cells, vals, "min"))
                + " |"
            )
    not_conv = df[~df.relax_converged.astype(bool)]
    text = "\n".join(
        [
            "Equations of state (generated from eos.csv): each element's ground-state crystal "
            "of the Delta benchmark relaxed (positions and cell) and fitted by Birch-Murnaghan "
            "over ±6 % volume, against the WIEN2k-PBE values of ase.collections.dcdft. Bold: "
            "the smallest error of each row. Only models with an energy.",
            "",
            *head,
            *rows,
            "",
            "Relaxations that did not converge: "
            + (", ".join(f"{r.model} {r.element}" for r in not_conv.itertuples()) or "none")
            + ".",
            "",
        ]
    )
    atomic_write_text(out, text)
    return text
