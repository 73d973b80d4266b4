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
    for c in table.columns:  # each direct-force base's own U_Δ against its own error
        if c.startswith("force_delta_") and f"rmse_{c[12:]}" in table:
            pairs += [(c, f"rmse_{c[12:]}"), ("U1", f"rmse_{c[12:]}")]
    for u, err in pairs:
        if err not in table:
            continue
        rows.append(
            {"uncertainty": u, "error": err, **spearman(table[u], table[err], bootstrap, seed)}
        )
    return pd.DataFrame(rows)


def direct_base_delta(model_dir: Path, frames) -> tuple[np.ndarray, float]:
    """A direct-force base's data-free uncertainty on ``frames``: U_Δ per frame (the RMS over
    atoms of |F_direct − (−dE/dx)| of its own energy head, eV/Å), and its cost relative to one
    force call of the base (its ``predict``), both timed here after a warm-up call."""
    from elmlff import bases as B

    pot = B.load(model_dir)
    one = frames.subset([0])
    pot.predict(one)
    pot.force_delta(one)  # warm-up: graphs, allocations
    t0 = time.perf_counter()
    pot.predict(frames)
    t1 = time.perf_counter()
    u, _ = pot.force_delta(frames)
    t2 = time.perf_counter()
    return u, (t2 - t1) / max(t1 - t0, 1e-9)


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
    baselines_json: Path,
    out: Path,
    summary_out: Path,
    coverage_out: Path,
    dataset: str = "",
    pair: Mapping[str, Path] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    rmse_given: Mapping[str, float] | None = None,
    direct: Mapping[str, Path] | None = None,
) -> pd.DataFrame:
    """``uncertainty.csv`` for the test frames of a store: the bases are the ensemble, weights
    from their val force RMSE in ``baselines.json`` unless ``rmse_given`` names a base's RMSE (a
    pretrained model's published error, say). ``pair`` (``direct``, ``conserv``: meta
    ``predictions.npz``) adds the force delta between Ensemble-direct and Ensemble-conserv;
    ``direct`` (base name -> model directory of each direct-force base) adds each such base's
    own U_Δ (:func:`direct_base_delta`)."""
    from elmlff import keys, store
    from elmlff.data import Split

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ds)
    models = ds["model"].values.astype(str).tolist()
    idx = np.sort(split.roles["test"])
    atoms = frames.atom_index(idx)
    given = dict(rmse_given or {})
    rmse, w = val_rmse_weights(baselines_json, models, given)
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
    delta_cost = {}
    for m, d in (direct or {}).items():
        sub = frames.subset(idx)
        own = ds[keys.BASE_FORCES].values[models.index(m)][atoms]
        table[f"force_delta_{m}"], delta_cost[m] = direct_base_delta(d, sub)
        table[f"rmse_{m}"] = force_delta(own, sub.forces, sub.n_atoms)
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
        # per direct-force base: U_Δ's cost relative to one force call of that base
        "direct_force_delta_cost": delta_cost,
        "spearman": summ.to_dict(orient="records"),
    }
    with atomic_path(summary_out) as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=float) + "\n")
    cov = coverage(table)
    cov.insert(0, "dataset", dataset)
    _write(cov, coverage_out)
    return table


# -- from an extxyz file --------------------------------------------------------------------
def _read_frames(path: Path) -> list:
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"file not found: {path}", "pass an extxyz file")
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types for unparsable files
        msg = (str(exc).strip().splitlines() or [""])[0][:120]
        raise ElmlffError(
            f"{path}: not a readable extxyz file ({type(exc).__name__}: {msg})",
            "pass an extended XYZ file (ase.io.write(..., format='extxyz'))",
        ) from exc
    if not frames:
        raise ElmlffError(f"{path} holds no frames", "pass an extxyz file with frames")
    return frames


def _force_models(frames: list) -> list[set[str]]:
    """Per frame, the models whose forces it carries (per-atom arrays ``forces_<model>``)."""
    return [{k[len("forces_") :] for k in a.arrays if k.startswith("forces_")} for a in frames]


def _first_bad(values: np.ndarray, n_atoms: np.ndarray) -> tuple[int, int, int] | None:
    """(frames with NaN/inf, first such frame, atom within it) of per-atom ``values (A, 3)``."""
    bad = ~np.isfinite(values).all(axis=1)
    if not bad.any():
        return None
    frame_of = np.repeat(np.arange(len(n_atoms)), n_atoms)
    atom = int(np.flatnonzero(bad)[0])
    first = int(frame_of[atom])
    return len(np.unique(frame_of[bad])), first, atom - int(n_atoms[:first].sum())


def _arrays(
    path: Path, frames: list, models: Sequence[str] | None, ref_key: str
) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    have = _force_models(frames)
    models = list(models) if models else sorted(set.union(*have))
    if not models:
        raise ElmlffError(
            f"{path}: no per-atom arrays forces_<model> in the file",
            "write each model's forces as a per-atom array forces_<model>",
        )
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
    for m, f in zip(models, forces, strict=True):
        bad = _first_bad(f, n_atoms)
        if bad is not None:
            raise ElmlffError(
                f"{path}: model '{m}' has NaN/inf forces on {bad[0]} frames (first: frame "
                f"{bad[1]}, atom {bad[2]})",
                "re-predict those frames with that model, or leave it out with --models",
            )
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
    bad = None if reference is None else _first_bad(reference, n_atoms)
    if bad is not None:
        raise ElmlffError(
            f"{path}: reference forces '{ref_key}' are NaN/inf on {bad[0]} frames (first: frame "
            f"{bad[1]}, atom {bad[2]})",
            "relabel or drop those frames",
        )
    return models, forces, reference, n_atoms


def read_extxyz(
    path: Path, models: Sequence[str] | None = None, ref_key: str = "forces"
) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    """(models, forces (M, A, 3), reference forces (A, 3) or None, n_atoms (F,)) from frames
    carrying each model's forces as per-atom arrays ``forces_<model>``; the reference is the
    array ``ref_key`` (or the forces of the frame's calculator, as ASE reads a ``forces``
    column). NaN/inf forces are refused, naming the model and the frame."""
    return _arrays(Path(path), _read_frames(path), models, ref_key)


def parse_rmse(items: Sequence[str] = (), json_file: Path | None = None) -> dict[str, float]:
    """{model: force RMSE} from ``MODEL=VALUE`` items (an item may hold several, comma
    separated) and/or a JSON file: an object {model: RMSE}, or this project's uncertainty
    summary (its ``force_rmse_for_weights``). A model may be named once."""
    out: dict[str, float] = {}
    if json_file is not None:
        json_file = Path(json_file)
        if not json_file.exists():
            raise ElmlffError(f"--rmse-json file not found: {json_file}", "pass an existing file")
        try:
            d = json.loads(json_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            where = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ElmlffError(
                f"{json_file}{where}: not valid JSON ({type(exc).__name__})",
                'write an object such as {"painn": 0.012, "nequip": 0.013} (eV/Å)',
            ) from None
        if isinstance(d, dict) and isinstance(d.get("force_rmse_for_weights"), dict):
            d = d["force_rmse_for_weights"]
        if not isinstance(d, dict):
            raise ElmlffError(
                f"{json_file}: holds a {type(d).__name__}, not an object {{model: RMSE}}",
                'write an object such as {"painn": 0.012, "nequip": 0.013} (eV/Å)',
            )
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ElmlffError(
                    f"{json_file}: RMSE of '{k}' is {v!r}, not a number",
                    "give each model's force RMSE in eV/Å as a number",
                )
            out[str(k)] = float(v)
    for item in (x for arg in items for x in arg.split(",") if x.strip()):
        k, _, v = item.strip().partition("=")
        try:
            value = float(v)
        except ValueError:
            raise ElmlffError(f"bad --rmse {item!r}", "write MODEL=RMSE (eV/Å)") from None
        if not k:
            raise ElmlffError(f"bad --rmse {item!r}", "write MODEL=RMSE (eV/Å)")
        if k in out:
            raise ElmlffError(
                f"model '{k}' has two RMSEs ({out[k]:g} and {value:g})",
                "give each model one RMSE (in --rmse or --rmse-json, not both)",
            )
        out[k] = value
    return out


def score_arguments(
    file: Path | None, models: Sequence[str] | None, rmse_items: Sequence[str]
) -> tuple[Path, list[str] | None, list[str]]:
    """(file, models, --rmse items) of ``elmlff uq score``: ``--rmse`` and ``--models`` take
    every word that follows them, so a file given after them is taken back as the file (the
    last word of --rmse without '=', or an existing file ending --models)."""
    items = [x for x in rmse_items if "=" in x]
    stray = [x for x in rmse_items if "=" not in x]
    models = list(models) if models is not None else None
    if file is None and len(stray) == 1 and stray == list(rmse_items[-1:]):
        file = Path(stray.pop())
    elif file is None and not stray and models and Path(models[-1]).is_file():
        file = Path(models.pop())
    if stray:
        raise ElmlffError(
            f"bad --rmse {stray[0]!r}",
            "write MODEL=RMSE (eV/Å), e.g. --rmse painn=0.012 nequip=0.013",
        )
    if file is None:
        raise ElmlffError(
            "uq score: no extxyz file given", "pass it first: elmlff uq score FILE --out u.csv ..."
        )
    return Path(file), models or None, items


def _weights(
    rmse: Mapping[str, float], names: Sequence[str], in_file: Sequence[str], path: Path
) -> np.ndarray:
    """w ∝ 1/RMSE of the scored models ``names``; RMSEs of models in the file left out by
    --models are ignored."""
    unknown = sorted(set(rmse) - set(in_file))
    if unknown:
        raise ElmlffError(
            f"RMSE given for {unknown}, not in {path} (its models: {sorted(in_file)})",
            "name models whose forces_<model> arrays the file holds",
        )
    lacking = [m for m in names if m not in rmse]
    if lacking:
        raise ElmlffError(
            f"RMSE weights name {lacking} missing (scored models: {list(names)}; RMSEs "
            f"given for {sorted(rmse)})",
            "give one RMSE per scored model, as MODEL=RMSE in eV/Å, or choose the models "
            "with --models",
        )
    return inverse_rmse_weights([rmse[m] for m in names], names)


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
    path = Path(path)
    frames = _read_frames(path)
    in_file = sorted(set.union(*_force_models(frames)))
    names, forces, ref, n_atoms = _arrays(path, frames, models, ref_key)
    w = _weights(rmse, names, in_file, path) if rmse else np.full(len(names), 1.0 / len(names))
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
            "rmse_not_scored": sorted(set(rmse or {}) - set(names)),
            "frames": len(n_atoms),
            "labelled": ref is not None,
            "spearman": summ.to_dict(orient="records"),
            "seconds": time.perf_counter() - t0,
        }
        with atomic_path(summary_out) as tmp:
            tmp.write_text(json.dumps(info, indent=1, default=float) + "\n")
    return table, summ
