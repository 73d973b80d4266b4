"""Per-element energy alignment (elmlff.alignment): offsets recovered on synthetic data, the
live wrapper agrees with the store's shift, and what cannot be aligned is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elmlff import alignment
from elmlff.bases import frame_tensors
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError


def _frames(rng, n_frames=40, species=(3, 14, 42)):
    n_atoms = rng.integers(2, 9, n_frames)
    numbers = rng.choice(species, int(n_atoms.sum()))
    return Frames(
        numbers=numbers,
        positions=rng.normal(size=(len(numbers), 3)),
        n_atoms=n_atoms,
        cell=np.zeros((n_frames, 3, 3)),
        pbc=np.zeros((n_frames, 3), bool),
        energy=rng.normal(size=n_frames),
        forces=rng.normal(size=(len(numbers), 3)),
    )


def test_composition_counts_by_hand():
    c = alignment.composition(np.array([1, 8, 1, 6, 6]), np.array([3, 2]), [1, 6, 8])
    np.testing.assert_array_equal(c, [[2, 0, 1], [0, 2, 0]])


def test_fit_offsets_recovers_known_offsets_from_meta_frames_only():
    rng = np.random.default_rng(0)
    fr = _frames(rng)
    counts = alignment.composition(fr.numbers, fr.n_atoms, fr.species)
    true = np.array([[-1.5, 3.0, 0.25], [0.0, -7.0, 2.0]])  # (M=2, S=3) eV/atom
    noise = rng.normal(scale=1e-3, size=(2, len(fr)))
    base = fr.energy[None] - true @ counts.T + noise
    meta = np.arange(0, 30)
    base[:, 30:] += 100.0  # val/test frames wildly off: they must not move the fit
    off = alignment.fit_offsets(fr.energy, base, counts, meta)
    np.testing.assert_allclose(off, true, atol=5e-3)
    aligned = base + alignment.shift(counts, off)
    assert np.abs(aligned[:, meta] - fr.energy[meta]).max() < 5e-3


def test_fit_offsets_refuses_an_element_absent_from_the_fit_frames():
    counts = np.array([[2.0, 0.0], [3.0, 0.0], [1.0, 4.0]])
    with pytest.raises(ElmlffError, match="no atoms"):
        alignment.fit_offsets(np.zeros(3), np.zeros((1, 3)), counts, np.array([0, 1]))
    with pytest.raises(ElmlffError, match="meta split is empty"):
        alignment.fit_offsets(np.zeros(3), np.zeros((1, 3)), counts, np.array([], int))


class _Quadratic:
    """An analytic base: E = sum |x|^2 per frame (so forces are -2x)."""

    name, family, species = "quad", "", [3, 14, 42]

    def energy(self, positions, numbers, n_atoms, cell, pbc):
        frame = torch.repeat_interleave(torch.arange(len(n_atoms)), n_atoms)
        return torch.zeros(len(n_atoms), dtype=positions.dtype).index_add(
            0, frame, (positions**2).sum(1)
        )

    def predict(self, frames, batch_size=64):
        pos = torch.as_tensor(frames.positions, dtype=torch.float64)
        e = self.energy(pos, *frame_tensors(frames))
        return e.numpy(), -2 * frames.positions


def test_aligned_wrapper_shifts_energy_like_the_store_and_keeps_forces():
    rng = np.random.default_rng(1)
    fr = _frames(rng, 6)
    off = {3: 0.5, 14: -2.0, 42: 10.0}
    pot = alignment.Aligned(_Quadratic(), off)
    e0, f0 = _Quadratic().predict(fr)
    e, f = pot.predict(fr)
    counts = alignment.composition(fr.numbers, fr.n_atoms, fr.species)
    want = e0 + alignment.shift(counts, np.array([[off[z] for z in fr.species]]))[0]
    np.testing.assert_allclose(e, want)
    np.testing.assert_array_equal(f, f0)
    pos = torch.as_tensor(fr.positions, dtype=torch.float64).requires_grad_(True)
    et = pot.energy(pos, *frame_tensors(fr))
    np.testing.assert_allclose(et.detach().numpy(), want)
    (g,) = torch.autograd.grad(et.sum(), pos)
    np.testing.assert_allclose(-g.numpy(), f0)  # the shift has no force
    assert pot.name == "quad"


def test_aligned_wrapper_refuses_an_element_without_offset():
    rng = np.random.default_rng(2)
    fr = _frames(rng, 3)
    with pytest.raises(ElmlffError, match="no energy offset"):
        alignment.Aligned(_Quadratic(), {3: 0.0, 14: 0.0}).predict(fr)
