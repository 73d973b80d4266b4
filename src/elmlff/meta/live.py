"""Live bases for the conservative meta and the ensemble calculator.

A meta-model at inference (and Ensemble-conserv in training) evaluates the bases themselves,
so that forces can be differentiated through them. Under K-fold cross-fitting a base is the
mean of its K fits (as the store's val/test predictions are); meta-training frames of fold k
use fit ``cv{k}``, the fit that never saw them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from elmlff import bases as B
from elmlff.alignment import Aligned
from elmlff.data.frames import Frames


class FitMean:
    """A base that is the mean of its cross-fitted fits (a :class:`~elmlff.bases.Potential`)."""

    def __init__(self, name: str, fits: Sequence[B.Potential]) -> None:
        self.name, self.fits = name, list(fits)
        self.family = self.fits[0].family
        self.species = sorted(set.intersection(*(set(p.species) for p in self.fits)))

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        out = [p.predict(frames, batch_size) for p in self.fits]
        return np.mean([e for e, _ in out], axis=0), np.mean([f for _, f in out], axis=0)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        return torch.stack(
            [p.energy(positions, numbers, n_atoms, cell, pbc) for p in self.fits]
        ).mean(0)


Offsets = Mapping[str, Mapping[int, float]] | None


def _aligned(pot: B.Potential, model: str, offsets: Offsets) -> B.Potential:
    """``pot`` with its per-element energy offsets, as the store's energies are
    (:mod:`elmlff.alignment`; ``offsets`` from :func:`elmlff.store.energy_offsets`)."""
    return pot if offsets is None else Aligned(pot, offsets[model])


def load_bases(
    basedirs: Mapping[str, Mapping[str, Path]],
    models: Sequence[str],
    device: str = "cpu",
    offsets: Offsets = None,
) -> list[B.Potential]:
    """One inference potential per model: its ``full`` fit, or the mean of its K fits; with
    the store's energy ``offsets`` where it aligns energies."""
    out: list[B.Potential] = []
    for m in models:
        fits = basedirs[m]
        if "full" in fits:
            pot = B.load(fits["full"], device)
        else:
            pot = FitMean(m, [B.load(fits[f], device) for f in sorted(fits)])
        out.append(_aligned(pot, m, offsets))
    return out


def load_fit(
    basedirs: Mapping[str, Mapping[str, Path]],
    models: Sequence[str],
    fit: str,
    device: str = "cpu",
    offsets: Offsets = None,
) -> list[B.Potential]:
    """The ``fit`` (``full`` or ``cv{k}``) of every model (with the store's ``offsets``)."""
    return [_aligned(B.load(basedirs[m][fit], device), m, offsets) for m in models]


def base_outputs(
    pots: Sequence[B.Potential],
    positions: torch.Tensor,
    numbers: torch.Tensor,
    n_atoms: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every base's energy ``(F, M)`` and forces ``(A, M, 3)`` as functions of ``positions``.

    The energies keep their graph; with ``create_graph`` the forces do too, so a model of them
    can be differentiated again (Hessian-vector products through each base)."""
    energies, forces = [], []
    for pot in pots:  # −dE/dx, or a direct-force base's own forces (as in the store)
        e, f = B.energy_and_forces(pot, positions, numbers, n_atoms, cell, pbc, create_graph)
        energies.append(e)
        forces.append(f)
    return torch.stack(energies, dim=1), torch.stack(forces, dim=1)


def check_species(pots: Sequence[B.Potential], species: Sequence[int], numbers) -> None:
    """Every base and the meta (``species``) know every element of ``numbers``."""
    for p in pots:
        B.check_species(p.name, list(p.species), np.asarray(numbers))
    B.check_species("meta-model", list(species), np.asarray(numbers))
