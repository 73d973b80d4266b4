"""What a meta-model learns from: base predictions + reference labels + cutoff graphs, batched.

:class:`MetaData` holds one data set's frames with the bases' (out-of-sample) predictions from
the store and builds the cutoff graph of every frame once; :meth:`MetaData.batch` then cuts
any set of frames (and any subset of bases) out of it without rebuilding anything, so many
meta-models (k-subsets, ablations) share one graph construction.

Shapes (M bases, F frames, A atoms, E edges of the batch):
``base_energy (F, M)`` eV, ``base_forces (A, M, 3)`` eV/Å, ``ref_energy (F,)``,
``ref_forces (A, 3)``, ``positions (A, 3)`` Å, ``batch (A,)`` local frame of each atom,
``src``/``dst (E,)`` local atom indices, ``shift (E, 3)`` Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.meta.graph import Graph, neighbour_graph


def version_key(*tensors: torch.Tensor) -> tuple:
    """What identifies the current values of ``tensors`` (storage and in-place version): a
    model's cache of what it derives from its weights is valid while this is unchanged."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


@dataclass
class Stats:
    """Scales fitted on the meta-training frames (stored with the model)."""

    force_rms: float  # RMS of the reference force components, eV/Å
    energy_mu: float  # mean reference energy per atom, eV/atom
    energy_sigma: float  # its standard deviation (floored), eV/atom

    @staticmethod
    def fit(frames: Frames) -> Stats:
        e = frames.energy / frames.n_atoms
        return Stats(
            force_rms=float(np.sqrt(np.mean(frames.forces**2))) or 1.0,
            energy_mu=float(e.mean()),
            energy_sigma=float(max(e.std(), 1e-3)),
        )


@dataclass
class MetaBatch:
    """A batch of frames as tensors (see the module docstring for shapes)."""

    frames: np.ndarray
    numbers: torch.Tensor
    positions: torch.Tensor
    n_atoms: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    shift: torch.Tensor
    base_energy: torch.Tensor
    base_forces: torch.Tensor
    ref_energy: torch.Tensor
    ref_forces: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> MetaBatch:
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device)
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return MetaBatch(**out)


def batch_from_frames(
    frames: Frames,
    base_energy: np.ndarray,
    base_forces: np.ndarray,
    cutoff: float,
    graph: Graph | None = None,
    index: np.ndarray | None = None,
    dtype: torch.dtype = torch.float64,
) -> MetaBatch:
    """A :class:`MetaBatch` of all ``frames`` (graph built here unless given), its floats as
    ``dtype``; base arrays are ``(M, F)`` and ``(M, A, 3)`` as in the store."""
    g = graph if graph is not None else neighbour_graph(frames, cutoff)
    t = torch.as_tensor
    return MetaBatch(
        frames=np.arange(len(frames)) if index is None else np.asarray(index),
        numbers=t(frames.numbers, dtype=torch.long),
        positions=t(frames.positions, dtype=dtype),
        n_atoms=t(frames.n_atoms, dtype=torch.long),
        batch=t(frames.frame_of_atom, dtype=torch.long),
        cell=t(frames.cell, dtype=dtype),
        pbc=t(frames.pbc, dtype=torch.bool),
        src=t(g.src, dtype=torch.long),
        dst=t(g.dst, dtype=torch.long),
        shift=t(g.shift, dtype=dtype),
        base_energy=t(np.asarray(base_energy).T, dtype=dtype).contiguous(),
        base_forces=t(np.asarray(base_forces).transpose(1, 0, 2), dtype=dtype).contiguous(),
        ref_energy=t(frames.energy, dtype=dtype),
        ref_forces=t(frames.forces, dtype=dtype),
    )


class MetaData:
    """Frames + every base's predictions + the cutoff graph of every frame, built once."""

    def __init__(
        self,
        frames: Frames,
        models: list[str],
        base_energy: np.ndarray,
        base_forces: np.ndarray,
        cutoff: float,
    ) -> None:
        if base_energy.shape != (len(models), len(frames)) or base_forces.shape != (
            len(models),
            len(frames.forces),
            3,
        ):
            raise ElmlffError(
                f"base predictions {base_energy.shape}/{base_forces.shape} do not match "
                f"{len(models)} models x {len(frames)} frames ({len(frames.forces)} atoms)",
                "rebuild predictions.zarr (snakemake reruns merge_store)",
            )
        for what, arr in (("energies", base_energy), ("forces", base_forces)):
            if not np.isfinite(arr).all():
                bad = sorted({models[m] for m in np.argwhere(~np.isfinite(arr))[:, 0]})
                raise ElmlffError(
                    f"base {what} of {bad} contain NaN/inf", "retrain or re-predict those bases"
                )
        self.frames, self.models, self.cutoff = frames, list(models), float(cutoff)
        self.base_energy, self.base_forces = base_energy, base_forces
        self.graph = neighbour_graph(frames, cutoff)
        frame_of_edge = frames.frame_of_atom[self.graph.dst]
        self._edge_start = np.searchsorted(frame_of_edge, np.arange(len(frames)))
        self._edge_end = np.searchsorted(frame_of_edge, np.arange(len(frames)), side="right")

    @staticmethod
    def from_store(ds, cutoff: float, models: list[str] | None = None) -> MetaData:
        """From an opened ``predictions.zarr`` (all frames; pick roles with :meth:`batch`)."""
        from elmlff import keys, store

        all_models = ds["model"].values.astype(str).tolist()
        models = all_models if models is None else list(models)
        missing = [m for m in models if m not in all_models]
        if missing:
            raise ElmlffError(
                f"bases {missing} are not in the prediction store (it has {all_models})",
                "choose a subset of the store's bases or rerun merge_store with them",
            )
        sel = [all_models.index(m) for m in models]
        return MetaData(
            store.frames_from_dataset(ds),
            models,
            ds[keys.BASE_ENERGY].values[sel],
            ds[keys.BASE_FORCES].values[sel],
            cutoff,
        )

    def model_index(self, models: list[str]) -> list[int]:
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ElmlffError(f"bases {missing} not loaded", f"use some of {self.models}")
        return [self.models.index(m) for m in models]

    def batch(self, idx: np.ndarray, models: list[str] | None = None) -> MetaBatch:
        """Frames ``idx`` (store indices) with the bases ``models`` (default all), reusing the
        graph built at construction."""
        idx = np.asarray(idx, dtype=np.int64)
        m = self.model_index(models) if models is not None else list(range(len(self.models)))
        atoms = self.frames.atom_index(idx)
        local = np.full(len(self.frames.numbers), -1, dtype=np.int64)
        local[atoms] = np.arange(len(atoms))
        edges = np.concatenate(
            [np.arange(self._edge_start[f], self._edge_end[f]) for f in idx] or [np.zeros(0, int)]
        ).astype(np.int64)
        g = Graph(
            local[self.graph.src[edges]], local[self.graph.dst[edges]], self.graph.shift[edges]
        )
        sub = self.frames.subset(idx)
        return batch_from_frames(
            sub, self.base_energy[m][:, idx], self.base_forces[m][:, atoms], self.cutoff, g, idx
        )


def species_index(species: list[int]) -> torch.Tensor:
    """Z -> row of the species embedding (-1 for elements never seen)."""
    t = torch.full((max(species) + 1,), -1, dtype=torch.long)
    t[torch.as_tensor(species)] = torch.arange(len(species))
    return t
