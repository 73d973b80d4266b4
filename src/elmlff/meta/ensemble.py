"""Ensembles at inference: bases evaluated live, combined by a meta-model or a baseline, and an
ASE calculator over any of them.

Every ensemble gives :class:`Prediction`: the combined forces (and energy where it is defined:
Ensemble-conserv and the linear baselines have one, Ensemble-direct has none) plus every base's
energy and forces, from which the base disagreement is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from elmlff import bases as B
from elmlff.baselines import LinearCombiner
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.meta.data import MetaBatch, batch_from_frames
from elmlff.meta.live import base_outputs, check_species, load_bases


@dataclass
class Prediction:
    energy: np.ndarray | None  # (F,) eV, None where the ensemble defines no energy
    forces: np.ndarray  # (A, 3) eV/Å
    base_energy: np.ndarray  # (M, F)
    base_forces: np.ndarray  # (M, A, 3)


def force_disagreement(base_forces: np.ndarray, n_atoms: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per frame, the mean and max over atoms of the per-atom force standard deviation across
    bases, sqrt(mean_m |F_im - <F_i>|^2) (deepmd-kit's model deviation, eV/Å)."""
    dev = base_forces - base_forces.mean(axis=0)
    sigma = np.sqrt((dev**2).sum(axis=-1).mean(axis=0))  # (A,)
    frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
    mean = np.bincount(frame, sigma, minlength=len(n_atoms)) / n_atoms
    mx = np.full(len(n_atoms), -np.inf)
    np.maximum.at(mx, frame, sigma)
    return mean, mx


def _batched(frames: Frames, batch_size: int):
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
        try:
            parts = []
            for fr in _batched(frames, batch_size):
                pos = torch.as_tensor(fr.positions, dtype=torch.float64).requires_grad_(True)
                e = pot.energy(pos, *B.frame_tensors(fr))
                (g,) = torch.autograd.grad(e.sum(), pos)
                parts.append((e.detach().numpy(), -g.numpy()))
            e, f = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        except ElmlffError:  # no differentiable energy (NEP)
            e, f = pot.predict(frames, batch_size)
        energies.append(e)
        forces.append(f)
    return np.stack(energies), np.stack(forces)


class ConservEnsemble:
    """Ensemble-conserv over live bases: a :class:`~elmlff.bases.Potential` whose ``energy()`` is
    θ(E_m(x), F_m(x), x), so its forces, HVPs and MD are exact derivatives of one energy."""

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
        return self.theta(b, positions, em, fm), em, fm

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        return self.outputs(positions, numbers, n_atoms, cell, pbc)[0]

    def predict_all(self, frames: Frames, batch_size: int = 64) -> Prediction:
        parts = []
        for fr in _batched(frames, batch_size):
            pos = torch.as_tensor(fr.positions, dtype=torch.float64).requires_grad_(True)
            e, em, fm = self.outputs(pos, *B.frame_tensors(fr), create_graph=False)
            (g,) = torch.autograd.grad(e.sum(), pos)
            parts.append(
                Prediction(
                    e.detach().numpy(),
                    -g.numpy(),
                    em.detach().numpy().T,
                    fm.detach().numpy().transpose(1, 0, 2),
                )
            )
        return _stack(parts)

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_all(frames, batch_size)
        return p.energy, p.forces


class DirectEnsemble:
    """Ensemble-direct over live bases (forces only)."""

    def __init__(self, model, bases: Sequence[B.Potential], name: str = "ensemble_direct"):
        self.model, self.bases, self.name = model, list(bases), name
        self.species = list(model.species)
        self.cutoff = float(model.params["cutoff"])

    def forces_from(self, frames: Frames, base_energy: np.ndarray, base_forces: np.ndarray):
        """Forces (A, 3) from given base predictions ``(M, F)``, ``(M, A, 3)``."""
        check_species([], self.species, frames.numbers)
        b = batch_from_frames(frames, base_energy, base_forces, self.cutoff)
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            return self.model(b.to("cpu", dtype)).double().numpy()

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
        e, f = self.combiner.apply(em, fm, frames.n_atoms)
        return Prediction(e, f, em, fm)


class EnsembleCalculator(Calculator):
    """ASE calculator for any ensemble (meta-model, baseline or single base).

    ``results`` holds ``forces``, ``energy`` where defined, and per step the base disagreement
    ``force_std_mean`` / ``force_std_max`` (eV/Å), ``base_energies`` (M,) and ``base_forces``
    (M, N, 3), for MD monitors and uncertainty; with two or more bases also ``uncertainty``, the
    ensemble force deviation U of :mod:`elmlff.uq.metrics` with ``uq_weights`` (U1 when they
    are ∝ 1/RMSE, U0 when uniform, the default).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def __init__(self, ensemble, uq_weights: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ensemble = ensemble
        self.uq_weights = uq_weights
        self.has_energy = not isinstance(ensemble, DirectEnsemble)
        if not self.has_energy:
            self.implemented_properties = ["forces"]

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        fr = Frames(
            numbers=self.atoms.numbers,
            positions=self.atoms.positions,
            n_atoms=[len(self.atoms)],
            cell=np.asarray(self.atoms.cell[:])[None],
            pbc=np.asarray(self.atoms.pbc)[None],
            energy=np.zeros(1),
            forces=np.zeros((len(self.atoms), 3)),
        )
        p = self.ensemble.predict_all(fr)
        std_mean, std_max = force_disagreement(p.base_forces, fr.n_atoms)
        self.results = {
            "forces": p.forces,
            "base_energies": p.base_energy[:, 0],
            "base_forces": p.base_forces,
            "force_std_mean": float(std_mean[0]),
            "force_std_max": float(std_max[0]),
        }
        m = len(p.base_forces)
        if m >= 2:
            from elmlff.uq.metrics import ensemble_uncertainty

            w = np.full(m, 1.0 / m) if self.uq_weights is None else self.uq_weights
            u = ensemble_uncertainty(p.base_forces, fr.n_atoms, w)
            self.results["uncertainty"] = float(u.U1.iloc[0])
        if p.energy is not None:
            self.results["energy"] = self.results["free_energy"] = float(p.energy[0])
        elif "energy" in properties:
            raise PropertyNotImplementedError(
                f"{self.ensemble.name} predicts forces only (no energy)"
            )


def base_dirs(dataset_dir: Path, models: Sequence[str]) -> dict[str, dict[str, Path]]:
    """{model: {fit: model directory}} of trained bases under ``results/{dataset}/bases``."""
    out = {}
    for m in models:
        fits = {d.parent.name: d for d in sorted(Path(dataset_dir, "bases", m).glob("*/model"))}
        if not fits:
            raise ElmlffError(
                f"no trained base '{m}' under {dataset_dir}/bases", "run the campaign first"
            )
        out[m] = fits
    return out


def load_ensemble(dataset_dir: Path, name: str, subset: str = "all", device: str = "cpu"):
    """Any trained model of a campaign by name, ready for :class:`EnsembleCalculator`: a base,
    a baseline (over the whole ensemble from ``baselines.json``; over another ``subset`` fitted
    here from the store, as evaluation does) or a meta-model (``metas/{name}/{subset}/model``,
    or the subset study's ``subsets/{name}/k{k}``)."""
    import json

    from elmlff import meta, store
    from elmlff.baselines import BASELINES
    from elmlff.data.split import Split
    from elmlff.pipeline import combiner_from_json, fit_baselines
    from elmlff.subsets import resolve

    dataset_dir = Path(dataset_dir)
    metadir = dataset_dir / "metas" / name / subset / "model"
    group = dataset_dir / "subsets" / name / f"k{len(subset.split('+'))}"
    if metadir.exists() or (subset != "all" and group.exists()):
        from elmlff.study import load_subset_model

        if metadir.exists():
            model, models = meta.load_model(metadir, device)
        else:
            model, models = load_subset_model(group, subset, device)
        pots = load_bases(base_dirs(dataset_dir, models), models, device)
        cls = ConservEnsemble if model.kind == "conserv" else DirectEnsemble
        return cls(model, pots, name)
    if name in BASELINES:
        if subset == "all" and (dataset_dir / "baselines.json").exists():
            c = combiner_from_json(
                json.loads((dataset_dir / "baselines.json").read_text())["baselines"][name]
            )
        else:
            ds = store.open_store(dataset_dir / "predictions.zarr")
            models = resolve(subset, ds["model"].values.astype(str).tolist())
            split = Split.load(dataset_dir / "split.json")
            c = {b.name: b for b in fit_baselines(ds, split, models)}[name]
        return LinearEnsemble(c, load_bases(base_dirs(dataset_dir, c.models), c.models, device))
    if (dataset_dir / "bases" / name).exists():
        pots = load_bases(base_dirs(dataset_dir, [name]), [name], device)
        return LinearEnsemble(LinearCombiner(name, [name], np.ones(1)), pots)
    raise ElmlffError(
        f"no model '{name}' (subset '{subset}') in {dataset_dir}",
        f"name a trained base, a baseline {list(BASELINES)} or a trained meta-model",
    )
