"""DeePMD bases with deepmd-kit's PyTorch backend: ``dp --pt train`` on DeePMD npy systems,
``DeepPot`` for prediction, and its TorchScript model for differentiable energies.

Config ``params``: ``descriptor`` (``se_e2_a`` | ``se_e2_r`` | ``se_e3``), ``rcut``,
``rcut_smth``, ``neuron`` (embedding net), ``axis_neuron`` (se_e2_a), ``fitting_neuron``.
``training``: ``max_epochs``, ``batch_size`` (DeePMD learns best in many small batches),
``lr`` (start of deepmd's exponential decay), ``stop_lr_ratio`` (its end, relative to ``lr``),
``seed``, ``checkpoints`` (how many saved along training; the one with the lowest validation
force RMSE is kept), ``pref_e`` and ``pref_f`` ([start, limit] of deepmd's energy and force
loss prefactors, which follow the learning rate from start to limit; default [0.02, 1] and
[1000, 1], deepmd's own; a short schedule does better with the force weight held, e.g. the
MD17 benchmark's forces 1000 : energy 1 as [1, 1] and [1000, 1000]).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from elmlff.bases import FAMILIES, BaseSpec, check_species, checkpoint, frames_from_tensors, scratch
from elmlff.data.frames import Frames
from elmlff.data.writers import composition_groups, write_deepmd
from elmlff.errors import ElmlffError
from elmlff.io import run_streaming
from elmlff.metrics import force_rmse

MODEL_FILE = "model.ckpt.pt"
DESCRIPTORS = ("se_e2_a", "se_e2_r", "se_e3")
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["deepmd"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["deepmd"].training


def input_json(
    params: dict[str, Any],
    training: dict[str, Any],
    type_map: list[str],
    train_systems: list[Path],
    val_systems: list[Path],
    n_train: int,
) -> dict:
    """deepmd-kit's training input for one base."""
    p = {**DEFAULT_PARAMS, **params}
    tr = {**DEFAULT_TRAINING, **training}
    kind = p["descriptor"]
    if kind not in DESCRIPTORS:
        raise ElmlffError(f"unknown DeePMD descriptor {kind!r}", f"use one of {list(DESCRIPTORS)}")
    seed = int(tr["seed"])
    desc: dict[str, Any] = {
        "type": kind,
        "sel": "auto",
        "rcut": float(p["rcut"]),
        "rcut_smth": float(p["rcut_smth"]),
        "neuron": list(p["neuron"]),
        "seed": seed,
    }
    if kind == "se_e2_a":
        desc["axis_neuron"] = int(p["axis_neuron"])
    batch = int(tr["batch_size"])
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    steps = max(1, int(tr["max_epochs"]) * steps_per_epoch)
    save = max(1, steps // max(1, int(tr["checkpoints"])))
    start_lr = float(tr["lr"])
    return {
        "model": {
            "type_map": type_map,
            "descriptor": desc,
            "fitting_net": {"neuron": list(p["fitting_neuron"]), "resnet_dt": True, "seed": seed},
        },
        "learning_rate": {
            "type": "exp",
            "start_lr": start_lr,
            "stop_lr": start_lr * float(tr["stop_lr_ratio"]),
            "decay_steps": max(1, steps // 20),
        },
        "loss": {
            "type": "ener",
            "start_pref_e": float(tr["pref_e"][0]),
            "limit_pref_e": float(tr["pref_e"][1]),
            "start_pref_f": float(tr["pref_f"][0]),
            "limit_pref_f": float(tr["pref_f"][1]),
        },
        "training": {
            "training_data": {"systems": [str(s) for s in train_systems], "batch_size": batch},
            "validation_data": {
                "systems": [str(s) for s in val_systems],
                "batch_size": batch,
                "numb_btch": 1,
            },
            "numb_steps": steps,
            "seed": seed,
            "disp_file": "lcurve.out",
            "disp_freq": steps_per_epoch,
            "save_freq": save,
            "save_ckpt": "model.ckpt",
            "max_ckpt_keep": int(tr["checkpoints"]) + 1,
        },
    }


def lcurve_history(path: Path, steps_per_epoch: int) -> list[dict[str, float]]:
    """Per epoch, deepmd's ``lcurve.out`` row: ``val_force_rmse`` (eV/Å, on the one val batch
    deepmd scores at each display step) and ``train_force_rmse``; empty without the file."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text().splitlines()
    head = next((ln.lstrip("#").split() for ln in lines if ln.startswith("#")), [])
    rows = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    if "rmse_f_val" not in head or "step" not in head:
        return []
    col = {k: head.index(k) for k in ("step", "rmse_f_val", "rmse_f_trn") if k in head}
    out = []
    for r in rows:
        step = int(float(r[col["step"]]))
        if step == 0 or step % steps_per_epoch:
            continue  # the first step's line (before an epoch ends)
        entry = {"epoch": step // steps_per_epoch, "val_force_rmse": float(r[col["rmse_f_val"]])}
        if "rmse_f_trn" in col:
            entry["train_force_rmse"] = float(r[col["rmse_f_trn"]])
        out.append(entry)
    return out


class DeePMDFamily:
    """deepmd-kit (PyTorch backend): se_e2_a, se_e2_r, se_e3 descriptors."""

    name = "deepmd"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        outdir = Path(outdir)
        species, type_map = train.species, train.element_symbols
        with scratch(outdir, f"dp-{spec.name}-") as work:
            tr_sys = write_deepmd(train, work / "train", type_map)
            va_sys = write_deepmd(val, work / "val", type_map)
            inp = input_json(spec.params, spec.training, type_map, tr_sys, va_sys, len(train))
            (work / "input.json").write_text(json.dumps(inp, indent=1))
            env = {
                **os.environ,
                "DP_INTRA_OP_PARALLELISM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
                "DP_INTER_OP_PARALLELISM_THREADS": "1",
                # deepmd-kit's data loader otherwise takes min(4, CPUs) worker processes, and
                # the batches it draws depend on that number: the same seed gave another model
                # on a machine with more cores. Two, fixed: what a 2-core laptop got anyway
                # (the README's runs), and loading beside the steps (0 made the methane
                # trainings a tenth to a third slower)
                "NUM_WORKERS": "2",
            }
            t0 = time.perf_counter()
            steps = inp["training"]["numb_steps"]
            print(
                f"[{spec.name}] dp --pt train: {steps} steps "
                f"({inp['training']['disp_freq']} per epoch)",
                flush=True,
            )
            tail = run_streaming(
                [sys.executable, "-m", "deepmd", "--pt", "train", "input.json"],
                work,
                env,
                prefix=f"[{spec.name}] ",
            )
            if tail is not None:
                raise ElmlffError(
                    f"base '{spec.name}': dp --pt train failed: {tail}",
                    "read the full log above and fix the base's params",
                )
            seconds = time.perf_counter() - t0
            history = lcurve_history(work / "lcurve.out", inp["training"]["disp_freq"])
            best, scores = self._select(work, spec.name, val)
            shutil.copy(best, outdir / MODEL_FILE)
            return {
                "params": {**DEFAULT_PARAMS, **spec.params},
                "training": {**DEFAULT_TRAINING, **spec.training},
                # every step runs (no early stopping); the checkpoint is chosen on val
                "epochs_run": steps // inp["training"]["disp_freq"],
                "best_epoch": -(
                    -int(re.findall(r"-(\d+)\.pt$", best.name)[0]) // inp["training"]["disp_freq"]
                ),
                "steps": steps,
                # deepmd's lcurve: force RMSE on one val batch per epoch (not the whole val set)
                "history": history,
                "best_checkpoint": best.name,
                "val_force_rmse_per_checkpoint": scores,
                "train_seconds": seconds,
                "species": species,
                "type_map": type_map,
            }

    @staticmethod
    def _select(work: Path, name: str, val: Frames) -> tuple[Path, dict[str, float]]:
        """The saved checkpoint with the lowest force RMSE on the validation frames."""
        ckpts = sorted(
            work.glob("model.ckpt-*.pt"), key=lambda p: int(re.findall(r"-(\d+)\.pt$", p.name)[0])
        )
        if not ckpts:
            raise ElmlffError(
                f"base '{name}': deepmd wrote no checkpoint",
                "raise max_epochs so training saves at least once",
            )
        scores = {}
        for c in ckpts:
            pot = DeePMDPotential(name, c, {"species": val.species})
            scores[c.name] = force_rmse(pot.predict(val)[1], val.forces)
        best = min(scores, key=scores.get)
        print(
            f"[{name}] checkpoint chosen on validation: {best} "
            f"(force RMSE {1e3 * scores[best]:.2f} meV/Å)",
            flush=True,
        )
        return work / best, scores

    def load(self, outdir: Path, device: str = "cpu") -> DeePMDPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        return DeePMDPotential(info["name"], path, info)


class DeePMDPotential:
    """A trained deepmd-kit model behind the :class:`~elmlff.bases.Potential` Protocol."""

    family = "deepmd"

    def __init__(self, name: str, path: Path, info: dict[str, Any]) -> None:
        from deepmd.infer import DeepPot

        self.name = name
        self.info = info
        self.dp = DeepPot(str(path))
        self.type_map = self.dp.get_type_map()
        self.species = [int(z) for z in info.get("species", [])] or [
            chemical_symbols.index(s) for s in self.type_map
        ]
        self._type_of = {chemical_symbols.index(s): i for i, s in enumerate(self.type_map)}
        self.module = self.dp.deep_eval.dp.model["Default"]

    def _types(self, numbers) -> np.ndarray:
        return np.array([self._type_of[int(z)] for z in numbers])

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        check_species(self.name, self.species, frames.numbers)
        energy = np.zeros(len(frames))
        forces = np.zeros_like(frames.forces)
        for (numbers, periodic), idx in composition_groups(frames).items():
            sub = frames.subset(idx)
            nat = len(numbers)
            for s in range(0, len(idx), batch_size):
                b = sub.subset(range(s, min(s + batch_size, len(idx))))
                e, f, _ = self.dp.eval(
                    b.positions.reshape(len(b), nat * 3),
                    b.cell.reshape(len(b), 9) if periodic else None,
                    self._types(numbers),
                )
                energy[idx[s : s + len(b)]] = e.reshape(-1)
                forces[frames.atom_index(idx[s : s + len(b)])] = f.reshape(-1, 3)
        return energy, forces

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        frames = frames_from_tensors(positions, numbers, n_atoms, cell, pbc, self.name)
        check_species(self.name, self.species, frames.numbers)
        out = torch.zeros(len(frames), dtype=torch.float64, device=positions.device)
        # one call of deepmd's TorchScript model per composition, as in predict()
        for (z, periodic), idx in composition_groups(frames).items():
            atoms = torch.as_tensor(frames.atom_index(idx), device=positions.device)
            coord = positions[atoms].to(torch.float64).reshape(len(idx), len(z), 3)
            atype = torch.as_tensor(self._types(z), dtype=torch.long).repeat(len(idx), 1)
            box = cell[torch.as_tensor(idx)].to(torch.float64) if periodic else None
            e = self.module(coord, atype, box=box)["energy"].reshape(-1)
            out = out.index_put((torch.as_tensor(idx, device=out.device),), e)
        return out
