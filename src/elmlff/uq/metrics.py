"""Uncertainty of a heterogeneous ensemble from its members' force predictions.

For M models, frames of N_f atoms, member forces F_jk (atom j, model k) and weights w_k
(Σ w_k = 1):

* U0: uniform weights w_k = 1/M;
* U1: w_k ∝ 1/RMSE_F,k (each model's force RMSE on validation frames, or a published one),
  the recommended metric;
* U2: the same weights also in the mean force ⟨F_j⟩ = Σ_k w_k F_jk;

    U = sqrt( Σ_k w_k [ max_j ‖F_jk − ⟨F_j⟩‖ ]² )   (⟨F⟩ the plain mean for U0 and U1),

judged against the error of the ensemble's mean force ΔF = max_j ‖F_ref,j − ⟨F_j⟩‖ (ΔF_w with
the weighted mean, for U2). Beside them, always, deepmd-kit's model deviation: the per-atom
force standard deviation σ_j = sqrt(⟨‖F_jk − ⟨F_j⟩‖²⟩_k), its mean and max over the frame's
atoms (``std_mean``, ``std_max``).

Shapes: ``forces (M, A, 3)`` eV/Å on a flat atom axis, ``n_atoms (F,)``; per-frame outputs
``(F,)`` in eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from elmlff.errors import ElmlffError

#: per-frame uncertainty columns, in table order
U_COLUMNS = ("U0", "U1", "U2", "std_mean", "std_max")


def inverse_rmse_weights(rmse: Sequence[float], models: Sequence[str] | None = None) -> np.ndarray:
    """w_k ∝ 1/RMSE_k, normalised to sum to one; every RMSE must be positive and finite."""
    r = np.asarray(rmse, dtype=float)
    bad = ~np.isfinite(r) | (r <= 0)
    if bad.any():
        names = list(models) if models is not None else list(range(len(r)))
        raise ElmlffError(
            f"force RMSE weights must be positive and finite; got {r[bad].tolist()} for "
            f"{[names[i] for i in np.flatnonzero(bad)]}",
            "give each model its validation (or published) force RMSE in eV/Å",
        )
    w = 1.0 / r
    return w / w.sum()


def val_rmse_weights(
    baselines_json, models: Sequence[str], given: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(force RMSE, U1/U2 weights ∝ 1/RMSE) of ``models``: each base's val force RMSE from a
    campaign's ``baselines.json``, unless ``given`` names it (a pretrained model's published
    error)."""
    from elmlff.baselines import base_val_force_rmse

    given = dict(given or {})
    unknown = sorted(set(given) - set(models))
    if unknown:
        raise ElmlffError(f"force RMSEs given for {unknown}, not bases of the ensemble", "fix them")
    val = base_val_force_rmse(baselines_json) if set(models) - set(given) else {}
    missing = [m for m in models if m not in given and m not in val]
    if missing:
        raise ElmlffError(
            f"no val force RMSE for bases {missing} in {baselines_json}", "rerun the baselines rule"
        )
    rmse = np.array([given.get(m, val.get(m)) for m in models], dtype=float)
    return rmse, inverse_rmse_weights(rmse, models)


def _max_per_frame(values: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Max over each frame's atoms of ``values (..., A)`` -> ``(..., F)``."""
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    return np.maximum.reduceat(values, starts, axis=-1)


def _mean_per_frame(values: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    return np.add.reduceat(values, starts, axis=-1) / n_atoms


def check_forces(forces: np.ndarray, n_atoms: np.ndarray, what: str = "model forces") -> None:
    """Shapes agree and every value is finite."""
    f = np.asarray(forces)
    if f.ndim != 3 or f.shape[2] != 3 or f.shape[1] != int(np.sum(n_atoms)):
        raise ElmlffError(
            f"{what} have shape {f.shape}, expected (models, {int(np.sum(n_atoms))} atoms, 3)",
            "give every model's forces for every atom of the frames",
        )
    if f.shape[0] < 2:
        raise ElmlffError(f"{what}: an ensemble needs at least 2 models", "add models")
    if not np.isfinite(f).all():
        raise ElmlffError(f"{what} contain NaN/inf", "re-predict the frames with those models")


def force_std(forces: np.ndarray, n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """deepmd-kit's model deviation per frame: the mean and max over the frame's atoms of
    σ_j = sqrt(⟨‖F_jk − ⟨F_j⟩‖²⟩_k) (eV/Å; zero for one model)."""
    f = np.asarray(forces, dtype=float)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    dev = np.linalg.norm(f - f.mean(axis=0), axis=2)  # (M, A)
    sigma = np.sqrt((dev**2).mean(axis=0))  # (A,)
    return _mean_per_frame(sigma, n_atoms), _max_per_frame(sigma, n_atoms)


def _worst_deviation(f: np.ndarray, center: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """(M, F): per model and frame, the largest ‖F_jk − center_j‖ over the frame's atoms."""
    return _max_per_frame(np.linalg.norm(f - center, axis=2), n_atoms)


def check_weights(weights: np.ndarray, m: int) -> np.ndarray:
    """U1/U2's weights as floats: M of them, non-negative, summing to one."""
    w = np.asarray(weights, dtype=float)
    if w.shape != (m,) or abs(w.sum() - 1.0) > 1e-5 or (w < 0).any():
        raise ElmlffError(f"weights {w.tolist()} for {m} models", "pass M weights summing to 1")
    return w


def weighted_uncertainty(
    forces: np.ndarray, n_atoms: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """U1 per frame (eV/Å) as :func:`ensemble_uncertainty` gives it, without its table (a
    pandas frame costs ten times the arithmetic on one small frame): an MD calculator's
    per-step path."""
    f = np.asarray(forces, dtype=float)
    w = check_weights(weights, len(f))
    worst = _worst_deviation(f, f.mean(axis=0), np.asarray(n_atoms, dtype=np.int64))
    return np.sqrt(w @ worst**2)


def ensemble_uncertainty(
    forces: np.ndarray,
    n_atoms: np.ndarray,
    weights: np.ndarray,
    ref_forces: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per frame: U0, U1, U2, std_mean, std_max and, with reference forces, the true errors
    ΔF (plain mean) and ΔF_w (weighted mean) and the mean force's RMSE over the frame (all
    eV/Å). ``weights`` are U1/U2's w_k (sum one)."""
    f = np.asarray(forces, dtype=float)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    check_forces(f, n_atoms)
    w = check_weights(weights, f.shape[0])
    mean = f.mean(axis=0)  # (A, 3)
    wmean = np.tensordot(w, f, axes=1)
    worst = _worst_deviation(f, mean, n_atoms)  # (M, F)
    worst_w = _worst_deviation(f, wmean, n_atoms)
    std_mean, std_max = force_std(f, n_atoms)
    out = pd.DataFrame(
        {
            "n_atoms": n_atoms,
            "U0": np.sqrt((worst**2).mean(axis=0)),
            "U1": np.sqrt(w @ worst**2),
            "U2": np.sqrt(w @ worst_w**2),
            "std_mean": std_mean,
            "std_max": std_max,
        }
    )
    if ref_forces is not None:
        ref = np.asarray(ref_forces, dtype=float)
        if ref.shape != mean.shape:
            raise ElmlffError(
                f"reference forces {ref.shape} do not match the models' {mean.shape}",
                "give reference forces for the same atoms",
            )
        out["dF"] = _max_per_frame(np.linalg.norm(ref - mean, axis=1), n_atoms)
        out["dF_w"] = _max_per_frame(np.linalg.norm(ref - wmean, axis=1), n_atoms)
        out["rmse_mean"] = np.sqrt(_mean_per_frame(((ref - mean) ** 2).sum(axis=1), n_atoms) / 3)
    return out


def force_delta(direct: np.ndarray, conservative: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """U_Δ per frame: the RMS over the frame's 3N components of F_direct − F_conservative."""
    d = np.asarray(direct, dtype=float) - np.asarray(conservative, dtype=float)
    return np.sqrt(_mean_per_frame((d**2).sum(axis=1), np.asarray(n_atoms)) / 3)


def spearman(u: np.ndarray, err: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Spearman's ρ of an uncertainty against an error, with a 95 % percentile bootstrap
    interval over frames."""
    from scipy.stats import rankdata

    u, err = np.asarray(u, dtype=float), np.asarray(err, dtype=float)
    if len(u) < 3:
        return {"rho": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": len(u)}

    def rho(idx: np.ndarray) -> float:
        a, b = rankdata(u[idx]), rankdata(err[idx])
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a**2).sum() * (b**2).sum())
        return float((a * b).sum() / den) if den > 0 else np.nan

    value = rho(np.arange(len(u)))
    rng = np.random.default_rng(seed)
    boot = np.array([rho(rng.integers(0, len(u), len(u))) for _ in range(bootstrap)])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975]) if len(boot) else (np.nan, np.nan)
    return {"rho": value, "ci_low": float(lo), "ci_high": float(hi), "n": len(u)}


def coverage_curve(
    u: np.ndarray, sq_err: np.ndarray, n_comp: np.ndarray, fractions: np.ndarray | None = None
) -> pd.DataFrame:
    """Accuracy-coverage: the force RMSE of the frames kept when the most uncertain are
    removed, for each kept fraction (1 = every frame, the plain RMSE). ``sq_err`` is each
    frame's summed squared force error, ``n_comp`` its 3N."""
    u, sq, nc = (np.asarray(x, dtype=float) for x in (u, sq_err, n_comp))
    order = np.argsort(u, kind="stable")  # most certain first
    fr = np.linspace(0.05, 1.0, 20) if fractions is None else np.asarray(fractions, dtype=float)
    keep = np.maximum(1, np.round(fr * len(u)).astype(int))
    csq, cn = np.cumsum(sq[order]), np.cumsum(nc[order])
    return pd.DataFrame(
        {
            "coverage": keep / len(u),
            "n_kept": keep,
            "rmse": np.sqrt(csq[keep - 1] / cn[keep - 1]),
            "u_threshold": u[order][keep - 1],
        }
    )


def threshold_curve(
    u: np.ndarray, sq_err: np.ndarray, n_comp: np.ndarray, thresholds: np.ndarray
) -> pd.DataFrame:
    """Force RMSE of the frames with U ≤ U_c and the fraction they are, per threshold U_c."""
    u, sq, nc = (np.asarray(x, dtype=float) for x in (u, sq_err, n_comp))
    rows = []
    for t in np.asarray(thresholds, dtype=float):
        k = u <= t
        rmse = np.sqrt(sq[k].sum() / nc[k].sum()) if k.any() else np.nan
        rows.append({"u_c": t, "fraction_kept": k.mean(), "rmse": rmse})
    return pd.DataFrame(rows)
