"""Per-element energy alignment of bases that disagree on the energy zero.

Pretrained universal potentials are trained on different references (PBE or r2SCAN, each
with its own element energies), so their total energies differ from the data set's (and from
each other's) by roughly a constant per atom of each element. Before anything combines or
scores base energies, each base ``m`` gets offsets ``c_m[z]`` (eV per atom of element ``z``)
fitted by least squares on the frames meta-models learn from (the ``meta`` role, or the
out-of-fold frames under K-fold), never on ``val`` or ``test``::

    E_m^aligned(frame) = E_m(frame) + sum_z n_z(frame) c_m[z]

The shift depends on the composition only, so forces, stress and Hessians are unchanged. The
store keeps the raw energies and the offsets (:mod:`elmlff.store`); live bases (Ensemble-conserv,
calculators) are wrapped by :class:`Aligned` with the same offsets, so the store and the live
bases agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError


def composition(numbers: np.ndarray, n_atoms: np.ndarray, species: Sequence[int]) -> np.ndarray:
    """Atoms of each element in each frame, ``(F, len(species))``."""
    frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
    col = np.searchsorted(np.asarray(species), numbers)
    out = np.zeros((len(n_atoms), len(species)))
    np.add.at(out, (frame, col), 1.0)
    return out


def fit_offsets(
    reference: np.ndarray, energy: np.ndarray, counts: np.ndarray, frames: np.ndarray
) -> np.ndarray:
    """Per-element offsets ``(M, S)`` (eV/atom) that bring each base's energies ``(M, F)`` to
    ``reference (F,)`` on ``frames``, by least squares on the composition ``counts (F, S)``.

    An element absent from ``frames`` cannot be aligned: a clear error."""
    frames = np.asarray(frames, np.int64)
    if len(frames) == 0:
        raise ElmlffError(
            "energy alignment needs frames to fit on and the meta split is empty",
            "give the data set `meta` frames (split.sizes.meta) or use energy_alignment: none",
        )
    a = counts[frames]
    absent = np.flatnonzero(a.sum(axis=0) == 0)
    if len(absent):
        raise ElmlffError(
            f"energy alignment: element column(s) {absent.tolist()} have no atoms in the "
            f"{len(frames)} frames the offsets are fitted on",
            "give the meta split frames of every element (more meta frames, or a pool part "
            "with that element)",
        )
    resid = reference[frames][None, :] - energy[:, frames]  # (M, n)
    sol, *_ = np.linalg.lstsq(a, resid.T, rcond=None)
    return sol.T


def shift(counts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The energy shift ``(M, F)`` of offsets ``(M, S)`` on frames of composition ``(F, S)``."""
    return offsets @ counts.T


class Aligned:
    """A base whose energies carry its per-element offsets (a
    :class:`~elmlff.bases.Potential`; everything else is the wrapped base's)."""

    def __init__(self, pot: Any, offsets: Mapping[int, float]) -> None:
        self.pot = pot
        self.offsets = {int(z): float(c) for z, c in offsets.items()}
        self.name, self.family, self.species = pot.name, pot.family, pot.species

    def __getattr__(self, name: str) -> Any:  # predict_stress, dtype, ... of the base
        return getattr(self.pot, name)

    def _table(self, numbers: np.ndarray) -> np.ndarray:
        missing = sorted({int(z) for z in np.unique(numbers)} - set(self.offsets))
        if missing:
            raise ElmlffError(
                f"base '{self.name}': no energy offset for Z={missing}",
                "align on meta frames that contain every element the model is used on",
            )
        t = np.zeros(int(max(self.offsets)) + 1)
        for z, c in self.offsets.items():
            t[z] = c
        return t

    def frame_shift(self, frames: Frames) -> np.ndarray:
        """The shift (F,) of ``frames`` in eV."""
        per_atom = self._table(frames.numbers)[frames.numbers]
        return np.bincount(
            np.repeat(np.arange(len(frames)), frames.n_atoms), per_atom, minlength=len(frames)
        )

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        e, f = self.pot.predict(frames, batch_size)
        return e + self.frame_shift(frames), f

    def _tshift(self, e, numbers, n_atoms):
        import torch

        t = torch.as_tensor(self._table(numbers.detach().cpu().numpy()), dtype=e.dtype)
        per_atom = t.to(e.device)[numbers.long()]
        frame = torch.repeat_interleave(torch.arange(len(n_atoms), device=e.device), n_atoms)
        return torch.zeros_like(e).index_add(0, frame, per_atom)

    def energy(self, positions, numbers, n_atoms, cell, pbc):
        e = self.pot.energy(positions, numbers, n_atoms, cell, pbc)
        return e + self._tshift(e, numbers, n_atoms)

    def outputs(self, positions, numbers, n_atoms, cell, pbc):
        """A direct-force base's (energy, forces), the energy shifted."""
        e, f = self.pot.outputs(positions, numbers, n_atoms, cell, pbc)
        return e + self._tshift(e, numbers, n_atoms), f
