"""Pretrained universal potentials: CHGNet, SevenNet and DIEP, with the weights that ship
inside their own PyPI wheels (never downloaded at run time), used as bases without training.

One small adapter module per package (:mod:`.chgnet`, :mod:`.sevenn`, :mod:`.diep`), each
giving the model's total energy as a differentiable torch
function of the positions *and* the cell of periodic frames
(:meth:`PretrainedPotential.energy`): the package builds its own graph (neighbours and
periodic images) from the current geometry, and the adapter recomputes what the network reads
(CHGNet's and DIEP's fractional coordinates and lattice, SevenNet's edge vectors) from the
given tensors, so gradients flow back to them. Then

- forces are −dE/dx (autograd), as each package's own ASE calculator computes them;
- the stress is ``(1/V) dE/dε`` under a homogeneous strain ε of positions and cell (ASE's
  sign: negative under compression), :func:`energy_forces_stress`;
- Ensemble-conserv differentiates through them like any other differentiable base.

The "train" step records provenance (package version, model name, the weight file and its
sha256) and trains nothing (:class:`PretrainedFamily`). Every model is float32, as released.

Model names (``params.model``), each a file inside its wheel:

- chgnet 0.4.2: ``0.3.0`` (MPtrj, the default), ``0.2.0``, ``r2scan`` (transfer-learned to
  MP r2SCAN);
- sevenn 0.13.0: ``7net-0`` (= ``7net-0_11jul2024``, MPtrj), ``7net-0_22may2024``,
  ``7net-l3i5``, ``7net-mf-0`` (multi-fidelity: ``params.modal`` picks the fidelity);
- diep 2.0.0: ``diep_fold1`` (trained on MatPES r2SCAN).

The paper's TensorNet and M3GNet MatPES weights come only from a hub at run time (matgl), so
they cannot be used here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from elmlff.bases import BaseSpec, check_species, checkpoint, record
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

if TYPE_CHECKING:
    import torch

#: the file a pretrained base's "training" writes beside base.json (what it loads from)
MARKER = "pretrained.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def frames_of(n_atoms: torch.Tensor) -> list[tuple[int, slice]]:
    """(frame, its atoms' slice of the flat atom axis) for every frame."""
    off, out = 0, []
    for f, n in enumerate(n_atoms.tolist()):
        out.append((f, slice(off, off + int(n))))
        off += int(n)
    return out


def periodic_only(name: str, pbc: torch.Tensor | np.ndarray) -> None:
    """A one-line error unless every frame is periodic along all three axes."""
    pbc = np.asarray(pbc.cpu() if hasattr(pbc, "cpu") else pbc, dtype=bool)
    if not pbc.all():
        raise ElmlffError(
            f"base '{name}': a frame is not periodic along all three axes (pbc "
            f"{pbc[~pbc.all(axis=1)][0].tolist()})",
            "pretrained universal potentials are used here for bulk solids; give fully "
            "periodic cells (pad a molecule or slab with vacuum)",
        )


def atoms_of(pos: torch.Tensor, numbers: np.ndarray, cell: torch.Tensor):
    """The periodic ASE ``Atoms`` of one frame's (detached) tensors: what a package builds
    its graph from."""
    from ase import Atoms

    return Atoms(
        numbers=numbers,
        positions=pos.detach().cpu().numpy(),
        cell=cell.detach().cpu().numpy(),
        pbc=True,
    )


class PretrainedPotential:
    """A pretrained universal potential behind the :class:`~elmlff.bases.Potential` Protocol.
    Subclasses load the package's model and give one frame's energy (:meth:`frame_energy`)."""

    family: ClassVar[str]
    #: what the base is, in tables and logs
    label: str

    def __init__(self, name: str, params: dict[str, Any], device: str = "cpu") -> None:
        import torch

        self.name = name
        self.params = {**record(self.family).params, **params}
        if device == "auto":  # the CLI resolves it first; this is for library use
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model_name = str(self.params["model"])
        self.weights = self.weights_path(self.model_name)
        self.load_model()

    # -- per package ----------------------------------------------------------------------
    @classmethod
    def models(cls) -> dict[str, str]:
        """Model name -> weight file inside the package (relative to its folder)."""
        raise NotImplementedError

    def load_model(self) -> None:
        """Load the weights (``self.weights``); set ``self.species`` and ``self.label``."""
        raise NotImplementedError

    def frame_energy(
        self, pos: torch.Tensor, numbers: np.ndarray, cell: torch.Tensor
    ) -> torch.Tensor:
        """Total energy (scalar, float64) of one periodic frame, differentiable in ``pos``
        (N, 3) and ``cell`` (3, 3), both float64."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    @classmethod
    def package_dir(cls) -> Path:
        import importlib.util

        spec = importlib.util.find_spec(record(cls.family).module or cls.family)
        if spec is None or not spec.submodule_search_locations:
            raise ElmlffError(
                f"package {record(cls.family).distribution} is not installed",
                f"pip install {record(cls.family).distribution} (envs/{cls.family}.yaml)",
            )
        return Path(next(iter(spec.submodule_search_locations)))

    @classmethod
    def weights_path(cls, model: str) -> Path:
        """The weight file of ``model`` inside the installed wheel; a one-line error for a
        name the wheel does not ship (no download is ever attempted)."""
        known = cls.models()
        if model not in known:
            raise ElmlffError(
                f"{cls.family}: model {model!r} is not shipped in the "
                f"{record(cls.family).distribution} wheel",
                f"use one of {sorted(known)} (others download weights at run time, which this "
                "project never does)",
            )
        path = cls.package_dir() / known[model]
        if not path.exists():
            raise ElmlffError(
                f"{cls.family}: weight file {path} missing from the installed package",
                f"reinstall {record(cls.family).distribution} at the pinned version",
            )
        return path

    def provenance(self) -> dict[str, Any]:
        dist = record(self.family).distribution
        return {
            "label": self.label,
            "pretrained": True,
            "model": self.model_name,
            "package": dist,
            "package_version": importlib.metadata.version(dist),
            "weights": str(self.weights.relative_to(self.package_dir().parent)),
            "weights_sha256": _sha256(self.weights),
            "species": self.species,
        }

    def energy(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        n_atoms: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
    ) -> torch.Tensor:
        """Total energies (F,) in eV, differentiable in ``positions`` and ``cell``."""
        import torch

        periodic_only(self.name, pbc)
        z = numbers.detach().cpu().numpy()
        check_species(self.name, self.species, z)
        pos = positions.to(self.device, torch.float64)
        return self.batch_energy(pos, z, n_atoms, cell.to(self.device, torch.float64))

    def batch_energy(
        self, pos: torch.Tensor, numbers: np.ndarray, n_atoms: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        """Energies (F,) of checked, periodic frames: one :meth:`frame_energy` per frame (a
        package that batches its own graphs overrides this)."""
        import torch

        return torch.stack(
            [self.frame_energy(pos[s], numbers[s], cells[f]) for f, s in frames_of(n_atoms)]
        )

    def predict(self, frames: Frames, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(energy (F,), forces (A, 3)): −dE/dx, in batches of frames."""
        e, f, _ = energy_forces_stress(self, frames, stress=False, batch_size=batch_size)
        return e, f

    def predict_stress(self, frames: Frames, batch_size: int = 16) -> tuple[np.ndarray, ...]:
        """(energy (F,), forces (A, 3), stress (F, 3, 3) in eV/Å³, ASE's sign)."""
        return energy_forces_stress(self, frames, stress=True, batch_size=batch_size)


def energy_forces_stress(
    pot: PretrainedPotential, frames: Frames, stress: bool = True, batch_size: int = 16
) -> tuple[np.ndarray, ...]:
    """Energies, forces −dE/dx and (with ``stress``) the stress ``(1/V) dE/dε`` of a potential
    whose ``energy()`` is differentiable in positions and cell: positions and cell both go
    through ``(1 + ε)`` (ε = 0, requiring grad) and one backward pass gives both gradients."""
    import torch

    es, fs, ss = [], [], []  # pot.energy() checks the elements and the periodicity
    for start in range(0, len(frames), batch_size):
        b = frames.subset(np.arange(start, min(start + batch_size, len(frames))))
        pos = torch.as_tensor(b.positions, dtype=torch.float64).requires_grad_(True)
        cell = torch.as_tensor(b.cell, dtype=torch.float64)
        eps = torch.zeros((len(b), 3, 3), dtype=torch.float64, requires_grad=stress)
        strain = torch.eye(3, dtype=torch.float64) + eps
        frame = torch.as_tensor(b.frame_of_atom)
        spos = torch.einsum("ai,aij->aj", pos, strain[frame]) if stress else pos
        e = pot.energy(
            spos,
            torch.as_tensor(b.numbers),
            torch.as_tensor(b.n_atoms),
            cell @ strain if stress else cell,
            torch.as_tensor(b.pbc),
        )
        grads = torch.autograd.grad(e.sum(), [pos, eps] if stress else [pos])
        es.append(e.detach().cpu().numpy())
        fs.append(-grads[0].cpu().numpy())
        if stress:
            vol = np.abs(np.linalg.det(b.cell))
            ss.append(grads[1].cpu().numpy() / vol[:, None, None])
    out = (np.concatenate(es), np.concatenate(fs))
    return (*out, np.concatenate(ss) if stress else None)


class PretrainedFamily:
    """The "training" of a pretrained family: load the model offline (which checks the
    weights), check that it knows every element of the data, and record provenance."""

    name: str
    potential: type[PretrainedPotential]

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        import json

        from elmlff.io import atomic_write_text

        pot = self.potential(spec.name, spec.params)
        for frames in (train, val):
            check_species(spec.name, pot.species, frames.numbers)
        info = {**pot.provenance(), "params": pot.params, "trained": False}
        print(f"[{spec.name}] {pot.label}: pretrained, not trained ({info['weights']})")
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(outdir / MARKER, json.dumps(info, indent=1) + "\n")
        return info

    def load(self, outdir: Path, device: str = "cpu") -> PretrainedPotential:
        import json

        info, path = checkpoint(outdir, MARKER)
        meta = json.loads(path.read_text())
        pot = self.potential(info["name"], meta["params"], device)
        if _sha256(pot.weights) != meta["weights_sha256"]:
            raise ElmlffError(
                f"base '{info['name']}': the installed {meta['package']} weights differ from "
                f"those recorded ({meta['package_version']})",
                f"install {meta['package']}=={meta['package_version']} or rerun its train rule",
            )
        pot.info = info
        return pot
