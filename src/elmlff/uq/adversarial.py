"""Adversarial sampling of uncertain configurations, and selection of frames for labelling.

The ensemble force deviation U (U1 of :mod:`elmlff.uq.metrics`) is differentiable through the
live torch bases: each base's forces come from autograd with ``create_graph=True``, so ∇U goes
through second derivatives of the bases. Following the uncertainty-based adversarial attacks
of Schwalbe-Koda et al. (Nat. Commun. 12, 5104, 2021), frames move uphill in

    L(x) = log U(x) − (E(x) − E(x0)) / k_B T,

(U weighted by a Boltzmann factor, so that the configurations found are uncertain *and* likely
at temperature T; E is the weighted mean base energy), i.e. along α∇U − β∇E with α = 1/U and
β = 1/k_B T. Each step moves the atom that moves most by ``max_step`` Å (the direction is
rescaled), for a bounded number of steps. Frames are independent (batched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from elmlff import bases as B
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

KB_EV = 8.617333262e-5  # eV/K


@dataclass
class AttackSettings:
    """How far and how the adversarial sampler moves atoms."""

    steps: int = 20
    max_step: float = 0.02  # Å, largest atom displacement per step
    temperature_K: float = 500.0  # Boltzmann weight of the energy cost (lower: stay lower in E)


def differentiable_u(
    pots: Sequence[B.Potential],
    weights: np.ndarray,
    positions: torch.Tensor,
    numbers: torch.Tensor,
    n_atoms: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U1 (F,), weighted mean base energy (F,)) as differentiable functions of ``positions``."""
    from elmlff.meta.live import base_outputs

    em, fm = base_outputs(pots, positions, numbers, n_atoms, cell, pbc, create_graph=True)
    w = torch.as_tensor(weights, dtype=fm.dtype)
    dev = (fm - fm.mean(dim=1, keepdim=True)).norm(dim=2)  # (A, M)
    frame = torch.repeat_interleave(torch.arange(len(n_atoms)), n_atoms)
    worst = torch.zeros(len(n_atoms), fm.shape[1], dtype=fm.dtype).scatter_reduce(
        0, frame[:, None].expand_as(dev), dev, reduce="amax", include_self=False
    )
    u = torch.sqrt((worst**2 * w).sum(dim=1))
    return u, em @ w


def attack(
    frames: Frames,
    pots: Sequence[B.Potential],
    weights: np.ndarray,
    settings: AttackSettings,
    log=print,
) -> tuple[list[Frames], pd.DataFrame]:
    """Move every frame ``settings.steps`` times uphill in L = log U − ΔE/k_B T. Returns the
    frames after each step (step 0 = the start) and a table: frame, step, U (eV/Å), energy and
    its change from the start (eV), the largest displacement from the start (Å); ``frame``
    counts the given frames from 0."""
    if settings.steps < 1 or settings.max_step <= 0:
        raise ElmlffError("adversarial sampling needs steps >= 1 and max_step > 0", "fix them")
    if len(pots) < 2:
        raise ElmlffError("adversarial sampling needs an ensemble of 2 or more bases", "add bases")
    from elmlff.bases import frame_tensors

    numbers, n_atoms, cell, pbc = frame_tensors(frames)
    x0 = torch.as_tensor(frames.positions, dtype=torch.float64)
    x = x0.clone()
    frame = torch.repeat_interleave(torch.arange(len(frames)), n_atoms)
    beta = 1.0 / (KB_EV * settings.temperature_K)
    out, rows, e0 = [], [], None
    for step in range(settings.steps + 1):
        pos = x.clone().requires_grad_(True)
        u, e = differentiable_u(pots, weights, pos, numbers, n_atoms, cell, pbc)
        if e0 is None:
            e0 = e.detach()
        u_, e_ = u.detach(), e.detach()
        objective = torch.log(u.clamp_min(1e-12)) - beta * (e - e0)
        (g,) = torch.autograd.grad(objective.sum(), pos)
        snap = frames.subset(np.arange(len(frames)))
        snap.positions = x.numpy().copy()
        out.append(snap)
        disp = (x - x0).norm(dim=1)
        moved = torch.zeros(len(frames), dtype=x.dtype).scatter_reduce(
            0, frame, disp, reduce="amax", include_self=False
        )
        for i in range(len(frames)):
            rows.append(
                {
                    "frame": i,
                    "step": step,
                    "U": float(u_[i]),
                    "energy": float(e_[i]),
                    "dE": float(e_[i] - e0[i]),
                    "max_displacement": float(moved[i]),
                }
            )
        if step == settings.steps:
            break
        gn = g.norm(dim=1)
        gmax = torch.zeros(len(frames), dtype=x.dtype).scatter_reduce(
            0, frame, gn, reduce="amax", include_self=False
        )
        scale = settings.max_step / gmax.clamp_min(1e-12)
        x = x + scale[frame, None] * g.detach()
        if step % max(settings.steps // 5, 1) == 0:
            de = 1e3 * float((e_ - e0).mean())
            log(
                f"adversarial step {step + 1}/{settings.steps}: mean U "
                f"{1e3 * float(u_.mean()):.1f} meV/Å, mean ΔE {de:.1f} meV"
            )
    return out, pd.DataFrame(rows)


def write_samples(path: Path, trajectory: list[Frames], table: pd.DataFrame) -> None:
    """The sampled frames (every step) as extxyz with U, energy and step in ``info``."""
    from ase.io import write

    from elmlff.io import atomic_path

    atoms = []
    for step, fr in enumerate(trajectory):
        rows = table[table.step == step]
        for i, a in enumerate(fr.to_atoms()):
            r = rows.iloc[i]
            a.calc = None
            a.info.update(
                {"source_frame": int(r.frame), "step": step, "U": r.U, "energy_mean": r.energy}
            )
            atoms.append(a)
    with atomic_path(path) as tmp:
        write(tmp, atoms, format="extxyz")


def select_for_labelling(
    paths: Sequence[Path],
    out: Path,
    key: str = "uncertainty",
    u_c: float | None = None,
    top: int | None = None,
) -> int:
    """Frames of ``paths`` (extxyz: MD trajectories carry ``uncertainty``, adversarial samples
    ``U``, in ``info``) with U above ``u_c``, or the ``top`` most uncertain, written to ``out``
    ready for a reference calculation. Returns how many were written."""
    from ase.io import read, write

    from elmlff.io import atomic_path

    if (u_c is None) == (top is None):
        raise ElmlffError("select frames by a threshold or a count", "pass one of --u-c, --top")
    pool = []
    for p in paths:
        if not Path(p).exists():
            raise ElmlffError(f"file not found: {p}", "pass existing extxyz files")
        for i, a in enumerate(read(p, index=":", format="extxyz")):
            u = a.info.get(key, a.info.get("U"))
            if u is None:
                raise ElmlffError(
                    f"{p}: frame {i} has no '{key}' (or 'U') in its info",
                    "run MD with an ensemble calculator, or pass --key",
                )
            a.info.update({"selected_from": str(p), "selected_index": i, "U_selected": float(u)})
            a.calc = None
            pool.append((float(u), a))
    pool.sort(key=lambda t: -t[0])
    chosen = [a for u, a in pool if u > u_c] if u_c is not None else [a for _, a in pool[:top]]
    with atomic_path(out) as tmp:
        write(tmp, chosen, format="extxyz")
    return len(chosen)


def reference_calculator(spec: str | None, kwargs: dict | None = None):
    """An ASE calculator from ``module:Class`` (e.g. ``ase.calculators.emt:EMT``), or None."""
    if not spec:
        return None
    import importlib

    module, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(**(kwargs or {}))
    except (ImportError, AttributeError, TypeError) as exc:
        raise ElmlffError(
            f"reference calculator {spec!r} cannot be made: {exc}",
            "name an installed ASE calculator as module:Class (uncertainty.reference)",
        ) from None


def label(trajectory: list[Frames], pots, weights, calc) -> pd.DataFrame:
    """Per sampled frame (every step): U1 and the ensemble mean force's error against the
    reference calculator ``calc`` (ΔF = max_j ‖F_ref − ⟨F⟩‖)."""
    from elmlff.uq.metrics import ensemble_uncertainty

    rows = []
    for step, fr in enumerate(trajectory):
        f = np.stack([p.predict(fr)[1] for p in pots])
        ref = []
        for a in fr.to_atoms():
            a.calc = calc
            ref.append(a.get_forces())
        t = ensemble_uncertainty(f, fr.n_atoms, weights, np.concatenate(ref))
        t.insert(0, "step", step)
        rows.append(t)
    return pd.concat(rows, ignore_index=True)


def adversarial_stage(
    dataset_dir: Path,
    out_xyz: Path,
    out_csv: Path,
    out_json: Path,
    n_starts: int = 8,
    settings: AttackSettings | None = None,
    reference: str | None = None,
    reference_kwargs: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> pd.DataFrame:
    """Adversarial samples of a campaign's base ensemble (live on ``device``) from ``n_starts``
    random test frames:
    the trajectories (extxyz), U along them (CSV) and a summary; with a reference calculator the
    samples are labelled and Spearman ρ(U, ΔF) is reported, otherwise U only (and it says so)."""
    import json

    from elmlff import store
    from elmlff.data import Split
    from elmlff.io import atomic_path
    from elmlff.layout import DatasetLayout
    from elmlff.meta.live import load_bases
    from elmlff.uq.metrics import spearman, val_rmse_weights

    d = Path(dataset_dir)
    s = settings or AttackSettings()
    lay = DatasetLayout.of(d)
    ds = store.open_store(lay.store)
    split = Split.load(lay.split)
    models = ds["model"].values.astype(str).tolist()
    _, w = val_rmse_weights(lay.baselines, models)
    pots = load_bases(lay.trained_bases(models), models, device, store.energy_offsets(ds))
    test = np.sort(split.roles["test"])
    starts = np.sort(np.random.default_rng(seed).choice(test, min(n_starts, len(test)), False))
    frames = store.frames_from_dataset(ds).subset(starts)
    traj, table = attack(frames, pots, w, s)
    table.insert(0, "start_frame", np.repeat(starts[None], s.steps + 1, axis=0).ravel())
    write_samples(out_xyz, traj, table)
    calc = reference_calculator(reference, reference_kwargs)
    first, last = table[table.step == 0], table[table.step == s.steps]
    info: dict = {
        "dataset": d.name,
        "starts": starts.tolist(),
        "settings": s.__dict__,
        "weights": dict(zip(models, w.tolist(), strict=True)),
        "U_start_mean": float(first.U.mean()),
        "U_end_mean": float(last.U.mean()),
        "U_raised_fraction": float((last.U.to_numpy() > first.U.to_numpy()).mean()),
        "dE_end_mean": float(last.dE.mean()),
        "reference": reference,
    }
    if calc is not None:
        lab = label(traj, pots, w, calc)
        table["dF"] = lab.dF.to_numpy()
        info["spearman_U1_dF"] = spearman(lab.U1, lab.dF)
        info["dF_start_mean"] = float(lab.dF[lab.step == 0].mean())
        info["dF_end_mean"] = float(lab.dF[lab.step == s.steps].mean())
    else:
        info["note"] = "no reference calculator configured: U only, the samples are unlabelled"
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=float) + "\n")
    return table
