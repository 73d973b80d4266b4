"""Base MLFFs behind one small Protocol, one file per family, and one record per family.

A *family* (schnetpack, deepmd, nequip, ...) knows how to train a base from config and load it
back as a :class:`Potential`. A `Potential` predicts energies and forces for `Frames` and, where
its family's record says it is differentiable, exposes a torch entry point ``energy(...)`` so a
meta-model can take gradients (forces, Hessian-vector products) through the base with
``torch.autograd``.

:data:`FAMILIES` holds one :class:`FamilyRecord` per family: its adapter, the distribution its
models come from, the executable it needs, whether it is differentiable, its conda env and its
cluster resources. The config check, the rules (``workflow/rules/bases.smk``), provenance and
the tests all read these records; adding a family is one adapter file, one record, one env
file and one test class.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.layout import BASE_INFO

if TYPE_CHECKING:  # torch is imported where it is used: Snakemake parses this module
    import torch


@dataclass(frozen=True)
class Resources:
    """What one rule of a family asks a cluster for (the rule's ``resources:``). Memory and
    runtime are those of the first attempt; attempt k asks k times as much."""

    gpu: int
    cpus_per_gpu: int
    mem_mb: int
    runtime: int  # minutes

    def rule(self) -> dict[str, int | Callable[..., int]]:
        """The rule's resources, memory and runtime growing with each attempt."""
        mem_mb, runtime = self.mem_mb, self.runtime
        return {
            "gpu": self.gpu,
            "cpus_per_gpu": self.cpus_per_gpu,
            "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
            "runtime": lambda wildcards, attempt: runtime * attempt,
        }


#: one GPU per training and per prediction; a prediction is small and travels in a group job
TRAIN_RESOURCES = Resources(gpu=1, cpus_per_gpu=4, mem_mb=16000, runtime=480)
PREDICT_RESOURCES = Resources(gpu=1, cpus_per_gpu=2, mem_mb=8000, runtime=60)


@dataclass(frozen=True)
class FamilyRecord:
    """Everything the project knows about one model family, in one place."""

    #: the config's ``family:`` value; also ``envs/{name}.yaml`` and the rules
    #: ``train_{name}`` / ``predict_{name}``
    name: str
    #: ``"module:Class"`` of the family's adapter (imported lazily, so a missing optional
    #: package only matters to the family that needs it)
    entry: str
    #: the distribution its models come from (provenance, tables); its env must install it
    distribution: str
    #: whether its potentials have a differentiable torch ``energy()`` (False for NEP)
    differentiable: bool
    #: whether its forces are a direct output (``direct_forces()``), not −dE/dx of its energy:
    #: every live path (metas, MD, the calculator) then uses the direct forces, as the store does
    direct_forces: bool = False
    #: whether its models come pretrained inside their package's wheel: its "train" rule
    #: only records provenance (:mod:`elmlff.bases.pretrained`)
    pretrained: bool = False
    #: whether its potentials give a stress (``predict_stress``: energy differentiable in the
    #: cell as well as the positions)
    stress: bool = False
    #: a Python package that must be importable (an optional install); checked without
    #: importing it
    module: str | None = None
    #: a program that must be on PATH and that no pip install provides
    executable: str | None = None
    #: the one-line reason given when ``executable`` is missing
    missing_hint: str = ""
    train_resources: Resources = TRAIN_RESOURCES
    predict_resources: Resources = PREDICT_RESOURCES
    #: the config's ``params`` keys with their defaults (a key not here is a typo)
    params: dict[str, Any] = field(default_factory=dict)
    #: the family's own ``training`` keys with their defaults, beside :data:`COMMON_TRAINING`
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def env_file(self) -> str:
        """The conda env its rules run in on a cluster, relative to the project root."""
        return f"envs/{self.name}.yaml"

    def available(self) -> tuple[bool, str]:
        """(available, why not): cheap, imports nothing of the family (parse-time safe)."""
        if self.executable is not None and shutil.which(self.executable) is None:
            return False, self.missing_hint
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return False, self.missing_hint
        return True, ""


#: every model family, keyed by name
FAMILIES: dict[str, FamilyRecord] = {
    r.name: r
    for r in (
        FamilyRecord(
            "schnetpack",
            "elmlff.bases.schnetpack:SchNetPackFamily",
            distribution="schnetpack",
            params={
                "architecture": "schnet",
                "cutoff": 5.0,
                "n_rbf": 20,
                "n_atom_basis": 32,
                "n_interactions": 3,
            },
            training={
                "max_epochs": 30,
                "batch_size": 32,
                "lr": 5e-4,
                "energy_weight": 0.05,
                "force_weight": 0.95,
                "patience": 20,
                "seed": 0,
                "dtype": "float32",
            },
            differentiable=True,
        ),
        FamilyRecord(
            "deepmd",
            "elmlff.bases.deepmd:DeePMDFamily",
            distribution="deepmd-kit",
            params={
                "descriptor": "se_e2_a",
                "rcut": 5.0,
                "rcut_smth": 0.5,
                "neuron": [16, 32],
                "axis_neuron": 8,
                "fitting_neuron": [64, 64],
            },
            training={
                "max_epochs": 30,
                "batch_size": 4,
                "lr": 1e-3,
                "stop_lr_ratio": 1e-2,
                "seed": 0,
                "checkpoints": 10,
                "pref_e": [0.02, 1.0],
                "pref_f": [1000.0, 1.0],
            },
            differentiable=True,
        ),
        FamilyRecord(
            "nequip",
            "elmlff.bases.nequip:NequIPFamily",
            distribution="nequip",
            params={
                "cutoff": 5.0,
                "num_layers": 3,
                "num_features": 16,
                "l_max": 1,
                "radial_mlp_depth": 1,
                "radial_mlp_width": 16,
                "model_dtype": "float64",
            },
            training={
                "max_epochs": 30,
                "batch_size": 16,
                "lr": 5e-3,
                "energy_weight": 0.05,
                "force_weight": 0.95,
                "patience": 20,
                "seed": 0,
            },
            differentiable=True,
        ),
        # the direct-force base (orb-v3-direct architecture, trained from scratch) in
        # ForceNet's role: predict() gives its direct forces, energy() its energy head
        FamilyRecord(
            "orb_direct",
            "elmlff.bases.orb:OrbDirectFamily",
            distribution="orb-models",
            params={
                "latent_dim": 64,
                "base_mlp_hidden_dim": 128,
                "base_mlp_depth": 2,
                "head_mlp_hidden_dim": 128,
                "head_mlp_depth": 1,
                "num_message_passing_steps": 3,
                "cutoff": 6.0,
                "max_num_neighbors": 120,
                "pair_repulsion": True,
            },
            training={
                "max_epochs": 30,
                "batch_size": 16,
                "lr": 1e-3,
                "energy_weight": 0.1,
                "force_weight": 1.0,
                "patience": 20,
                "seed": 0,
                "dtype": "float32",
                "rotation_augmentation": True,
            },
            differentiable=True,
            direct_forces=True,
        ),
        FamilyRecord(
            "nep",
            "elmlff.bases.nep:NEPFamily",
            distribution="calorine",
            params={
                "cutoff": [6.0, 4.0],
                "n_max": [4, 4],
                "basis_size": [8, 8],
                "l_max": [4, 2, 0],
                "neuron": 30,
            },
            training={
                "generations": 100000,
                "batch": 1000,
                "population": 50,
                "lambda_e": 1.0,
                "lambda_f": 1.0,
            },
            differentiable=False,
            executable="nep",
            missing_hint="GPUMD's `nep` executable is not on PATH (install GPUMD to train NEP)",
        ),
        FamilyRecord(
            "dimenet",
            "elmlff.bases.dimenet:DimeNetFamily",
            distribution="torch-geometric",
            params={
                "architecture": "dimenet++",
                "hidden_channels": 64,
                "out_channels": 1,
                "num_blocks": 2,
                "num_bilinear": 8,
                "int_emb_size": 32,
                "basis_emb_size": 8,
                "out_emb_channels": 64,
                "num_spherical": 7,
                "num_radial": 6,
                "cutoff": 5.0,
                "envelope_exponent": 5,
                "num_before_skip": 1,
                "num_after_skip": 2,
                "num_output_layers": 3,
            },
            training={
                "max_epochs": 30,
                "batch_size": 16,
                "lr": 1e-3,
                "energy_weight": 1.0,
                "force_weight": 1000.0,
                "patience": 20,
                "seed": 0,
                "dtype": "float32",
            },
            differentiable=True,
        ),
        # pretrained universal potentials, weights inside their wheels (never downloaded)
        *(
            FamilyRecord(
                name,
                f"elmlff.bases.pretrained.{name}:{cls}",
                distribution=dist,
                params={"model": model, **extra},
                differentiable=True,
                pretrained=True,
                stress=True,
                module=name,
                missing_hint=f"the {dist} package is not installed (pip install {dist}=={ver}, "
                f"or envs/{name}.yaml on a cluster)",
            )
            for name, cls, dist, ver, model, extra in (
                ("chgnet", "CHGNetFamily", "chgnet", "0.4.2", "0.3.0", {}),
                ("sevenn", "SevenNetFamily", "sevenn", "0.13.0", "7net-0", {"modal": ""}),
                ("diep", "DIEPFamily", "diep", "2.0.0", "diep_fold1", {}),
            )
        ),
    )
}

INFO_FILE = BASE_INFO

#: training keys the top-level ``training`` block sets for every base, with their types; a
#: family without a use for one ignores it (DeePMD's loss prefactors are its own, NEP counts
#: generations)
COMMON_TRAINING: dict[str, type] = {
    "max_epochs": int,
    "batch_size": int,
    "lr": float,
    "energy_weight": float,
    "force_weight": float,
    "patience": int,
    "seed": int,
}


def type_ok(value: Any, want: type) -> bool:
    if want is bool:
        return isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if want is list:
        return isinstance(value, list | tuple)
    return isinstance(value, want)


def check_spec(
    name: str, family: str, params: dict[str, Any], training: dict[str, Any], where: str
) -> None:
    """A base's ``params`` and its own ``training`` against its family's record: unknown keys
    (typos such as ``n_rbff``) and values of the wrong type (``max_epochs: "two"``) are one-line
    errors naming the accepted keys, before anything trains."""
    rec = record(family)
    for block, given, known in (
        ("params", params, rec.params),
        ("training", training, {**{k: t() for k, t in COMMON_TRAINING.items()}, **rec.training}),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ElmlffError(
                f"{where}.{block}: unknown key(s) {unknown} for family {family}",
                f"use some of {sorted(known)}",
            )
        for key, value in given.items():
            want = type(known[key])
            if not type_ok(value, want):
                raise ElmlffError(
                    f"{where}.{block}.{key}: {value!r} is not of type {want.__name__}",
                    f"give a value of type {want.__name__} (default {known[key]!r})",
                )
    if rec.pretrained and "model" in params:  # the adapter's table imports no package
        shipped = get_family(family).potential.models()
        if params["model"] not in shipped:
            raise ElmlffError(
                f"{where}.params.model: {params['model']!r} is not shipped in the "
                f"{rec.distribution} wheel",
                f"use one of {sorted(shipped)} (others download weights at run time, which "
                "this project never does)",
            )


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
    #: the family it belongs to (a key of :data:`FAMILIES`)
    family: str
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
        """Differentiable total energy (F,) in eV of frames on a flat atom axis (only where
        :func:`is_differentiable`; NEP's raises).

        ``positions (A, 3)`` may require grad (or be a function of other tensors); the result
        keeps the graph, so ``torch.autograd.grad(..., create_graph=True)`` gives forces and
        Hessian-vector products through the base.
        """
        ...


class Family(Protocol):
    """Trains and loads the bases of one model family."""

    name: str

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        """Train on ``train``, early-stop and pick the checkpoint on ``val`` only; write the
        model under ``outdir`` and return facts for ``base.json`` (epochs, best val loss...)."""
        ...

    def load(self, outdir: Path, device: str = "cpu") -> Potential:
        """Load a base trained by :meth:`train`."""
        ...


def record(family: str) -> FamilyRecord:
    """The record of ``family``; a clear error for an unknown one."""
    if family not in FAMILIES:
        raise ElmlffError(f"unknown base family {family!r}", f"use one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def get_family(name: str) -> Family:
    """The adapter of the family ``name``."""
    module, cls = record(name).entry.split(":")
    return getattr(importlib.import_module(module), cls)()


def family_available(name: str) -> tuple[bool, str]:
    """(available, why not) for the family ``name``: cheap, imports nothing of the family."""
    return record(name).available()


def distribution(family: str) -> str:
    """The distribution the models of ``family`` come from (e.g. ``deepmd-kit``)."""
    return record(family).distribution


def distributions() -> list[str]:
    """Every family's distribution, in registry order (for provenance)."""
    return [r.distribution for r in FAMILIES.values()]


def is_differentiable(pot: Potential) -> bool:
    """Whether ``pot.energy()`` is a differentiable torch energy: its family's record says so
    (False for NEP, whose ``energy()`` raises). A potential of no registered family (a
    meta-model, a test's analytic potential) implements ``energy()`` as the Protocol asks."""
    rec = FAMILIES.get(getattr(pot, "family", ""))
    return True if rec is None else rec.differentiable


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


def has_direct_forces(pot: Potential) -> bool:
    """Whether ``pot``'s forces are a direct output (its family's record says so)."""
    rec = FAMILIES.get(getattr(pot, "family", ""))
    return rec is not None and rec.direct_forces


def energy_and_forces(
    pot: Potential,
    positions: torch.Tensor,
    numbers: torch.Tensor,
    n_atoms: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy (F,), forces (A, 3)) of a differentiable base as torch functions of
    ``positions``: the forces its ``predict`` gives, so that live bases and the store agree —
    −dE/dx, or the direct forces of a family whose record says ``direct_forces``: its
    ``outputs()`` gives energy and direct forces in one forward pass, the forces
    differentiable but not a gradient of the energy."""
    import torch

    if has_direct_forces(pot):  # one forward pass gives both (orb's heads)
        return pot.outputs(positions, numbers, n_atoms, cell, pbc)
    e = pot.energy(positions, numbers, n_atoms, cell, pbc)
    (g,) = torch.autograd.grad(e.sum(), positions, create_graph=create_graph, retain_graph=True)
    return e, -g


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
