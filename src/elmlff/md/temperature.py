"""The temperature a data set's frames were sampled at, from the frames themselves: the
configurational temperature (Rugh; Butler et al., J. Chem. Phys. 109, 6519 (1998))

    k_B T_conf = ⟨|∇U|²⟩ / ⟨∇²U⟩ = ⟨|F|²⟩ / ⟨tr H⟩,

exact for frames drawn from the canonical ensemble of the potential U, whatever their momenta.
|F|² is summed over the atoms of each frame's *reference* forces; tr H, the Laplacian of the
energy, comes from a trained base with a differentiable energy, by Hutchinson's estimator
tr H = E[vᵀHv] over random Rademacher vectors v (entries ±1), each vᵀHv one Hessian-vector
product (:func:`elmlff.bases.hvp`, double backpropagation; no Hessian is formed). Both averages
run over the same frames, so T = Σ|F|² / (k_B Σ tr H).

The MD stage compares this estimate with its configured temperature: MD far hotter or colder
than the data measures the temperature gap, not the models.
"""

from __future__ import annotations

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

#: Boltzmann's constant in eV/K (ASE's value)
KB_EV_PER_K = 8.617333262e-05


def hessian_trace(
    pot, frames: Frames, n_probes: int = 8, seed: int = 0, max_atoms: int = 1024
) -> np.ndarray:
    """(F,) Hutchinson estimates of tr H = ∇²E of every frame through ``pot.energy`` (eV/Å²):
    the mean of vᵀHv over ``n_probes`` seeded Rademacher vectors v, frames batched by at most
    ``max_atoms`` atoms."""
    from elmlff.bases import hvp

    if n_probes < 1:
        raise ElmlffError(f"n_probes = {n_probes}", "use at least one probe vector")
    rng = np.random.default_rng(seed)
    n = np.asarray(frames.n_atoms)
    frame_of_atom = np.repeat(np.arange(len(n)), n)
    out = np.zeros(len(n))
    batches, batch, atoms = [], [], 0
    for f, k in enumerate(n.tolist()):
        if batch and atoms + k > max_atoms:
            batches.append(batch)
            batch, atoms = [], 0
        batch.append(f)
        atoms += k
    if batch:
        batches.append(batch)
    for b in batches:
        sub = frames.subset(b)
        a = frames.atom_index(b)
        for _ in range(n_probes):
            v = rng.choice([-1.0, 1.0], size=(len(a), 3))
            vhv = np.sum(v * hvp(pot, sub, v), axis=1)
            out += np.bincount(frame_of_atom[a], vhv, minlength=len(n))
    return out / n_probes


def estimate_temperature(
    pot,
    frames: Frames,
    n_probes: int = 8,
    max_frames: int | None = 256,
    seed: int = 0,
) -> float:
    """Configurational temperature (K) of ``frames``: Σ|F|² / (k_B Σ tr H), with F the frames'
    reference forces and tr H from :func:`hessian_trace` through the differentiable base
    ``pot`` (any object with the :class:`~elmlff.bases.Potential` ``energy``). At most
    ``max_frames`` frames are used (a seeded random choice; None: all)."""
    from elmlff.bases import is_differentiable

    if not is_differentiable(pot):
        raise ElmlffError(
            f"base '{getattr(pot, 'name', pot)}' has no differentiable energy",
            "estimate the temperature with a torch base (schnetpack, deepmd, nequip)",
        )
    if len(frames) == 0:
        raise ElmlffError("no frames to estimate a temperature from", "pass frames with forces")
    rng = np.random.default_rng(seed)
    if max_frames is not None and len(frames) > max_frames:
        frames = frames.subset(np.sort(rng.choice(len(frames), max_frames, replace=False)))
    f2 = float(np.sum(np.asarray(frames.forces) ** 2))
    trace = float(np.sum(hessian_trace(pot, frames, n_probes, seed)))
    if not np.isfinite(f2) or not np.isfinite(trace) or trace <= 0:
        raise ElmlffError(
            f"the Hessian trace of base '{getattr(pot, 'name', pot)}' over {len(frames)} frames "
            f"is {trace:.3g} eV/Å² (not positive): no temperature can be read from it",
            "use a better-trained base",
        )
    return f2 / (KB_EV_PER_K * trace)
