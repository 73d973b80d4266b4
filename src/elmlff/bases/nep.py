"""NEP bases through GPUMD's ``nep`` executable (training) and calorine's ``CPUNEP`` (prediction).

GPUMD cannot be installed from PyPI: where ``nep`` is not on PATH the family is unavailable,
its rules leave the DAG and the run says so once. NEP is not a torch model, so it has no
differentiable ``energy()`` entry point (conservative meta-models cannot use it).

Config ``params``: ``cutoff`` ([radial, angular] Å), ``n_max``, ``basis_size``, ``l_max``,
``neuron``. ``training``: ``generations``, ``batch``, ``population``, ``lambda_e``, ``lambda_f``.
GPUMD's nep keeps its final model (``nep.txt``); the validation frames are its ``test.xyz``,
whose RMSEs ``loss.out`` reports every 100 generations.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from elmlff.bases import FAMILIES, BaseSpec, check_species, checkpoint, family_available
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.io import run_streaming

MODEL_FILE = "nep.txt"
VACUUM = 100.0  # Å: box given to non-periodic frames (GPUMD always reads a cell)
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["nep"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["nep"].training
#: columns of loss.out for a potential model
LOSS_COLUMNS = (
    "generation",
    "loss",
    "l1",
    "l2",
    "energy_rmse_train",
    "force_rmse_train",
    "virial_rmse_train",
    "energy_rmse_test",
    "force_rmse_test",
    "virial_rmse_test",
)


def write_structures(frames: Frames, path: Path) -> None:
    """GPUMD's extended XYZ: ``Lattice``, ``pbc``, ``energy`` per frame; species, pos, forces."""
    lines = []
    for f, (o, n) in enumerate(zip(frames.offsets, frames.n_atoms, strict=True)):
        cell = frames.cell[f]
        if not frames.pbc[f].any() or np.abs(cell).sum() == 0:
            cell = np.eye(3) * VACUUM
        pbc = " ".join("T" if p else "F" for p in frames.pbc[f])
        lines.append(str(int(n)))
        lines.append(
            f"energy={frames.energy[f]:.10f} config_type=elmlff "
            f'Lattice="{" ".join(f"{x:.10f}" for x in cell.reshape(-1))}" '
            f'pbc="{pbc}" Properties=species:S:1:pos:R:3:forces:R:3'
        )
        for z, r, fo in zip(
            frames.numbers[o : o + n],
            frames.positions[o : o + n],
            frames.forces[o : o + n],
            strict=True,
        ):
            lines.append(f"{chemical_symbols[z]} " + " ".join(f"{x:.10f}" for x in (*r, *fo)))
    Path(path).write_text("\n".join(lines) + "\n")


def nep_in(params: dict[str, Any], training: dict[str, Any], type_names: list[str]) -> str:
    """The ``nep.in`` input of GPUMD's nep (NEP4)."""
    p = {**DEFAULT_PARAMS, **params}
    t = {**DEFAULT_TRAINING, **training}

    def fmt(v: Any) -> str:
        return " ".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)

    rows = [
        ("type", f"{len(type_names)} {' '.join(type_names)}"),
        ("version", "4"),
        ("cutoff", fmt(p["cutoff"])),
        ("n_max", fmt(p["n_max"])),
        ("basis_size", fmt(p["basis_size"])),
        ("l_max", fmt(p["l_max"])),
        ("neuron", fmt(p["neuron"])),
        ("lambda_e", fmt(t["lambda_e"])),
        ("lambda_f", fmt(t["lambda_f"])),
        ("lambda_v", "0"),
        ("batch", fmt(t["batch"])),
        ("population", fmt(t["population"])),
        ("generation", fmt(t["generations"])),
    ]
    return "".join(f"{k:<11s}{v}\n" for k, v in rows)


def read_loss(path: Path) -> dict[str, np.ndarray]:
    """``loss.out`` as named columns (GPUMD writes one row every 100 generations)."""
    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"{path} not found", "nep did not finish; read its log")
    data = np.loadtxt(path, ndmin=2)
    if data.shape[1] != len(LOSS_COLUMNS):
        raise ElmlffError(
            f"{path}: {data.shape[1]} columns, expected {len(LOSS_COLUMNS)}",
            "train a potential model (not dipole/polarizability) with NEP4",
        )
    return {name: data[:, i] for i, name in enumerate(LOSS_COLUMNS)}


class NEPFamily:
    """GPUMD's neuroevolution potential (NEP4)."""

    name = "nep"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        ok, why = family_available(self.name)
        if not ok:
            raise ElmlffError(f"base '{spec.name}': {why}", "install GPUMD or drop the base")
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        species, type_names = train.species, train.element_symbols
        write_structures(train, outdir / "train.xyz")
        write_structures(val, outdir / "test.xyz")
        (outdir / "nep.in").write_text(nep_in(spec.params, spec.training, type_names))
        t0 = time.perf_counter()
        tail = run_streaming(["nep"], outdir, dict(os.environ), prefix=f"[{spec.name}] ")
        if tail is not None:
            raise ElmlffError(f"base '{spec.name}': nep failed: {tail}", "read the log above")
        loss = read_loss(outdir / "loss.out")
        if not (outdir / MODEL_FILE).exists():
            raise ElmlffError(f"base '{spec.name}': nep wrote no {MODEL_FILE}", "read the log")
        return {
            "params": {**DEFAULT_PARAMS, **spec.params},
            "training": {**DEFAULT_TRAINING, **spec.training},
            # NEP's generations (its evolution keeps the last population's best: no choice)
            "epochs_run": int(loss["generation"][-1]),
            "best_epoch": int(loss["generation"][-1]),
            "val_force_rmse": float(loss["force_rmse_test"][-1]),
            "train_seconds": time.perf_counter() - t0,
            "species": species,
            "type_names": type_names,
        }

    def load(self, outdir: Path, device: str = "cpu") -> NEPPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        return NEPPotential(info["name"], path, info)


class NEPPotential:
    """A trained NEP model, predicted with calorine's CPU implementation."""

    family = "nep"

    def __init__(self, name: str, path: Path, info: dict[str, Any]) -> None:
        self.name, self.path, self.info = name, Path(path), info
        self.species = [int(z) for z in info["species"]]

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        from calorine.calculators import CPUNEP

        check_species(self.name, self.species, frames.numbers)
        energy, forces = np.zeros(len(frames)), np.zeros_like(frames.forces)
        for f, at in enumerate(frames.to_atoms()):
            at.calc = CPUNEP(str(self.path))
            energy[f] = at.get_potential_energy()
            forces[frames.atom_index([f])] = at.get_forces()
        return energy, forces

    def energy(self, positions, numbers, n_atoms, cell, pbc):
        raise ElmlffError(
            f"base '{self.name}' (NEP) has no differentiable torch energy",
            "use torch-based bases for conservative meta-models",
        )
