"""The four baselines every study shows beside the meta-models. All are linear combiners of the
bases' energies and forces, fitted on out-of-sample predictions (the ``meta`` split, or the
out-of-fold predictions under K-fold cross-fitting):

* ``best_base``: the base with the lowest validation force RMSE (one-hot weights);
* ``mean``: plain mean;
* ``weighted_mean``: weights ∝ 1 / force RMSE of each base on the fit frames;
* ``linear_stacking``: least-squares per-base weights on the fit frames' forces, plus a per-atom
  energy offset (the same weights combine energies, so the blend stays conservative): one per
  element where the fit frames hold several, by least squares on their composition (weights
  that do not sum to one leave a per-element residual, which one offset cannot absorb).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elmlff import store
from elmlff.alignment import composition
from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_write_text
from elmlff.metrics import force_rmse

BASELINES = ("best_base", "mean", "weighted_mean", "linear_stacking")


@dataclass
class LinearCombiner:
    """E = Σ_m w_m E_m + b·N + Σ_Z c_Z N_Z, F = Σ_m w_m F_m over bases ``models``."""

    name: str
    models: list[str]
    weights: np.ndarray
    energy_offset_per_atom: float = 0.0
    info: dict = field(default_factory=dict)
    #: eV/atom per element (atomic number): c_Z
    energy_offsets: dict[int, float] = field(default_factory=dict)

    def apply(
        self,
        energy: np.ndarray,
        forces: np.ndarray,
        n_atoms: np.ndarray,
        numbers: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Combine ``energy (M, F)`` and ``forces (M, A, 3)`` (``numbers (A,)``: the atoms'
        elements, needed with per-element offsets)."""
        w = np.asarray(self.weights)
        n_atoms = np.asarray(n_atoms)
        e = np.tensordot(w, energy, axes=1) + self.energy_offset_per_atom * n_atoms
        if self.energy_offsets:
            if numbers is None:
                raise ElmlffError(
                    f"baseline '{self.name}' has per-element energy offsets but no elements "
                    "were given",
                    "pass the atoms' numbers to apply()",
                )
            unknown = sorted(set(np.unique(numbers).tolist()) - set(self.energy_offsets))
            if unknown:
                raise ElmlffError(
                    f"baseline '{self.name}': no energy offset for element(s) {unknown} (absent "
                    "from the frames it was fitted on)",
                    "fit the baselines on frames that hold every element",
                )
            per_atom = np.vectorize(self.energy_offsets.__getitem__, otypes=[float])(numbers)
            frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
            e = e + np.bincount(frame, per_atom, minlength=len(n_atoms))
        return e, np.tensordot(w, forces, axes=1)

    def to_json(self) -> dict:
        d = asdict(self)
        d["weights"] = dict(zip(self.models, np.asarray(self.weights).tolist(), strict=True))
        d["energy_offsets"] = {str(z): c for z, c in self.energy_offsets.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LinearCombiner:
        """Rebuild a baseline from its :meth:`to_json` (an entry of ``baselines.json``)."""
        models = list(d["weights"])
        return cls(
            d["name"],
            models,
            np.array([d["weights"][m] for m in models]),
            d.get("energy_offset_per_atom", 0.0),
            d.get("info", {}),
            {int(z): float(c) for z, c in d.get("energy_offsets", {}).items()},
        )


def _check(forces: np.ndarray, ref: np.ndarray) -> None:
    if forces.ndim != 3 or forces.shape[1:] != ref.shape:
        raise ElmlffError(
            f"base forces {forces.shape} do not match reference {ref.shape}",
            "pass forces as (model, atom, 3) for the same frames as the reference",
        )
    if forces.shape[1] == 0:
        raise ElmlffError("no frames to fit the baselines on", "give the meta split frames")


def best_base(models: list[str], val_forces: np.ndarray, val_ref: np.ndarray) -> LinearCombiner:
    """One-hot on the base with the lowest force RMSE on the validation frames."""
    _check(val_forces, val_ref)
    rmse = np.array([force_rmse(f, val_ref) for f in val_forces])
    w = np.zeros(len(models))
    w[int(np.argmin(rmse))] = 1.0
    return LinearCombiner(
        "best_base",
        list(models),
        w,
        info={
            "chosen": models[int(np.argmin(rmse))],
            "val_force_rmse": dict(zip(models, rmse.tolist(), strict=True)),
        },
    )


def mean(models: list[str]) -> LinearCombiner:
    return LinearCombiner("mean", list(models), np.full(len(models), 1 / len(models)))


def weighted_mean(models: list[str], forces: np.ndarray, ref: np.ndarray) -> LinearCombiner:
    """Weights ∝ 1 / RMSE_F of each base on the fit frames."""
    _check(forces, ref)
    rmse = np.array([force_rmse(f, ref) for f in forces])
    inv = 1 / np.maximum(rmse, 1e-12)
    return LinearCombiner(
        "weighted_mean",
        list(models),
        inv / inv.sum(),
        info={"fit_force_rmse": dict(zip(models, rmse.tolist(), strict=True))},
    )


def linear_stacking(
    models: list[str],
    energy: np.ndarray,
    forces: np.ndarray,
    ref_energy: np.ndarray,
    ref_forces: np.ndarray,
    n_atoms: np.ndarray,
    numbers: np.ndarray | None = None,
) -> LinearCombiner:
    """Least-squares weights on the force components, then the energy offset: per atom, the
    mean per-atom energy residual; with ``numbers`` holding several elements, per element, by
    least squares of the residuals on the frames' composition."""
    _check(forces, ref_forces)
    x = forces.reshape(len(models), -1).T  # (3A, M)
    w, *_ = np.linalg.lstsq(x, ref_forces.reshape(-1), rcond=None)
    residual = ref_energy - np.tensordot(w, energy, axes=1)
    species = np.unique(numbers) if numbers is not None else np.zeros(0)
    if len(species) > 1:
        counts = composition(numbers, np.asarray(n_atoms), species)
        c, *_ = np.linalg.lstsq(counts, residual, rcond=None)
        offsets = dict(zip(species.tolist(), c.tolist(), strict=True))
        return LinearCombiner("linear_stacking", list(models), w, energy_offsets=offsets)
    b = float(np.mean(residual / n_atoms))
    return LinearCombiner("linear_stacking", list(models), w, b)


def fit_all(
    models: list[str], fit: dict[str, np.ndarray], val: dict[str, np.ndarray]
) -> list[LinearCombiner]:
    """All four baselines. ``fit``/``val`` hold ``energy (M,F)``, ``forces (M,A,3)``,
    ``ref_energy``, ``ref_forces``, ``n_atoms`` for the meta (fit) and val frames."""
    return [
        best_base(models, val["forces"], val["ref_forces"]),
        mean(models),
        weighted_mean(models, fit["forces"], fit["ref_forces"]),
        linear_stacking(
            models,
            fit["energy"],
            fit["forces"],
            fit["ref_energy"],
            fit["ref_forces"],
            fit["n_atoms"],
            fit.get("numbers"),
        ),
    ]


def fit_baselines(ds, split: Split, models: list[str]) -> list[LinearCombiner]:
    """The four baselines over the bases ``models`` (any subset of the store's), fitted on the
    out-of-sample (meta) frames of the store ``ds``, best base chosen on val."""
    frames = store.frames_from_dataset(ds)
    return fit_all(
        models,
        store.block(ds, frames, split.meta_fit(), models),
        store.block(ds, frames, split.roles["val"], models),
    )


def write_baselines(
    path: Path, dataset: str, combiners: list[LinearCombiner], split: Split
) -> None:
    """``baselines.json``: the four fitted baselines, and every base's pooled val force RMSE
    (eV/Å; the uncertainty monitor's and the MD stage's weights and ordering)."""
    by_name = {c.name: c for c in combiners}
    body = {
        "dataset": dataset,
        "fit_on": "out-of-fold (K-fold)" if split.kfold else "meta",
        "n_fit_frames": len(split.meta_fit()),
        "n_val_frames": len(split.roles["val"]),
        "val_force_rmse": by_name["best_base"].info["val_force_rmse"],
        "baselines": {c.name: c.to_json() for c in combiners},
    }
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def _read(path: Path) -> dict:
    if not Path(path).exists():
        raise ElmlffError(f"{path} not found", "run the baselines rule (snakemake ... baselines)")
    return json.loads(Path(path).read_text())


def read_baselines(path: Path) -> list[LinearCombiner]:
    """The baselines of a ``baselines.json`` written by :func:`write_baselines`."""
    return [LinearCombiner.from_json(d) for d in _read(path)["baselines"].values()]


def base_val_force_rmse(path: Path) -> dict[str, float]:
    """Every base's pooled val force RMSE (eV/Å) from ``baselines.json``."""
    d = _read(path)
    return dict(d.get("val_force_rmse") or d["baselines"]["best_base"]["info"]["val_force_rmse"])
