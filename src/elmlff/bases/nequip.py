"""NequIP bases with nequip 0.19: ``nequip-train`` with its Hydra config and ``ASEDataModule``,
checkpoint chosen on validation by lightning's ``ModelCheckpoint``, loaded eagerly (never
compiled) for prediction and differentiable energies.

Config ``params``: ``cutoff`` (Å), ``num_layers``, ``num_features``, ``l_max``,
``radial_mlp_depth``, ``radial_mlp_width``, ``model_dtype``. ``training``: ``max_epochs``,
``batch_size``, ``lr``, ``energy_weight``, ``force_weight``, ``patience``, ``seed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase.io
import lightning.pytorch as lp
import numpy as np
import torch
import yaml
from ase.data import chemical_symbols

from elmlff.bases import FAMILIES, BaseSpec, check_species, checkpoint, frames_from_tensors, scratch
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.io import run_streaming

MODEL_FILE = "best.ckpt"
MONITOR = "val0_epoch/weighted_sum"
IDENTITY_MAP = "${list_to_identity_dict:${chemical_species}}"  # element symbol = model type
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["nequip"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["nequip"].training


class EpochPrinter(lp.Callback):
    """One line per validation epoch in the log (runs inside ``nequip-train``)."""

    def __init__(self, name: str, max_epochs: int, history: str | None = None) -> None:
        self.name, self.max_epochs, self.t0 = name, max_epochs, time.perf_counter()
        self.history = history  # a JSON-lines file: one line per epoch

    def on_train_epoch_end(self, trainer: lp.Trainer, pl_module: lp.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        f = m.get("val0_epoch/forces_mae", float("nan"))
        if self.history:
            line = {
                "epoch": trainer.current_epoch + 1,
                "val_loss": m.get(MONITOR, float("nan")),
                "val_force_mae": f,
            }
            with open(self.history, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        print(
            f"[{self.name}] epoch {trainer.current_epoch + 1}/{self.max_epochs} "
            f"val_weighted_sum={m.get(MONITOR, float('nan')):.5f} val_forces_MAE={f:.4f} eV/Å "
            f"({time.perf_counter() - self.t0:.0f} s)",
            flush=True,
        )


def hydra_config(
    name: str,
    params: dict[str, Any],
    training: dict[str, Any],
    type_names: list[str],
    train_file: Path,
    val_file: Path,
    history: Path | None = None,
) -> dict[str, Any]:
    """The ``nequip-train`` config for one base (``history``: per-epoch JSON lines)."""
    p = {**DEFAULT_PARAMS, **params}
    tr = {**DEFAULT_TRAINING, **training}
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": int(tr["batch_size"])}
    ew, fw = float(tr["energy_weight"]), float(tr["force_weight"])
    return {
        "run": ["train"],
        "seed": int(tr["seed"]),
        "cutoff_radius": float(p["cutoff"]),
        "model_type_names": type_names,
        "chemical_species": "${model_type_names}",
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": "${seed}",
            "train_file_path": str(train_file),
            "val_file_path": str(val_file),
            "ase_args": {"format": "extxyz"},
            "transforms": [
                {
                    "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                    "model_type_names": "${model_type_names}",
                    "chemical_species_to_atom_type_map": IDENTITY_MAP,
                },
                {
                    "_target_": "nequip.data.transforms.NeighborListTransform",
                    "r_max": "${cutoff_radius}",
                },
            ],
            "train_dataloader": {**loader, "shuffle": True},
            "val_dataloader": loader,
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": "${model_type_names}",
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_epochs": int(tr["max_epochs"]),
            "check_val_every_n_epoch": 1,
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": MONITOR,
                    "dirpath": "${hydra:runtime.output_dir}",
                    "filename": "best",
                    "save_top_k": 1,
                },
                {
                    "_target_": "lightning.pytorch.callbacks.EarlyStopping",
                    "monitor": MONITOR,
                    "patience": int(tr["patience"]),
                },
                {
                    "_target_": "elmlff.bases.nequip.EpochPrinter",
                    "name": name,
                    "max_epochs": int(tr["max_epochs"]),
                    "history": str(history) if history else None,
                },
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "loss": {
                "_target_": "nequip.train.EnergyForceLoss",
                # total energy per frame, as the other families: with forces 1000 : energy 1
                # a per-atom energy term is too weak to pin the energy's constant offset
                "per_atom_energy": False,
                "coeffs": {"total_energy": ew, "forces": fw},
            },
            "val_metrics": {
                "_target_": "nequip.train.EnergyForceMetrics",
                "coeffs": {"total_energy_mae": ew, "forces_mae": fw},
            },
            "optimizer": {"_target_": "torch.optim.Adam", "lr": float(tr["lr"])},
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": "${seed}",
                "model_dtype": p["model_dtype"],
                "type_names": "${model_type_names}",
                "r_max": "${cutoff_radius}",
                "l_max": int(p["l_max"]),
                "parity": True,
                "num_layers": int(p["num_layers"]),
                "num_features": int(p["num_features"]),
                "radial_mlp_depth": int(p["radial_mlp_depth"]),
                "radial_mlp_width": int(p["radial_mlp_width"]),
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
                "per_type_energy_scales": "${training_data_stats:forces_rms}",
            },
        },
    }


class NequIPFamily:
    """nequip: the NequIP E(3)-equivariant interatomic potential."""

    name = "nequip"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        outdir = Path(outdir)
        species, type_names = train.species, train.element_symbols
        with scratch(outdir, f"nequip-{spec.name}-") as work:
            ase.io.write(work / "train.xyz", train.to_atoms(), format="extxyz")
            ase.io.write(work / "val.xyz", val.to_atoms(), format="extxyz")
            history_file = work / "history.jsonl"
            cfg = hydra_config(
                spec.name,
                spec.params,
                spec.training,
                type_names,
                work / "train.xyz",
                work / "val.xyz",
                history_file,
            )
            (work / "elmlff_nequip.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            run_dir = work / "run"
            exe = Path(sys.executable).parent / "nequip-train"
            cmd = [
                str(exe) if exe.exists() else "nequip-train",
                "-cp",
                str(work),
                "-cn",
                "elmlff_nequip.yaml",
                f"hydra.run.dir={run_dir}",
            ]
            t0 = time.perf_counter()
            tail = run_streaming(cmd, work, dict(os.environ))
            if tail is not None:
                raise ElmlffError(
                    f"base '{spec.name}': nequip-train failed: {tail}",
                    "read the full log above and fix the base's params",
                )
            seconds = time.perf_counter() - t0
            best = run_dir / "best.ckpt"
            if not best.exists():
                raise ElmlffError(
                    f"base '{spec.name}': nequip-train wrote no best.ckpt",
                    "raise max_epochs so validation runs at least once",
                )
            shutil.copy(best, outdir / MODEL_FILE)
            best_epoch = int(torch.load(best, map_location="cpu", weights_only=False)["epoch"]) + 1
            lines = history_file.read_text().splitlines() if history_file.exists() else []
            history = [json.loads(x) for x in lines]
            return {
                "params": {**DEFAULT_PARAMS, **spec.params},
                "training": {**DEFAULT_TRAINING, **spec.training},
                "epochs_run": len(history) or best_epoch,
                "best_epoch": best_epoch,  # the epoch of best.ckpt (lowest val loss)
                "history": history,
                "train_seconds": seconds,
                "species": species,
                "type_names": type_names,
                "energy_loss": "total energy per frame (eV)",
            }

    def load(self, outdir: Path, device: str = "cpu") -> NequIPPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        return NequIPPotential(info["name"], path, info, device)


@contextlib.contextmanager
def nequip_dtype() -> Iterator[None]:
    """nequip works with torch's default dtype set to float64 (its global state); set it only
    around nequip's own calls, so other families in the same process keep theirs."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


class NequIPPotential:
    """A trained NequIP model (eager) behind the :class:`~elmlff.bases.Potential` Protocol."""

    family = "nequip"

    def __init__(self, name: str, path: Path, info: dict[str, Any], device: str = "cpu") -> None:
        from nequip.integrations.utils import basic_transforms
        from nequip.model.saved_models.load_utils import load_saved_model
        from nequip.nn import graph_model
        from nequip.utils.global_state import set_global_state

        with nequip_dtype():
            set_global_state()
            self.model = load_saved_model(str(path)).to(device)
        self.name, self.info, self.device = name, info, device
        # train mode keeps the autograd graph of nequip's own force output (double backprop)
        self.model.train()
        meta = self.model.metadata
        self.type_names = meta[graph_model.TYPE_NAMES_KEY].split(" ")
        self.species = [chemical_symbols.index(s) for s in self.type_names]
        self.transforms = basic_transforms(
            meta,
            float(meta[graph_model.R_MAX_KEY]),
            self.type_names,
            {s: s for s in self.type_names},
        )

    def _data(self, frames: Frames):
        from nequip.data import AtomicDataDict, from_ase

        check_species(self.name, self.species, frames.numbers)
        items = []
        with nequip_dtype():
            for at in frames.to_atoms():
                d = from_ase(at)
                for t in self.transforms:
                    d = t(d)
                items.append(d)
        return AtomicDataDict.to_(AtomicDataDict.batched_from_list(items), self.device)

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        from nequip.data import AtomicDataDict

        energies, forces = [], []
        for s in range(0, len(frames), batch_size):
            data = self._data(frames.subset(range(s, min(s + batch_size, len(frames)))))
            with nequip_dtype():
                out = self.model(data)
            energies.append(out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().double().numpy())
            forces.append(out[AtomicDataDict.FORCE_KEY].detach().cpu().double().numpy())
        return np.concatenate(energies).reshape(-1), np.concatenate(forces)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        from nequip.data import AtomicDataDict

        frames = frames_from_tensors(positions, numbers, n_atoms, cell, pbc, self.name)
        data = self._data(frames)  # neighbour list from the current geometry
        data[AtomicDataDict.POSITIONS_KEY] = positions.to(self.device, torch.float64).to(
            data[AtomicDataDict.POSITIONS_KEY].dtype
        )
        energy_model = self.model.model.func  # the energy model inside nequip's force output
        with nequip_dtype():
            out = energy_model(data)
        return out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1).to(torch.float64)
