"""Equations of state: relax each element's ground-state crystal with a model and fit E(V),
against the WIEN2k-PBE values of the Delta-codes benchmark in ``ase.collections.dcdft``.

For each element and model: the dcdft structure is relaxed (positions and cell; ASE's FIRE on
a ``FrechetCellFilter``), then scanned over isotropic volume strains around the relaxed volume
with the positions relaxed at each fixed cell, and ``ase.eos.EquationOfState`` (Birch-Murnaghan)
gives V0 (Å³/atom), B0 (GPa) and B'. Only models with an energy take part (Ensemble-direct
predicts forces alone). The stress for the cell relaxation is the model's own where it has
one (a pretrained base), else central finite differences of its energy under strain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from elmlff.errors import ElmlffError
from elmlff.io import atomic_path
from elmlff.log import log

#: volume strains of the scan (fractions of the relaxed volume)
STRAINS = tuple(np.linspace(-0.06, 0.06, 7).round(4))


@dataclass
class EosSettings:
    fmax: float = 0.01  # eV/Å, and the cell filter's stress in the same units
    relax_steps: int = 300
    scan_steps: int = 100
    strains: tuple[float, ...] = STRAINS


def reference(element: str) -> dict[str, float]:
    """WIEN2k-PBE V0 (Å³/atom), B0 (GPa) and B' of ``element`` (``ase.collections.dcdft``)."""
    from ase.collections import dcdft

    if element not in dcdft.data:
        raise ElmlffError(
            f"no WIEN2k-PBE reference for {element!r} in ase.collections.dcdft",
            f"choose elements of the Delta benchmark: {sorted(dcdft.data)[:12]} ...",
        )
    d = dcdft.data[element]
    return {"v0": d["wien2k_volume"], "b0": d["wien2k_B"], "bp": d["wien2k_Bp"]}


def structure(element: str):
    """The benchmark's ground-state crystal of ``element`` (an ASE ``Atoms``)."""
    from ase.collections import dcdft

    return dcdft[element].copy()


def _relax(atoms, fmax: float, steps: int, cell: bool) -> tuple[int, bool]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    target = FrechetCellFilter(atoms) if cell else atoms
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return opt.nsteps, converged


def fit(atoms, settings: EosSettings | None = None) -> dict[str, float]:
    """Relax ``atoms`` (its calculator attached) and fit its equation of state: V0 and E0 per
    atom, B0 in GPa, B', and how the relaxation went."""
    from ase.eos import EquationOfState
    from ase.units import GPa

    s = settings or EosSettings()
    n = len(atoms)
    steps, converged = _relax(atoms, s.fmax, s.relax_steps, cell=True)
    v_relaxed = atoms.get_volume()
    cell0 = atoms.cell.array.copy()
    volumes, energies = [], []
    for eps in s.strains:
        probe = atoms.copy()
        probe.calc = atoms.calc
        probe.set_cell(cell0 * (1 + eps) ** (1 / 3), scale_atoms=True)
        _relax(probe, s.fmax, s.scan_steps, cell=False)
        volumes.append(probe.get_volume())
        energies.append(probe.get_potential_energy())
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, e0, b = eos.fit()
    bp = float(eos.eos_parameters[2]) if eos.eos_parameters is not None else np.nan
    return {
        "v0": v0 / n,
        "e0": e0 / n,
        "b0": b / GPa,
        "bp": bp,
        "v_relaxed": v_relaxed / n,
        "relax_steps": steps,
        "relax_converged": converged,
    }


def run(
    dataset_dir: Path,
    models: Sequence[str],
    elements: Sequence[str],
    out: Path,
    settings: EosSettings | None = None,
) -> pd.DataFrame:
    """``eos.csv``: per element and model, the fitted V0, B0, B' beside the WIEN2k-PBE ones
    and the errors (V0 in %, B0 in GPa and %)."""
    from elmlff.calculator import EnsembleCalculator
    from elmlff.loader import load_ensemble

    rows = []
    for name in models:
        calc = EnsembleCalculator(load_ensemble(dataset_dir, name))
        if not calc.has_energy:
            log(f"{name}: no energy (forces only), no equation of state")
            continue
        for el in elements:
            ref = reference(el)
            atoms = structure(el)
            atoms.calc = calc
            got = fit(atoms, settings)
            rows.append(
                {
                    "element": el,
                    "model": name,
                    **{k: got[k] for k in ("v0", "b0", "bp", "e0", "v_relaxed")},
                    "ref_v0": ref["v0"],
                    "ref_b0": ref["b0"],
                    "ref_bp": ref["bp"],
                    "v0_error_percent": 100 * (got["v0"] - ref["v0"]) / ref["v0"],
                    "b0_error_gpa": got["b0"] - ref["b0"],
                    "b0_error_percent": 100 * (got["b0"] - ref["b0"]) / ref["b0"],
                    "relax_steps": got["relax_steps"],
                    "relax_converged": got["relax_converged"],
                    "reference": "WIEN2k-PBE (ase.collections.dcdft)",
                }
            )
            log(
                f"{name} {el}: V0 {got['v0']:.3f} Å³/atom (WIEN2k-PBE {ref['v0']:.3f}), "
                f"B0 {got['b0']:.1f} GPa ({ref['b0']:.1f}), B' {got['bp']:.2f}"
            )
    df = pd.DataFrame(rows)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
