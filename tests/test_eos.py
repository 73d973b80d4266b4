"""Equations of state (elmlff.eos) and the ensemble calculator's stress, on a potential whose
energy is a known Birch-Murnaghan curve of the volume: the relaxation must find its V0 and the
fit its V0, B0 and B'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.units import GPa

from elmlff import eos
from elmlff.baselines import LinearCombiner
from elmlff.bases import frame_tensors
from elmlff.calculator import EnsembleCalculator
from elmlff.meta.ensemble import LinearEnsemble

V0, B0, BP = 20.0, 100.0, 4.5  # Å³/atom, GPa, 1


def _bm(v: torch.Tensor) -> torch.Tensor:
    """Birch-Murnaghan energy per atom (eV) at volume per atom ``v``."""
    b = B0 * GPa
    x = (V0 / v) ** (2 / 3) - 1
    return 9 * V0 * b / 16 * (x**3 * BP + x**2 * (6 - 4 * (V0 / v) ** (2 / 3)))


class VolumePotential:
    """E = N * BM(V / N) for each periodic frame (positions enter only through the cell)."""

    name, family, species = "bm", "", [14]

    def energy(self, positions, numbers, n_atoms, cell, pbc):
        frame = torch.repeat_interleave(torch.arange(len(n_atoms)), n_atoms)
        tie = torch.zeros(len(n_atoms), dtype=positions.dtype).index_add(
            0, frame, 0.0 * positions.sum(1)
        )
        v = torch.linalg.det(cell.to(positions.dtype)).abs() / n_atoms
        return n_atoms * _bm(v) + tie

    def predict(self, frames, batch_size=64):
        pos = torch.as_tensor(frames.positions, dtype=torch.float64)
        e = self.energy(pos, *frame_tensors(frames))
        return e.numpy(), np.zeros_like(frames.positions)


def _calc():
    return EnsembleCalculator(
        LinearEnsemble(LinearCombiner("bm", ["bm"], np.ones(1)), [VolumePotential()])
    )


def test_finite_difference_stress_is_minus_the_pressure_of_the_curve():
    atoms = eos.structure("Si")
    atoms.calc = _calc()
    v = atoms.get_volume() / len(atoms)
    vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    (dedv,) = torch.autograd.grad(_bm(vt), vt)  # stress = dE/dV δ_ij (ASE's sign)
    s = atoms.get_stress(voigt=True)
    np.testing.assert_allclose(s[:3], float(dedv), rtol=1e-4)
    np.testing.assert_allclose(s[3:], 0.0, atol=1e-9)
    assert abs(float(dedv)) > 1e-4  # the dcdft Si volume is off this curve's minimum


def test_relaxation_and_fit_recover_the_curve_parameters():
    atoms = eos.structure("Si")  # 20.45 Å³/atom; the curve's minimum is at 20.0
    atoms.calc = _calc()
    got = eos.fit(atoms, eos.EosSettings(fmax=1e-4))
    assert got["relax_converged"]
    assert got["v_relaxed"] == pytest.approx(V0, rel=1e-3)
    assert got["v0"] == pytest.approx(V0, rel=1e-4)
    assert got["b0"] == pytest.approx(B0, rel=1e-3)
    assert got["bp"] == pytest.approx(BP, rel=1e-2)


def test_references_are_the_wien2k_pbe_values_and_unknown_elements_are_refused():
    ref = eos.reference("Si")
    assert ref["v0"] == pytest.approx(20.453) and ref["b0"] == pytest.approx(88.545)
    from elmlff.errors import ElmlffError

    with pytest.raises(ElmlffError, match="no WIEN2k-PBE reference"):
        eos.reference("Xx")
