"""Base MLFFs behind one small Protocol, one file per family, and a registry.

A *family* (schnetpack, deepmd, nequip, ...) knows how to train a base from config and load it
back as a :class:`Potential`. A `Potential` predicts energies and forces for `Frames` and exposes
a differentiable torch entry point ``energy(...)`` so a meta-model can take gradients (forces,
Hessian-vector products) through the base with ``torch.autograd``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

if TYPE_CHECKING:  # torch is imported where it is used: Snakemake parses this module
    import torch

#: family name -> "module:Class" (imported lazily, so a missing optional package only
#: matters to the family that needs it)
FAMILIES: dict[str, str] = {
    "schnetpack": "elmlff.bases.schnetpack:SchNetPackFamily",
    "deepmd": "elmlff.bases.deepmd:DeePMDFamily",
    "nequip": "elmlff.bases.nequip:NequIPFamily",
    "nep": "elmlff.bases.nep:NEPFamily",
}

#: the distribution each family's models come from (for provenance and tables)
PACKAGES: dict[str, str] = {
    "schnetpack": "schnetpack",
    "deepmd": "deepmd-kit",
    "nequip": "nequip",
    "nep": "calorine",
}

INFO_FILE = "base.json"


@dataclass
class BaseSpec:
    """One base model as the config defines it."""

    name: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Potential(Protocol):
    """A trained base, ready to predict."""

    name: str
    species: list[int]

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(energy (F,) in eV, forces (A, 3) in eV/Å) for every frame."""
        ...

    def energy(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        n_atoms: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
    ) -> torch.Tensor:
        """Differentiable total energy (F,) in eV of frames on a flat atom axis.

        ``positions (A, 3)`` may require grad (or be a function of other tensors); the result
        keeps the graph, so ``torch.autograd.grad(..., create_graph=True)`` gives forces and
        Hessian-vector products through the base.
        """
        ...


class Family(Protocol):
    """Trains and loads the bases of one model family."""

    name: str
    #: conda env file (under envs/) that the family's rules run in on a cluster
    conda_env: str

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        """Train on ``train``, early-stop and pick the checkpoint on ``val`` only; write the
        model under ``outdir`` and return facts for ``base.json`` (epochs, best val loss...)."""
        ...

    def load(self, outdir: Path, device: str = "cpu") -> Potential:
        """Load a base trained by :meth:`train`."""
        ...


def get_family(name: str) -> Family:
    """The family registered under ``name``."""
    if name not in FAMILIES:
        raise ElmlffError(f"unknown base family {name!r}", f"use one of {sorted(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


#: executables a family needs on PATH that no pip install provides
EXECUTABLES: dict[str, tuple[str, str]] = {
    "nep": ("nep", "GPUMD's `nep` executable is not on PATH (install GPUMD to train NEP)"),
}


def family_available(name: str) -> tuple[bool, str]:
    """(available, why not): cheap, imports nothing of the family (parse-time safe)."""
    exe, why = EXECUTABLES.get(name, (None, ""))
    if exe is not None and shutil.which(exe) is None:
        return False, why
    return True, ""


def write_info(outdir: Path, info: dict[str, Any]) -> None:
    from elmlff.io import atomic_write_text

    atomic_write_text(Path(outdir) / INFO_FILE, json.dumps(info, indent=1, default=str) + "\n")


def read_info(outdir: Path) -> dict[str, Any]:
    p = Path(outdir) / INFO_FILE
    if not p.exists():
        raise ElmlffError(
            f"no trained base at {outdir} ({INFO_FILE} missing)",
            "train the base first (snakemake runs the train rule)",
        )
    return json.loads(p.read_text())


def checkpoint(outdir: Path, filename: str) -> tuple[dict[str, Any], Path]:
    """(``base.json`` info, path of the model file) of a trained base; a clear error if the
    model file is missing."""
    info = read_info(outdir)
    path = Path(outdir) / filename
    if not path.exists():
        raise ElmlffError(
            f"base '{info.get('name')}': checkpoint {path} missing",
            "retrain the base (delete its folder and rerun snakemake)",
        )
    return info, path


@contextlib.contextmanager
def scratch(outdir: Path, prefix: str) -> Iterator[Path]:
    """An absolute scratch directory inside ``outdir`` for a family's training files
    (packages run there as subprocesses), removed afterwards."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=outdir)).resolve()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(outdir: Path, device: str = "cpu") -> Potential:
    """Load any trained base from its directory (the family is read from ``base.json``)."""
    info = read_info(outdir)
    return get_family(info["family"]).load(Path(outdir), device=device)


def check_species(name: str, species: list[int], numbers: np.ndarray) -> None:
    """Error if the atomic ``numbers`` hold elements the base never saw in training."""
    unseen = sorted({int(z) for z in np.unique(numbers)} - set(species))
    if unseen:
        raise ElmlffError(
            f"base '{name}' was trained on elements Z={species} but the frames contain Z={unseen}",
            "predict only data with the training elements, or retrain the base on data with them",
        )


def frames_from_tensors(positions, numbers, n_atoms, cell, pbc, name: str = "frames") -> Frames:
    """The structures behind :meth:`Potential.energy`'s tensors (detached, no labels), for
    neighbour lists and species checks."""
    return Frames(
        numbers=numbers.detach().cpu().numpy(),
        positions=positions.detach().cpu().numpy(),
        n_atoms=n_atoms.cpu().numpy(),
        cell=cell.detach().cpu().numpy(),
        pbc=pbc.cpu().numpy(),
        energy=np.zeros(len(n_atoms)),
        forces=np.zeros((len(numbers), 3)),
        name=name,
    )


def forces(pot: Potential, frames: Frames, create_graph: bool = False) -> torch.Tensor:
    """−dE/dx through :meth:`Potential.energy` (A, 3), for tests and conservative metas."""
    import torch

    pos = torch.as_tensor(frames.positions, dtype=torch.float64).requires_grad_(True)
    e = pot.energy(pos, *frame_tensors(frames))
    (g,) = torch.autograd.grad(e.sum(), pos, create_graph=create_graph)
    return -g


def hvp(pot: Potential, frames: Frames, v: np.ndarray) -> np.ndarray:
    """Hessian-vector products H·v (A, 3), H = ∂²E/∂x∂x, by double backpropagation through
    :meth:`Potential.energy` (no Hessian is formed; frames are independent blocks)."""
    import torch

    pos = torch.as_tensor(frames.positions, dtype=torch.float64).requires_grad_(True)
    e = pot.energy(pos, *frame_tensors(frames))
    (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.as_tensor(v, dtype=g.dtype)).sum(), pos)
    return hv.detach().cpu().numpy()


def hvp_directions(n_atoms: np.ndarray, seed: int) -> np.ndarray:
    """Seeded random directions (A, 3), unit norm per frame: the same for every base."""
    v = np.random.default_rng(seed).normal(size=(int(np.sum(n_atoms)), 3))
    frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
    norm = np.sqrt(np.bincount(frame, (v**2).sum(axis=1)))
    return v / norm[frame, None]


def frame_tensors(frames: Frames) -> tuple[torch.Tensor, ...]:
    """(numbers, n_atoms, cell, pbc) of ``frames`` as tensors, the arguments of
    :meth:`Potential.energy` after the positions."""
    import torch

    return (
        torch.as_tensor(frames.numbers),
        torch.as_tensor(frames.n_atoms),
        torch.as_tensor(frames.cell),
        torch.as_tensor(frames.pbc),
    )
