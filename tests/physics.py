"""Reusable physics checks for any :class:`~elmlff.bases.Potential` (nequip-style mixins).

A test class inherits :class:`PotentialPhysicsTests` and provides two fixtures: ``potential``
(a loaded, trained base in float64) and ``frames`` (a few `Frames` it can predict). A float32
model (the pretrained universal potentials, released in float32) widens the tolerances through
the class attributes; :class:`StressPhysicsTests` adds the stress of periodic frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from elmlff.bases import Potential, forces, frame_tensors, hvp
from elmlff.errors import ElmlffError


def energy_np(pot, frames, positions=None) -> np.ndarray:
    pos = torch.as_tensor(frames.positions if positions is None else positions, dtype=torch.float64)
    return pot.energy(pos, *frame_tensors(frames)).detach().numpy()


def fd_forces(pot, one, step: float) -> np.ndarray:
    """−dE/dx of one frame by central differences of ``pot.energy`` (A, 3)."""
    fd = np.zeros_like(one.positions)
    for a in range(len(one.positions)):
        for k in range(3):
            pos = one.positions.copy()
            pos[a, k] += step
            ep = energy_np(pot, one, pos)[0]
            pos[a, k] -= 2 * step
            em = energy_np(pot, one, pos)[0]
            fd[a, k] = -(ep - em) / (2 * step)
    return fd


class PotentialPhysicsTests:
    """Energy/force physics every base must satisfy."""

    #: an element the potential does not know (gold: in no trained test set)
    alien_z = 79
    #: energies/forces under rotation, translation and image shifts (float64: 1e-7)
    atol = 1e-7
    #: batched energies against frame by frame
    batch_atol = 1e-9
    #: Hessian-vector products against finite differences of the forces (step in Å)
    hvp_step, hvp_atol = 1e-4, 1e-5

    def test_keeps_the_potential_contract(self, potential, frames):
        """What callers rely on: float64 energies (F,) and forces (A, 3) for frames of any
        mix, a differentiable ``energy()`` that keeps its graph, and a one-line error (not a
        silent number) for an element the potential never saw."""
        assert isinstance(potential, Potential)
        assert set(np.unique(frames.numbers)) <= set(potential.species)
        e, f = potential.predict(frames)
        assert e.shape == (len(frames),) and f.shape == frames.forces.shape
        assert e.dtype == np.float64 and f.dtype == np.float64
        assert np.isfinite(e).all() and np.isfinite(f).all()
        pos = torch.as_tensor(frames.positions, dtype=torch.float64).requires_grad_(True)
        out = potential.energy(pos, *frame_tensors(frames))
        assert out.shape == (len(frames),) and out.requires_grad
        alien = frames.subset([0])
        alien.numbers = alien.numbers.copy()
        alien.numbers[0] = self.alien_z
        with pytest.raises(ElmlffError, match=rf"Z=\[{self.alien_z}\]"):
            potential.predict(alien)

    fd_step = 1e-4  # Å
    fd_atol = 1e-5  # eV/Å, float64 central differences

    #: ``predict`` (in its own batches) against −dE/dx of ``energy()`` over all frames at once
    autograd_atol = 1e-8

    def test_predict_forces_equal_autograd_forces(self, potential, frames):
        e, f = potential.predict(frames)
        tol = self.autograd_atol
        np.testing.assert_allclose(f, forces(potential, frames).detach().numpy(), atol=tol)
        np.testing.assert_allclose(e, energy_np(potential, frames), atol=tol)

    def test_forces_are_minus_energy_gradient_by_finite_differences(self, potential, frames):
        one = frames.subset([0])
        _, f = potential.predict(one)
        fd = fd_forces(potential, one, self.fd_step)
        assert np.abs(f).max() > 1e-3, "forces are trivially zero: the check would be empty"
        np.testing.assert_allclose(f, fd, atol=self.fd_atol)

    def test_energy_invariant_and_forces_equivariant_under_rotation(self, potential, frames):
        one = frames.subset([0])
        if one.pbc.any() and np.abs(one.cell).sum() > 0:
            one.cell = one.cell.copy()
        e0, f0 = potential.predict(one)
        rot = Rotation.random(random_state=3).as_matrix()
        centre = one.positions.mean(axis=0)
        rotated = frames.subset([0])
        rotated.positions = (one.positions - centre) @ rot.T + centre
        rotated.cell = one.cell @ rot.T
        e1, f1 = potential.predict(rotated)
        np.testing.assert_allclose(e1, e0, atol=self.atol)
        np.testing.assert_allclose(f1, f0 @ rot.T, atol=self.atol)

    def test_energy_invariant_under_translation(self, potential, frames):
        one = frames.subset([0])
        e0, f0 = potential.predict(one)
        moved = frames.subset([0])
        moved.positions = one.positions + np.array([0.37, -0.21, 0.55])
        e1, f1 = potential.predict(moved)
        np.testing.assert_allclose(e1, e0, atol=self.atol)
        np.testing.assert_allclose(f1, f0, atol=self.atol)

    def test_periodic_image_shift_changes_nothing(self, potential, frames):
        one = frames.subset([0])
        if not one.pbc.all():
            return
        e0, f0 = potential.predict(one)
        shifted = frames.subset([0])
        shifted.positions = one.positions.copy()
        shifted.positions[0] += one.cell[0][0] - one.cell[0][2]  # one atom to another image
        e1, f1 = potential.predict(shifted)
        np.testing.assert_allclose(e1, e0, atol=self.atol)
        np.testing.assert_allclose(f1, f0, atol=self.atol)

    def test_hessian_vector_product_matches_finite_differences_of_forces(self, potential, frames):
        one = frames.subset([0])
        v = np.random.default_rng(0).normal(size=one.positions.shape)
        hv = hvp(potential, one, v)
        h = self.hvp_step
        plus, minus = frames.subset([0]), frames.subset([0])
        plus.positions = one.positions + h * v
        minus.positions = one.positions - h * v
        fd = -(potential.predict(plus)[1] - potential.predict(minus)[1]) / (2 * h)
        assert np.abs(hv).max() > 1e-3
        np.testing.assert_allclose(hv, fd, atol=self.hvp_atol)

    def test_batched_energy_equals_frame_by_frame(self, potential, frames):
        order = [2, 0, 1]
        batch = energy_np(potential, frames.subset(order))
        single = [energy_np(potential, frames.subset([f]))[0] for f in order]
        np.testing.assert_allclose(batch, single, atol=self.batch_atol)
        assert len(set(np.round(batch, 6))) == 3  # distinct frames, so order is checked


class StressPhysicsTests:
    """The stress ``predict_stress`` gives (eV/Å³, ASE's sign) of a potential of periodic
    frames: ``(1/V) dE/dε`` by central differences of the energy under small strains, and a
    rotated cell's stress is the rotated tensor. ``stress_step`` is the strain step,
    ``stress_atol`` the tolerance in eV/Å³."""

    stress_step, stress_atol = 1e-4, 1e-7

    def test_stress_is_the_strain_derivative_by_finite_differences(self, potential, frames):
        one = frames.subset([0])
        _, _, s = potential.predict_stress(one)
        vol = abs(np.linalg.det(one.cell[0]))
        fd = np.zeros((3, 3))
        for a in range(3):
            for b in range(a, 3):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = self.stress_step / (1 if a == b else 2)
                e = []
                for sign in (1, -1):
                    st = frames.subset([0])
                    m = np.eye(3) + sign * eps
                    st.positions, st.cell = one.positions @ m, one.cell @ m
                    e.append(potential.predict(st)[0][0])
                fd[a, b] = fd[b, a] = (e[0] - e[1]) / (2 * self.stress_step) / vol
        assert np.abs(s[0]).max() > 1e-3, "stress is trivially zero: the check would be empty"
        np.testing.assert_allclose(s[0], fd, atol=self.stress_atol)

    def test_stress_rotates_with_the_cell(self, potential, frames):
        one = frames.subset([0])
        _, _, s0 = potential.predict_stress(one)
        rot = Rotation.random(random_state=5).as_matrix()
        turned = frames.subset([0])
        turned.positions, turned.cell = one.positions @ rot.T, one.cell @ rot.T
        _, _, s1 = potential.predict_stress(turned)
        np.testing.assert_allclose(s1[0], rot @ s0[0] @ rot.T, atol=self.stress_atol)
