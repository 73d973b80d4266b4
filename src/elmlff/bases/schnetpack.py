"""SchNet and PaiNN bases with schnetpack's own stack: its ASE database and ``AtomsDataModule``,
its model builders, its ``AtomisticTask`` and a pytorch-lightning trainer.

Config ``params``: ``architecture`` (``schnet`` | ``painn``), ``cutoff`` (Å), ``n_rbf``,
``n_atom_basis``, ``n_interactions``. ``training``: ``max_epochs``, ``batch_size``, ``lr``,
``energy_weight``, ``force_weight``, ``patience`` (early stopping on validation loss),
``seed``, ``dtype`` (``float32`` | ``float64``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import schnetpack as spk
import schnetpack.transform as trn
import torch
import torchmetrics
from pytorch_lightning.callbacks import EarlyStopping
from schnetpack.interfaces.ase_interface import AtomsConverter

from elmlff.bases import FAMILIES, BaseSpec, check_species, checkpoint, frames_from_tensors, scratch
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

MODEL_FILE = "best_model"
ARCHITECTURES = ("schnet", "painn")
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["schnetpack"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["schnetpack"].training


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def build_model(params: dict[str, Any], dtype: str = "float32"):
    """A schnetpack ``NeuralNetworkPotential`` for energy and forces (−dE/dx)."""

    p = {**DEFAULT_PARAMS, **params}
    arch = p["architecture"]
    if arch not in ARCHITECTURES:
        raise ElmlffError(
            f"unknown schnetpack architecture {arch!r}", f"use one of {list(ARCHITECTURES)}"
        )
    cutoff = float(p["cutoff"])
    rbf = spk.nn.GaussianRBF(n_rbf=int(p["n_rbf"]), cutoff=cutoff)
    cls = spk.representation.SchNet if arch == "schnet" else spk.representation.PaiNN
    rep = cls(
        n_atom_basis=int(p["n_atom_basis"]),
        n_interactions=int(p["n_interactions"]),
        radial_basis=rbf,
        cutoff_fn=spk.nn.CosineCutoff(cutoff),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=int(p["n_atom_basis"]), output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
        postprocessors=[trn.CastTo64(), trn.AddOffsets("energy", add_mean=True)],
        input_dtype_str=dtype,
    )
    return model.to(_dtype(dtype))


class InMemory(torch.utils.data.Dataset):
    """A schnetpack dataset read once: its deterministic transforms (neighbour list, energy
    offset, cast) ran per sample per epoch, which cost twice the model's own training step
    on small molecules. The loader's collate copies the tensors, so samples are never
    changed by training."""

    def __init__(self, data: torch.utils.data.Dataset) -> None:
        self.items = [data[i] for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self.items[idx]


class EpochPrinter(pl.Callback):
    """Prints one line per epoch to the log (the lightning progress bar is off)."""

    def __init__(self, name: str, max_epochs: int) -> None:
        self.name, self.max_epochs, self.t0 = name, max_epochs, time.perf_counter()
        self.history: list[dict[str, float]] = []  # per epoch: val loss and force MAE

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        nan = float("nan")
        self.history.append(
            {
                "epoch": trainer.current_epoch + 1,
                "val_loss": m.get("val_loss", nan),
                "val_force_mae": m.get("val_forces_MAE", nan),
            }
        )
        print(
            f"[{self.name}] epoch {trainer.current_epoch + 1}/{self.max_epochs} "
            f"train_loss={m.get('train_loss', nan):.5f} val_loss={m.get('val_loss', nan):.5f} "
            f"val_forces_MAE={m.get('val_forces_MAE', nan):.4f} eV/Å "
            f"({time.perf_counter() - self.t0:.0f} s)",
            flush=True,
        )


class SchNetPackFamily:
    """schnetpack: SchNet (any number of radial basis functions) and PaiNN."""

    name = "schnetpack"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        params = {**DEFAULT_PARAMS, **spec.params}
        tr = {**DEFAULT_TRAINING, **spec.training}
        outdir = Path(outdir)
        pl.seed_everything(int(tr["seed"]), verbose=False)
        with scratch(outdir, f"spk-{spec.name}-") as work:
            db = work / "data.db"
            data = spk.data.ASEAtomsData.create(
                str(db),
                distance_unit="Ang",
                property_unit_dict={"energy": "eV", "forces": "eV/Ang"},
            )
            both = Frames.concatenate([train, val])
            props = [
                {"energy": np.array([e]), "forces": both.forces[o : o + n]}
                for e, o, n in zip(both.energy, both.offsets, both.n_atoms, strict=True)
            ]
            data.add_systems(props, both.to_atoms())
            split = work / "split.npz"
            np.savez(
                split,
                train_idx=np.arange(len(train)),
                val_idx=np.arange(len(train), len(both)),
                test_idx=np.zeros(0, dtype=int),
            )
            cutoff = float(params["cutoff"])
            dm = spk.data.AtomsDataModule(
                str(db),
                batch_size=int(tr["batch_size"]),
                split_file=str(split),
                transforms=[
                    trn.MatScipyNeighborList(cutoff=cutoff),
                    trn.RemoveOffsets("energy", remove_mean=True, remove_atomrefs=False),
                    trn.CastTo64() if tr["dtype"] == "float64" else trn.CastTo32(),
                ],
                num_workers=0,
                pin_memory=False,
                property_units={"energy": "eV", "forces": "eV/Ang"},
                distance_unit="Ang",
                cleanup_workdir_stage=None,
            )
            # schnetpack's setup writes `splitting.lock` into the working directory
            with contextlib.chdir(work):
                dm.prepare_data()
                dm.setup()
            dm._train_dataset = InMemory(dm.train_dataset)
            dm._val_dataset = InMemory(dm.val_dataset)
            model = build_model(params, tr["dtype"])
            mae = {"MAE": torchmetrics.MeanAbsoluteError()}
            task = spk.task.AtomisticTask(
                model=model,
                outputs=[
                    spk.task.ModelOutput(
                        name="energy",
                        loss_fn=torch.nn.MSELoss(),
                        loss_weight=float(tr["energy_weight"]),
                        metrics=dict(mae),
                    ),
                    spk.task.ModelOutput(
                        name="forces",
                        loss_fn=torch.nn.MSELoss(),
                        loss_weight=float(tr["force_weight"]),
                        metrics={"MAE": torchmetrics.MeanAbsoluteError()},
                    ),
                ],
                optimizer_cls=torch.optim.AdamW,
                optimizer_args={"lr": float(tr["lr"])},
                scheduler_cls=spk.train.ReduceLROnPlateau,
                scheduler_args={"factor": 0.5, "patience": max(2, int(tr["patience"]) // 3)},
                scheduler_monitor="val_loss",
            )
            best = work / MODEL_FILE
            ckpt = spk.train.ModelCheckpoint(
                model_path=str(best), monitor="val_loss", save_top_k=1, dirpath=str(work / "ckpt")
            )
            trainer = pl.Trainer(
                max_epochs=int(tr["max_epochs"]),
                accelerator="auto",
                devices=1,
                default_root_dir=str(work),
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                callbacks=[
                    ckpt,
                    EarlyStopping("val_loss", patience=int(tr["patience"])),
                    printer := EpochPrinter(spec.name, int(tr["max_epochs"])),
                ],
            )
            t0 = time.perf_counter()
            trainer.fit(task, datamodule=dm)
            seconds = time.perf_counter() - t0
            if not best.exists():
                raise ElmlffError(
                    f"base '{spec.name}': training wrote no checkpoint",
                    "check the training log; raise max_epochs above 0",
                )
            shutil.move(str(best), outdir / MODEL_FILE)
            return {
                "params": params,
                "training": tr,
                "epochs_run": len(printer.history),
                # the checkpoint is the epoch of lowest val loss (ModelCheckpoint's monitor)
                "best_epoch": min(printer.history, key=lambda h: h["val_loss"])["epoch"],
                "best_val_loss": float(ckpt.best_model_score),
                "history": printer.history,
                "train_seconds": seconds,
                "species": train.species,
            }

    def load(self, outdir: Path, device: str = "cpu") -> SchNetPackPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        model = torch.load(path, map_location=device, weights_only=False)
        return SchNetPackPotential(info["name"], model, info, device)


#: per (cutoff, dtype, device): the last structure's key and schnetpack's inputs for it
_SHARED_INPUTS: dict[tuple, tuple[tuple, dict[str, torch.Tensor]]] = {}


class SchNetPackPotential:
    """A trained schnetpack model behind the :class:`~elmlff.bases.Potential` Protocol.

    In an ensemble step every base sees the same structure, so :meth:`energy` converts it
    (neighbour list included) once per cutoff, dtype and device for all schnetpack bases (the
    default ensemble's three SchNets and PaiNN) and gives each base its own copy of the
    inputs' dict with its own positions tensor (gradients stay per base)."""

    family = "schnetpack"

    def __init__(self, name: str, model, info: dict[str, Any], device: str = "cpu") -> None:

        self.name = name
        self.model = model.eval()
        self.info = info
        self.species = [int(z) for z in info["species"]]
        self.cutoff = float(info["params"]["cutoff"])
        self.dtype = _dtype(info["training"].get("dtype", "float32"))
        self.device = device
        self.converter = AtomsConverter(
            neighbor_list=trn.MatScipyNeighborList(cutoff=self.cutoff),
            device=device,
            dtype=self.dtype,
        )

    def _inputs(self, frames: Frames) -> dict[str, torch.Tensor]:
        """schnetpack's inputs for ``frames`` (a fresh dict; its tensors are shared with the
        other bases of this cutoff, dtype and device until the structure changes)."""
        slot = (self.cutoff, self.dtype, str(self.device))
        arrays = (frames.positions, frames.numbers, frames.n_atoms, frames.cell, frames.pbc)
        key = tuple(a.tobytes() for a in arrays)
        hit = _SHARED_INPUTS.get(slot)
        if hit is None or hit[0] != key:
            hit = _SHARED_INPUTS[slot] = (key, self.converter(frames.to_atoms()))
        return dict(hit[1])

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        check_species(self.name, self.species, frames.numbers)
        atoms = frames.to_atoms()
        energies, forces = [], []
        for s in range(0, len(atoms), batch_size):
            inputs = self.converter(atoms[s : s + batch_size])
            out = self.model(inputs)
            energies.append(out["energy"].detach().cpu().double().numpy())
            forces.append(out["forces"].detach().cpu().double().numpy())
        return np.concatenate(energies), np.concatenate(forces)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        frames = frames_from_tensors(positions, numbers, n_atoms, cell, pbc, self.name)
        check_species(self.name, self.species, frames.numbers)
        inputs = self._inputs(frames)  # neighbour list from the current geometry
        inputs["_positions"] = positions.to(self.device, self.dtype)
        m = self.model
        for mod in m.input_modules:
            inputs = mod(inputs)
        inputs = m.representation(inputs)
        for mod in m.output_modules:
            if type(mod).__name__ != "Forces":
                inputs = mod(inputs)
        inputs = m.postprocess(inputs)
        return inputs["energy"].to(torch.float64)
