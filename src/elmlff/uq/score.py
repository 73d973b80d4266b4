"""Scoring an ensemble's uncertainty: from a campaign's store (the ``uncertainty`` stage) or from
an extxyz file from anywhere (``elmlff uq score``).

Both write a per-frame table (U0, U1, U2, std_mean, std_max, the true errors) and a tidy
summary of Spearman's ρ of each uncertainty against the error it should predict, with 95 %
bootstrap intervals, plus the accuracy-coverage curves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff.errors import ElmlffError
from elmlff.io import atomic_path
from elmlff.uq.metrics import (
    U_COLUMNS,
    coverage_curve,
    ensemble_uncertainty,
    force_delta,
    inverse_rmse_weights,
    spearman,
    threshold_curve,
    val_rmse_weights,
)

#: which error each uncertainty is judged against (U2 uses the weighted mean force)
TARGET = {"U0": "dF", "U1": "dF", "U2": "dF_w", "std_mean": "dF", "std_max": "dF"}


def summarize(table: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tidy ρ rows: ``uncertainty, error, rho, ci_low, ci_high, n`` for every U column (and
    the force delta where the table has it)."""
    rows = []
    pairs = [(u, TARGET[u]) for u in U_COLUMNS if u in table]
    if "force_delta" in table:
        pairs += [("force_delta", "rmse_direct"), ("U1", "rmse_direct")]
        pairs += [("std_mean", "rmse_direct")]
    for u, err in pairs:
        if err not in table:
            continue
        rows.append(
            {"uncertainty": u, "error": err, **spearman(table[u], table[err], bootstrap, seed)}
        )
    return pd.DataFrame(rows)


def coverage(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-coverage curves of the ensemble's mean force, one per uncertainty column."""
    sq = table["rmse_mean"].to_numpy() ** 2 * 3 * table["n_atoms"].to_numpy()
    n_comp = 3 * table["n_atoms"].to_numpy()
    parts = []
    for u in [c for c in U_COLUMNS if c in table]:
        c = coverage_curve(table[u].to_numpy(), sq, n_comp)
        c.insert(0, "uncertainty", u)
        parts.append(c)
    oracle = coverage_curve(table["rmse_mean"].to_numpy(), sq, n_comp)  # the best possible
    oracle.insert(0, "uncertainty", "oracle (true error)")
    return pd.concat([*parts, oracle], ignore_index=True)


def threshold_table(table: pd.DataFrame, column: str = "U1") -> pd.DataFrame:
    """Force RMSE of the ensemble mean over the frames with U ≤ U_c and the fraction kept, for
    U_c at the 10 %, 20 %, ..., 100 % quantiles of U."""
    u = table[column].to_numpy()
    sq = table["rmse_mean"].to_numpy() ** 2 * 3 * table["n_atoms"].to_numpy()
    return threshold_curve(
        u, sq, 3 * table["n_atoms"].to_numpy(), np.quantile(u, np.linspace(0.1, 1, 10))
    )


def _write(df: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)


# -- from a campaign's store ----------------------------------------------------------------
def score_store(
    store_path: Path,
    split_path: Path,
    metrics_csv: Path,
    out: Path,
    summary_out: Path,
    coverage_out: Path,
    dataset: str = "",
    pair: Mapping[str, Path] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    rmse_given: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """``uncertainty.csv`` for the test frames of a store: the bases are the ensemble, weights
    from their val force RMSE in ``metrics.csv`` unless ``rmse_given`` names a base's RMSE (a
    pretrained model's published error, say). ``pair`` (``direct``, ``conserv``: meta
    ``predictions.npz``) adds the force delta between Ensemble-direct and Ensemble-conserv."""
    from elmlff import keys, store
    from elmlff.data import Split

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ds)
    models = ds["model"].values.astype(str).tolist()
    idx = np.sort(split.roles["test"])
    atoms = frames.atom_index(idx)
    given = dict(rmse_given or {})
    rmse, w = val_rmse_weights(metrics_csv, models, given)
    table = ensemble_uncertainty(
        ds[keys.BASE_FORCES].values[:, atoms], frames.n_atoms[idx], w, frames.forces[atoms]
    )
    table.insert(0, "frame", idx)
    table.insert(0, "dataset", dataset)
    if pair:
        from elmlff.meta import read_predictions

        f, sec = {}, {}
        for kind in ("direct", "conserv"):
            f[kind] = read_predictions(kind, pair[kind], frames)[1][atoms]
            z = np.load(pair[kind])
            sec[kind] = float(z["seconds"]) / len(z["frames"])
        sub = frames.subset(idx)
        table["force_delta"] = force_delta(f["direct"], f["conserv"], sub.n_atoms)
        table["rmse_direct"] = force_delta(f["direct"], sub.forces, sub.n_atoms)
        table.attrs["force_delta_cost"] = (sec["direct"] + sec["conserv"]) / sec["conserv"]
    _write(table, out)
    summ = summarize(table, bootstrap, seed)
    info = {
        "dataset": dataset,
        "frames": "test",
        "n_frames": len(idx),
        "models": models,
        "force_rmse_for_weights": dict(zip(models, rmse.tolist(), strict=True)),
        "rmse_from": {m: "config" if m in given else "val" for m in models},
        "threshold_U1": threshold_table(table).to_dict(orient="records"),
        "weights": dict(zip(models, w.tolist(), strict=True)),
        "force_delta_cost": table.attrs.get("force_delta_cost"),
        "spearman": summ.to_dict(orient="records"),
    }
    with atomic_path(summary_out) as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=float) + "\n")
    cov = coverage(table)
    cov.insert(0, "dataset", dataset)
    _write(cov, coverage_out)
    return table


# -- from an extxyz file --------------------------------------------------------------------
def read_extxyz(
    path: Path, models: Sequence[str] | None = None, ref_key: str = "forces"
) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    """(models, forces (M, A, 3), reference forces (A, 3) or None, n_atoms (F,)) from frames
    carrying each model's forces as per-atom arrays ``forces_<model>``; the reference is the
    array ``ref_key`` (or the forces of the frame's calculator, as ASE reads a ``forces``
    column)."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"file not found: {path}", "pass an extxyz file")
    frames = read(path, index=":", format="extxyz")
    if not frames:
        raise ElmlffError(f"{path} holds no frames", "pass an extxyz file with frames")
    have = [{k[len("forces_") :] for k in a.arrays if k.startswith("forces_")} for a in frames]
    models = list(models) if models else sorted(set.union(*have))
    for m in models:
        lacking = [i for i, h in enumerate(have) if m not in h]
        if lacking:
            raise ElmlffError(
                f"{path}: model '{m}' has no per-atom array forces_{m} on {len(lacking)} frames "
                f"(first: frame {lacking[0]})",
                "give every frame every model's forces, or drop the model with --models",
            )
    forces = np.stack([np.concatenate([a.arrays[f"forces_{m}"] for a in frames]) for m in models])
    n_atoms = np.array([len(a) for a in frames])
    ref = []
    for a in frames:
        if ref_key in a.arrays:
            ref.append(a.arrays[ref_key])
        elif ref_key == "forces" and a.calc is not None and "forces" in a.calc.results:
            ref.append(a.calc.results["forces"])
        else:
            ref.append(None)
    if any(r is None for r in ref) and any(r is not None for r in ref):
        i = next(i for i, r in enumerate(ref) if r is None)
        raise ElmlffError(
            f"{path}: reference forces '{ref_key}' missing on frame {i} but present on others",
            "label every frame or none",
        )
    reference = None if ref[0] is None else np.concatenate(ref)
    return models, forces, reference, n_atoms


def score_extxyz(
    path: Path,
    out: Path,
    summary_out: Path | None = None,
    rmse: Mapping[str, float] | None = None,
    models: Sequence[str] | None = None,
    ref_key: str = "forces",
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame uncertainty table (and ρ summary when the frames carry reference forces) of
    the ensemble of models in an extxyz file. Without ``rmse``, U1 and U2 weigh the models
    uniformly (then U0 = U1); with it, w_k ∝ 1/RMSE_k."""
    t0 = time.perf_counter()
    names, forces, ref, n_atoms = read_extxyz(path, models, ref_key)
    if rmse:
        unknown = [m for m in rmse if m not in names]
        lacking = [m for m in names if m not in rmse]
        if unknown or lacking:
            raise ElmlffError(
                f"RMSE weights name {unknown or lacking} "
                f"{'not in the file' if unknown else 'missing'} (models: {names})",
                "give one RMSE per model in the file, as MODEL=RMSE in eV/Å",
            )
        w = inverse_rmse_weights([rmse[m] for m in names], names)
    else:
        w = np.full(len(names), 1.0 / len(names))
    table = ensemble_uncertainty(forces, n_atoms, w, ref)
    table.insert(0, "frame", np.arange(len(n_atoms)))
    _write(table, out)
    summ = summarize(table, bootstrap, seed) if ref is not None else pd.DataFrame()
    if summary_out is not None:
        info: dict[str, Any] = {
            "file": str(path),
            "models": names,
            "weights": dict(zip(names, w.tolist(), strict=True)),
            "weights_from": "given RMSE" if rmse else "uniform (no RMSE given)",
            "frames": len(n_atoms),
            "labelled": ref is not None,
            "spearman": summ.to_dict(orient="records"),
            "seconds": time.perf_counter() - t0,
        }
        with atomic_path(summary_out) as tmp:
            tmp.write_text(json.dumps(info, indent=1, default=float) + "\n")
    return table, summ
