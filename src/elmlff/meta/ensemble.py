"""Ensembles at inference: bases evaluated live, combined by a meta-model or a baseline.

Every ensemble gives :class:`Prediction`: the combined forces (and energy where it is defined:
Ensemble-conserv and the linear baselines have one, Ensemble-direct has none) plus every base's
energy and forces. :mod:`elmlff.calculator` wraps any of them as an ASE calculator and
:mod:`elmlff.loader` loads them from a campaign's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from elmlff import bases as B
from elmlff import subsets as S
from elmlff.baselines import LinearCombiner
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.meta.data import MetaBatch, batch_from_frames
from elmlff.meta.live import base_outputs, check_species


@dataclass
class Prediction:
    energy: np.ndarray | None  # (F,) eV, None where the ensemble defines no energy
    forces: np.ndarray  # (A, 3) eV/Å
    base_energy: np.ndarray  # (M, F)
    base_forces: np.ndarray  # (M, A, 3)


def _batched(frames: Frames, batch_size: int):
    if len(frames) <= batch_size:  # one MD step: no copy
        yield frames
        return
    for s in range(0, len(frames), batch_size):
        yield frames.subset(np.arange(s, min(s + batch_size, len(frames))))


def _stack(parts: list[Prediction]) -> Prediction:
    cat = np.concatenate
    return Prediction(
        None if parts[0].energy is None else cat([p.energy for p in parts]),
        cat([p.forces for p in parts]),
        cat([p.base_energy for p in parts], axis=1),
        cat([p.base_forces for p in parts], axis=1),
    )


def base_predictions(
    bases: Sequence[B.Potential], frames: Frames, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Every base's energies ``(M, F)`` and forces ``(M, A, 3)``. Torch bases go through their
    differentiable ``energy()`` and one backward pass (for one structure per MD step this skips
    the packages' own inference wrappers, several times faster for DeePMD's ``DeepPot``); a base
    without one (NEP) uses ``predict``."""
    energies, forces = [], []
    for pot in bases:
        if not B.is_differentiable(pot):  # no torch energy (NEP): its own predict
            e, f = pot.predict(frames, batch_size)
        else:
            parts = []
            for fr in _batched(frames, batch_size):
                pos = torch.as_tensor(fr.positions, dtype=torch.float64).requires_grad_(True)
                e, f = B.energy_and_forces(pot, pos, *B.frame_tensors(fr))
                parts.append((e.detach().numpy(), f.detach().numpy()))
            e, f = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        energies.append(e)
        forces.append(f)
    return np.stack(energies), np.stack(forces)


class ConservEnsemble:
    """Ensemble-conserv over live bases: a :class:`~elmlff.bases.Potential` whose ``energy()`` is
    θ(E_m(x), F_m(x), x), so its forces, HVPs and MD are exact derivatives of one energy."""

    family = "meta"  # no base family's record: differentiable by the Protocol's contract
    #: atoms per prediction batch at most: the graph through eight live bases kept for the
    #: second derivatives took ~3 MB per atom (128 methanol/Cu frames: 22 GB, killed for memory)
    max_batch_atoms = 1024

    def __init__(self, theta, bases: Sequence[B.Potential], name: str = "ensemble_conserv"):
        self.theta, self.bases, self.name = theta, list(bases), name
        self.species = list(theta.species)
        self.cutoff = float(theta.params["cutoff"])

    def _structure(self, positions, numbers, n_atoms, cell, pbc) -> MetaBatch:
        fr = B.frames_from_tensors(positions, numbers, n_atoms, cell, pbc)
        check_species(self.bases, self.species, fr.numbers)
        m = len(self.bases)
        zeros_e, zeros_f = np.zeros((m, len(fr))), np.zeros((m, len(fr.numbers), 3))
        b = batch_from_frames(fr, zeros_e, zeros_f, self.cutoff)
        return b.to(positions.device)

    def outputs(self, positions, numbers, n_atoms, cell, pbc, create_graph: bool = True):
        """(E (F,), E_m (F, M), F_m (A, M, 3)) as functions of ``positions``."""
        if not positions.requires_grad:  # the base forces need a graph to x even so
            positions = positions.detach().requires_grad_(True)
        b = self._structure(positions, numbers, n_atoms, cell, pbc)
        graph = create_graph or bool(self.theta.params["use_forces"])
        em, fm = base_outputs(self.bases, positions, numbers, n_atoms, cell, pbc, graph)
        with self.theta.frozen():  # inference: θ's weights are constants
            return self.theta(b, positions, em, fm), em, fm

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        return self.outputs(positions, numbers, n_atoms, cell, pbc)[0]

    @property
    def chain_rule(self) -> bool:
        """Whether forces can come from one backward pass per base (Eq. 7 over bases whose
        forces are −dE_m/dx): θ reads no base forces, so −dE/dx = Σ_m (∂θ/∂E_m) F_m − ∂θ/∂x."""
        return not self.theta.params["use_forces"] and not any(
            B.has_direct_forces(p) for p in self.bases
        )

    def _chain_rule_forces(self, pos, numbers, n_atoms, cell, pbc):
        """(E, F, E_m, F_m) of Eq. 7 by the chain rule: each base's own energy and forces (one
        forward and one backward pass, as its own MD step), then θ with the base energies as
        leaves; the same −dE/dx as differentiating E through every base, without a second
        backward pass through the bases."""
        b = self._structure(pos, numbers, n_atoms, cell, pbc)
        em, fm = base_outputs(self.bases, pos, numbers, n_atoms, cell, pbc, create_graph=False)
        em = em.detach().requires_grad_(True)
        x = pos.detach().requires_grad_(True)
        with self.theta.frozen():
            e = self.theta(b, x, em, fm.detach())
        g_x, g_e = torch.autograd.grad(e.sum(), (x, em))  # ∂θ/∂x (explicit), ∂E/∂E_m
        f = torch.einsum("am,amk->ak", g_e[b.batch], fm) - g_x
        return e.detach(), f, em.detach(), fm.detach()

    def predict_all(self, frames: Frames, batch_size: int = 64) -> Prediction:
        """Energies and forces of ``frames``, ``batch_size`` frames at a time and at most
        :attr:`max_batch_atoms` atoms (one frame at least)."""
        parts = []
        dev = next(self.theta.parameters()).device  # the bases were loaded on it too
        largest = int(np.max(frames.n_atoms)) if len(frames) else 1
        batch_size = max(1, min(batch_size, self.max_batch_atoms // largest))
        for fr in _batched(frames, batch_size):
            pos = torch.as_tensor(fr.positions, dtype=torch.float64, device=dev)
            pos.requires_grad_(True)
            rest = [t.to(dev) for t in B.frame_tensors(fr)]
            if self.chain_rule:
                e, f, em, fm = self._chain_rule_forces(pos, *rest)
            else:
                e, em, fm = self.outputs(pos, *rest, create_graph=False)
                (g,) = torch.autograd.grad(e.sum(), pos)
                f = -g
            parts.append(
                Prediction(
                    e.detach().cpu().numpy(),
                    f.detach().cpu().numpy(),
                    em.detach().cpu().numpy().T,
                    fm.detach().cpu().numpy().transpose(1, 0, 2),
                )
            )
        return _stack(parts)

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_all(frames, batch_size)
        return p.energy, p.forces


class DirectEnsemble:
    """Ensemble-direct over live bases (forces only). An amortized model
    (``params["amortized"]``) takes ``inputs``, every base it was trained over in input order,
    and runs with only ``bases`` present: any subset of them, no retraining."""

    def __init__(
        self,
        model,
        bases: Sequence[B.Potential],
        name: str = "ensemble_direct",
        inputs: Sequence[str] | None = None,
    ):
        self.model, self.bases, self.name = model, list(bases), name
        self.species = list(model.species)
        self.cutoff = float(model.params["cutoff"])
        self.inputs = list(inputs) if inputs is not None else None
        if self.inputs is not None:
            missing = [p.name for p in self.bases if p.name not in self.inputs]
            if missing or not model.params.get("amortized"):
                raise ElmlffError(
                    f"{name}: bases {missing or [p.name for p in self.bases]} are not inputs "
                    f"{self.inputs} of an amortized model",
                    "load a subset of the amortized model's own bases",
                )

    def forces_from(self, frames: Frames, base_energy: np.ndarray, base_forces: np.ndarray):
        """Forces (A, 3) from given base predictions ``(M, F)``, ``(M, A, 3)`` (an amortized
        model: of its present bases, in ``bases`` order)."""
        check_species([], self.species, frames.numbers)
        mask = None
        if self.inputs is not None:  # absent bases: zero inputs, masked out
            at = [self.inputs.index(p.name) for p in self.bases]
            full_e = np.zeros((len(self.inputs), *np.shape(base_energy)[1:]))
            full_f = np.zeros((len(self.inputs), *np.shape(base_forces)[1:]))
            full_e[at], full_f[at] = base_energy, base_forces
            base_energy, base_forces = full_e, full_f
            mask = S.mask([p.name for p in self.bases], self.inputs)
        w = next(self.model.parameters())
        b = batch_from_frames(frames, base_energy, base_forces, self.cutoff, dtype=w.dtype)
        if w.device.type != "cpu":
            b = b.to(w.device)
        if mask is not None:
            b.extra["mask"] = torch.as_tensor(mask, device=w.device)
        with torch.no_grad():
            return self.model(b).double().cpu().numpy()

    def predict_all(self, frames: Frames, batch_size: int = 64) -> Prediction:
        check_species(self.bases, self.species, frames.numbers)
        em, fm = base_predictions(self.bases, frames, batch_size)
        return Prediction(None, self.forces_from(frames, em, fm), em, fm)


class LinearEnsemble:
    """A baseline (best base, mean, weighted mean, linear stacking) over live bases; a single
    base is the one-hot case."""

    def __init__(self, combiner: LinearCombiner, bases: Sequence[B.Potential]):
        self.combiner, self.bases, self.name = combiner, list(bases), combiner.name
        self.species = sorted(set.intersection(*(set(p.species) for p in self.bases)))

    def predict_all(self, frames: Frames, batch_size: int = 64) -> Prediction:
        check_species(self.bases, self.species, frames.numbers)
        em, fm = base_predictions(self.bases, frames, batch_size)
        e, f = self.combiner.apply(em, fm, frames.n_atoms, frames.numbers)
        return Prediction(e, f, em, fm)
