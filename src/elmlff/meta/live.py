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


#: Ensemble-conserv (Eq. 6) trains from the bases' force Jacobians at its frames, computed
#: once, when no frame has more atoms than this (a block is (3n)² per base and frame; MD17's
#: molecules and methane qualify, a slab does not). On methane (5 atoms, 8 bases, 2 CPU cores)
#: the Jacobians of a 32-frame batch cost about 1.5 live training steps, against a live step
#: per batch and epoch (forward, Hessian-vector product and backward through every base): the
#: training job went from 394 s to 62 s, the same val error at every epoch.
JACOBIAN_MAX_ATOMS = 24
JACOBIAN_MAX_BYTES = 2 * 1024**3


def frame_columns(batch: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """(A, 3): each coordinate's row (= column) in its frame's flattened block, 3·slot + axis."""
    start = torch.cumsum(n_atoms, 0) - n_atoms
    slot = torch.arange(len(batch), device=batch.device) - start[batch]
    return 3 * slot[:, None] + torch.arange(3, device=batch.device)


def force_jacobians(
    pots: Sequence[B.Potential],
    positions: torch.Tensor,
    numbers: torch.Tensor,
    n_atoms: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every base's energy ``(F, M)``, forces ``(A, M, 3)`` and force Jacobian dF/dx per frame
    ``(F, M, rows, rows)`` (frames are independent blocks, zero-padded to ``rows`` ≥ 3 × the
    largest frame's atoms): one backward pass per base, vmapped over the unit directions (one
    per row; a plain loop where a base cannot be vmapped)."""
    n_frames, n = len(n_atoms), positions.shape[0]
    batch = torch.repeat_interleave(torch.arange(n_frames, device=positions.device), n_atoms)
    col = frame_columns(batch, n_atoms)
    dev = positions.device
    atom = torch.arange(n, device=dev)[:, None].expand(n, 3)
    axis = torch.arange(3, device=dev).expand(n, 3)
    units = positions.new_zeros(rows, n, 3)
    units[col, atom, axis] = 1.0  # units[r]: row r of every frame's block at once
    energies, forces = [], []
    jac = positions.new_zeros(n_frames, len(pots), rows, rows)
    for m, pot in enumerate(pots):
        pos = positions.detach().clone().requires_grad_(True)
        e, f = B.energy_and_forces(pot, pos, numbers, n_atoms, cell, pbc, create_graph=True)
        try:
            (g,) = torch.autograd.grad(f, pos, units, retain_graph=True, is_grads_batched=True)
        except RuntimeError:  # an operation vmap does not support
            g = torch.stack([torch.autograd.grad(f, pos, u, retain_graph=True)[0] for u in units])
        # g[r, a, c] = dF_(row r of a's frame) / dx_(a, c)
        jac[batch[:, None].expand(n, 3), m, :, col] = g.permute(1, 2, 0)
        energies.append(e.detach())
        forces.append(f.detach())
    return torch.stack(energies, dim=1), torch.stack(forces, dim=1), jac


def expand_energy(
    e0: torch.Tensor, f0: torch.Tensor, dx: torch.Tensor, batch: torch.Tensor
) -> torch.Tensor:
    """Every base's energy ``(F, M)`` to first order around the frames' positions,
    E_m0 - F_m0·dx (``f0`` ``(A, M, 3)``, ``dx`` ``(A, 3)``, ``batch`` each atom's frame): the
    value and the gradient at dx = 0 of a base whose forces are ``f0``."""
    work = (f0 * dx[:, None, :]).sum(-1)  # (A, M)
    return e0 - torch.zeros_like(e0).index_add(0, batch, work)


class LocalBases:
    """The frozen bases at fixed frames, as Ensemble-conserv's training needs them: each
    frame's energies E_m0, forces F_m0 and force Jacobians J_m = dF_m/dx from the live bases,
    so that around the frame's positions x0

        E_m(x0 + dx) = E_m0 - F_m0·dx,    F_m(x0 + dx) = F_m0 + J_m dx

    have the live bases' values and first derivatives at x0. The training loss reads only
    those (θ's forces at x0, with the Hessian-vector terms J_mᵀ dθ/dF_m), and the bases'
    weights are constants, so the loss and its gradients to θ are the live ones (to rounding)
    while each step runs θ alone. Conservative bases only (−dE/dx = F). Stored per frame,
    zero-padded to the largest frame, so a batch is gathered by index."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._row: dict[int, int] = {}  # store frame -> row of the tensors below
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def pays(pots: Sequence[B.Potential], n_atoms: np.ndarray) -> bool:
        """Whether the cache applies (conservative bases) and pays (small frames, bounded
        memory: :data:`JACOBIAN_MAX_ATOMS`, :data:`JACOBIAN_MAX_BYTES`) for frames of
        ``n_atoms`` atoms."""
        if any(B.has_direct_forces(p) for p in pots) or not len(n_atoms):
            return False
        rows = 3 * int(np.max(n_atoms))
        size = 8 * len(n_atoms) * len(pots) * rows**2
        return int(np.max(n_atoms)) <= JACOBIAN_MAX_ATOMS and size <= JACOBIAN_MAX_BYTES

    def add(self, frames: np.ndarray, pots: Sequence[B.Potential], b) -> None:
        """Frames ``frames`` (store indices) of the :class:`~elmlff.meta.data.MetaBatch`
        ``b``, through the live bases ``pots``."""
        e, f, jac = force_jacobians(
            pots, b.positions, b.numbers, b.n_atoms, b.cell, b.pbc, self.rows
        )
        slot = frame_columns(b.batch, b.n_atoms)[:, 0] // 3
        padded = f.new_zeros(len(frames), self.rows // 3, *f.shape[1:])  # (F, n, M, 3)
        padded[b.batch, slot] = f
        start = len(self._row)
        self._row.update({int(fr): start + i for i, fr in enumerate(frames)})
        self._parts.append((e, padded, jac))
        self._tensors = None

    def outputs(self, b, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every base's energy ``(F, M)`` and forces ``(A, M, 3)`` on the batch ``b`` as
        functions of ``positions`` (at ``b.positions``: the live bases' values)."""
        if self._tensors is None:
            self._tensors = tuple(torch.cat(t) for t in zip(*self._parts, strict=True))
        energy, forces, jacobians = (t.to(positions) for t in self._tensors)
        rows = torch.as_tensor([self._row[int(f)] for f in b.frames], device=positions.device)
        col = frame_columns(b.batch, b.n_atoms)
        f0 = forces[rows[b.batch], col[:, 0] // 3]  # (A, M, 3)
        dx = positions - b.positions
        flat = dx.new_zeros(len(rows), self.rows).index_put(
            (b.batch[:, None].expand_as(col), col), dx
        )
        moved = torch.einsum("fmrs,fs->fmr", jacobians[rows], flat)[b.batch[:, None], :, col]
        return expand_energy(energy[rows], f0, dx, b.batch), f0 + moved.permute(0, 2, 1)
