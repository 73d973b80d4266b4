"""Error metrics on a flat atom axis, with bootstrap intervals over frames.

Force MAE and RMSE come two ways, and the metric name says which:

* ``force_mae_framemean`` / ``force_rmse_framemean``: the EL-MLFFs paper's Eq. 8-9 - for each
  frame the MAE (RMSE) over its 3N force components, then the mean over frames;
* ``force_mae`` / ``force_rmse``: pooled over every force component of every frame.

Energies: ``energy_mae_per_atom`` and ``energy_rmse_per_atom`` of |E_pred - E_ref| / N.
Stress (where the data and the model have one): ``stress_mae`` over the six independent
components (xx, yy, zz, yz, xz, xy) of every frame, in GPa.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from elmlff.errors import ElmlffError

FORCE_UNIT, ENERGY_UNIT, STRESS_UNIT = "eV/Å", "eV/atom", "GPa"
#: eV/Å³ in GPa
EV_PER_A3_IN_GPA = 160.21766208
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class PerFrame:
    """Per-frame sufficient statistics of the errors."""

    abs_sum: np.ndarray  # (F,) sum of |ΔF| over the frame's 3N components
    sq_sum: np.ndarray  # (F,) sum of ΔF²
    n_comp: np.ndarray  # (F,) 3N
    e_err_per_atom: np.ndarray  # (F,) (E_pred - E_ref) / N
    stress_abs_mean: np.ndarray | None = None  # (F,) mean |Δσ| over 6 components, GPa

    def __len__(self) -> int:
        return len(self.n_comp)


def per_frame(
    pred_energy: np.ndarray,
    pred_forces: np.ndarray,
    ref_energy: np.ndarray,
    ref_forces: np.ndarray,
    n_atoms: np.ndarray,
    pred_stress: np.ndarray | None = None,
    ref_stress: np.ndarray | None = None,
) -> PerFrame:
    """Per-frame error sums for frames on a flat atom axis (stress ``(F, 3, 3)`` in eV/Å³,
    where both are given)."""
    frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
    d = np.asarray(pred_forces) - np.asarray(ref_forces)
    nf = len(n_atoms)
    return PerFrame(
        abs_sum=np.bincount(frame, np.abs(d).sum(axis=1), minlength=nf),
        sq_sum=np.bincount(frame, (d**2).sum(axis=1), minlength=nf),
        n_comp=3 * np.asarray(n_atoms, dtype=float),
        e_err_per_atom=(np.asarray(pred_energy) - np.asarray(ref_energy)) / np.asarray(n_atoms),
        stress_abs_mean=stress_error(pred_stress, ref_stress),
    )


def stress_error(pred: np.ndarray | None, ref: np.ndarray | None) -> np.ndarray | None:
    """Per-frame mean |Δσ| over the six independent components, in GPa (None without both)."""
    if pred is None or ref is None:
        return None
    d = np.asarray(pred) - np.asarray(ref)
    six = np.stack([d[:, i, j] for i, j in _VOIGT], axis=1)
    return EV_PER_A3_IN_GPA * np.abs(six).mean(axis=1)


def _stats(p: PerFrame, w: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics for frame weights ``w`` (F,) or (B, F) (bootstrap counts)."""
    wsum = w.sum(axis=-1)
    out = {
        "force_mae_framemean": (w @ (p.abs_sum / p.n_comp)) / wsum,
        "force_rmse_framemean": (w @ np.sqrt(p.sq_sum / p.n_comp)) / wsum,
        "force_mae": (w @ p.abs_sum) / (w @ p.n_comp),
        "force_rmse": np.sqrt((w @ p.sq_sum) / (w @ p.n_comp)),
        "energy_mae_per_atom": (w @ np.abs(p.e_err_per_atom)) / wsum,
        "energy_rmse_per_atom": np.sqrt((w @ p.e_err_per_atom**2) / wsum),
    }
    if p.stress_abs_mean is not None:
        out["stress_mae"] = (w @ p.stress_abs_mean) / wsum
    return out


UNITS = {
    "force_mae_framemean": FORCE_UNIT,
    "force_rmse_framemean": FORCE_UNIT,
    "force_mae": FORCE_UNIT,
    "force_rmse": FORCE_UNIT,
    "energy_mae_per_atom": ENERGY_UNIT,
    "energy_rmse_per_atom": ENERGY_UNIT,
    "stress_mae": STRESS_UNIT,
}


def metrics(
    p: PerFrame, bootstrap: int = 0, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, ci_low, ci_high)}``; intervals are percentile bootstraps over frames
    (NaN when ``bootstrap`` is 0)."""
    value = _stats(p, np.ones(len(p)))
    if bootstrap:
        boot = _stats(p, _counts(len(p), bootstrap, seed))
        a = (1 - level) / 2
        ci = {k: np.quantile(v, [a, 1 - a]) for k, v in boot.items()}
    else:
        ci = {k: (np.nan, np.nan) for k in value}
    return {k: (float(value[k]), float(ci[k][0]), float(ci[k][1])) for k in value}


def _counts(n: int, bootstrap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1 / n), size=bootstrap).astype(float)


def paired_differences(
    p: PerFrame, q: PerFrame, bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (metric(p) - metric(q), lo, hi)}`` for two models' errors on the same frames:
    every bootstrap replicate resamples the frames once and scores both models on that one
    sample (a paired interval: the frames' shared difficulty cancels). An interval that excludes
    zero says one model is better on this metric; one that holds zero says the data cannot tell."""
    if len(p) != len(q) or not np.array_equal(p.n_comp, q.n_comp):
        raise ElmlffError(
            "paired differences need both models' errors on the same frames",
            "score both models on the same frames",
        )
    one = np.ones(len(p))
    a, b = _stats(p, one), _stats(q, one)
    shared = [k for k in a if k in b]  # stress only where both have one
    if not bootstrap:  # no resampling: the difference without an interval
        return {k: (float(a[k] - b[k]), np.nan, np.nan) for k in shared}
    counts = _counts(len(p), bootstrap, seed)
    ba, bb = _stats(p, counts), _stats(q, counts)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for k in shared:
        d = ba[k] - bb[k]
        out[k] = (float(a[k] - b[k]), float(np.quantile(d, lo_q)), float(np.quantile(d, hi_q)))
    return out


def force_rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Pooled RMSE over every force component."""
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(ref)) ** 2)))
