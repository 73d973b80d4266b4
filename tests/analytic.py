"""Analytic torch potentials that satisfy the :class:`~elmlff.bases.Potential` protocol: fast,
exact bases for testing ensembles (molecules only: all pairs within each frame)."""

from __future__ import annotations

import numpy as np
import torch

from elmlff.bases import frame_tensors
from elmlff.data.frames import Frames


class MorsePotential:
    """E = sum_{i<j} D (exp(-2a(r - r0)) - 2 exp(-a(r - r0))), scaled by ``scale``; pairs of
    equal elements may have their own ``r0_same`` (1.78 Å keeps methane's H atoms tetrahedral)."""

    def __init__(self, name: str, d=0.3, a=1.2, r0=1.1, scale=1.0, species=(1, 6, 8), r0_same=None):
        self.name, self.d, self.a, self.r0, self.scale = name, d, a, r0, scale
        self.r0_same = r0 if r0_same is None else r0_same
        self.species = list(species)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        out = []
        start = 0
        for n in n_atoms.tolist():
            p = positions[start : start + n]
            i, j = torch.triu_indices(n, n, 1)
            r = (p[i] - p[j]).norm(dim=1)
            z = numbers[start : start + n]
            r0 = torch.where(z[i] == z[j], *torch.tensor([self.r0_same, self.r0], dtype=p.dtype))
            x = torch.exp(-self.a * (r - r0))
            out.append(self.scale * self.d * (x**2 - 2 * x).sum())
            start += n
        return torch.stack(out)

    def predict(self, frames: Frames, batch_size: int = 64):
        pos = torch.as_tensor(frames.positions, dtype=torch.float64).requires_grad_(True)
        e = self.energy(pos, *frame_tensors(frames))
        (g,) = torch.autograd.grad(e.sum(), pos)
        return e.detach().numpy(), -g.numpy()


def labelled(frames: Frames, pot: MorsePotential) -> Frames:
    """``frames`` relabelled with ``pot``'s energies and forces (a synthetic reference)."""
    e, f = pot.predict(frames)
    out = frames.subset(np.arange(len(frames)))
    out.energy, out.forces = e, f
    return out
