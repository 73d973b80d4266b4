"""MD as a workflow stage: one replica of one model per job, then a tidy summary and a
Table-1-like table ("Forces are not Enough" protocol), all from files under ``results/``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff import store
from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path, atomic_write_text
from elmlff.layout import DatasetLayout
from elmlff.log import log, warn
from elmlff.md.observables import (
    HR_BINS,
    bond_lengths,
    covalent_bonds,
    diffusivity,
    energy_drift,
    h_of_r,
    h_of_r_error,
    is_molecule,
    loop_work,
    make_adsorbates_whole,
    make_whole,
    rdf,
    rdf_error,
    rdf_window_collapse,
)
from elmlff.md.run import MDSettings, run_md


def reference_frames(ds, split: Split, like: int, which: str = "test") -> np.ndarray:
    """Frames of the store with the same atoms (same numbers in the same order) as frame
    ``like``: the test frames, or every frame (``which="all"``)."""
    frames = store.frames_from_dataset(ds)
    pool = split.roles["test"] if which == "test" else np.arange(len(frames))
    return same_atoms(frames, frames.numbers[frames.atom_index([like])], pool)


def same_atoms(frames, z0: np.ndarray, pool) -> np.ndarray:
    """The frames of ``pool`` whose atomic numbers are ``z0`` in that order."""
    same = [
        f
        for f in pool
        if frames.n_atoms[f] == len(z0)
        and np.array_equal(frames.numbers[frames.atom_index([f])], z0)
    ]
    return np.asarray(same, dtype=np.int64)


def reference_positions(
    ds, split: Split, start: int, which: str, extra: Mapping[str, Any] | None
) -> np.ndarray:
    """(T, N, 3) positions of the MD reference frames of the start frame's molecule: the test
    frames or every store frame, plus the frames of ``extra`` (a data spec of more parts, read
    only here, never trained on) with the same atoms."""
    frames = store.frames_from_dataset(ds)
    idx = reference_frames(ds, split, start, which)
    z0 = frames.numbers[frames.atom_index([start])]
    pos = [frames.positions[frames.atom_index(idx)].reshape(len(idx), -1, 3)]
    if extra:
        from elmlff.data.source import load_dataset

        more, _ = load_dataset("md reference", extra)
        keep = same_atoms(more, z0, range(len(more)))
        pos.append(more.positions[more.atom_index(keep)].reshape(len(keep), -1, 3))
    out = np.concatenate(pos)
    log(
        f"MD reference: {len(out)} frames ({which} frames of the store"
        + (", extra parts)" if extra else ")")
    )
    return out


def reference_bond_lengths(
    pairs: np.ndarray, ref_pos: np.ndarray, molecule: bool
) -> np.ndarray | None:
    """The lengths a bond deviation is measured from: for a molecule, each bond's mean over the
    reference frames (made whole), as the benchmark does; for a condensed phase, the start
    frame's own (None: :func:`~elmlff.md.run.run_md` takes them). A slab's or a liquid's
    reference frames are other configurations, where a bond of the start frame (an adsorbate
    on a surface atom, a pair near a wrapped boundary) joins atoms that sit elsewhere, so their
    mean length says nothing about that bond."""
    if not len(pairs) or not molecule:
        return None
    return bond_lengths(ref_pos, pairs).mean(axis=0)


def fixed_atoms(ref_pos: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Indices of the atoms that sit still (within ``tol`` Å) in every reference frame
    ``(T, N, 3)``: a substrate the reference calculation held fixed (methanol/Cu(100): the two
    lower Cu layers), which MD then holds fixed too. None from fewer than two frames."""
    if len(ref_pos) < 2:
        return np.zeros(0, dtype=np.int64)
    moved = np.abs(ref_pos - ref_pos[0]).max(axis=(0, 2))
    return np.flatnonzero(moved < tol)


#: the MD model name that stands for the meta-model of lowest val force RMSE
BEST_META = "best_meta"


def best_meta(metrics_csv: Path, metas: Sequence[str]) -> str:
    """The meta of ``metas`` with the lowest val force RMSE in ``metrics.csv`` (never test)."""
    m = pd.read_csv(metrics_csv)
    val = m[(m.split == "val") & (m.metric == "force_rmse") & m.model.isin(list(metas))]
    val = val.set_index("model").value
    missing = [x for x in metas if x not in val.index]
    if not metas or missing:
        raise ElmlffError(
            f"best_meta: no val force RMSE for meta(s) {missing or '(none given)'} in "
            f"{metrics_csv}",
            "train and evaluate the metas first (run_metas)",
        )
    chosen = str(val.loc[list(metas)].idxmin())
    log(f"best_meta: {chosen} (lowest val force RMSE of {list(metas)})")
    return chosen


def start_candidates(
    frames, pool: np.ndarray, elements: Sequence[str] = (), min_atoms: int = 0
) -> np.ndarray:
    """The frames of ``pool`` an MD run may start from: all, or those made of exactly the
    chemical ``elements`` (symbols), with at least ``min_atoms`` atoms."""
    pool = np.asarray(pool)
    if min_atoms:
        pool = pool[np.asarray(frames.n_atoms)[pool] >= min_atoms]
        if not len(pool):
            raise ElmlffError(
                f"md.start_min_atoms {min_atoms}: no test frame has that many atoms",
                "lower md.start_min_atoms",
            )
    if not len(elements):
        return pool
    from ase.data import atomic_numbers

    unknown = [e for e in elements if e not in atomic_numbers]
    if unknown:
        raise ElmlffError(f"md.start_elements: unknown element(s) {unknown}", "use symbols")
    want = {atomic_numbers[e] for e in elements}
    keep = [f for f in pool if set(frames.numbers[frames.atom_index([f])].tolist()) == want]
    if not keep:
        raise ElmlffError(
            f"md.start_elements {list(elements)}: no test frame is made of exactly these elements"
            + (f" with at least {min_atoms} atoms" if min_atoms else ""),
            "name the elements of one of the data set's systems",
        )
    return np.asarray(keep)


def run_replica(
    dataset_dir: Path,
    model: str,
    replica: int,
    settings: Mapping[str, Any],
    trajectory: Path,
    out_json: Path,
    subset: str = "all",
    diffusing_species: int | None = None,
    reference: str = "test",
    reference_data: Mapping[str, Any] | None = None,
    device: str = "cpu",
    start_elements: Sequence[str] = (),
    choose_from: Sequence[str] = (),
    start_min_atoms: int = 0,
) -> dict[str, Any]:
    """MD of ``model`` (its meta-model and bases on ``device``) from a seeded random test frame
    (one made of exactly ``start_elements`` where given, with at least ``start_min_atoms``
    atoms: one element's bulk cells of a materials set); observables against the reference
    frames (:func:`reference_positions`: the test frames, or every frame of the data set as
    the benchmark does, plus any extra reference parts). ``model`` :data:`BEST_META` is the
    meta of ``choose_from`` with the lowest val force RMSE (:func:`best_meta`), recorded as
    ``model`` (``requested``: best_meta).

    The start frame decides molecule or condensed phase (:func:`is_molecule`, from the
    structure: methane in its periodic box is a molecule). A molecule gets the bond criterion
    and h(r) only, and starts without net rotation; a periodic condensed phase also gets the
    RDF error, the RDF-window criterion and the diffusivity, and the atoms the reference
    frames never move (:func:`fixed_atoms`) stay fixed. The data's configurational
    temperature (:func:`data_temperature`, through the ensemble's differentiable base of lowest
    val force RMSE: a base that learned little gives a meaningless one) is recorded beside the
    MD temperature, with a warning when they differ by more than a factor of 2."""
    from ase.io import read

    from elmlff.calculator import EnsembleCalculator
    from elmlff.loader import load_ensemble

    dataset_dir = Path(dataset_dir)
    lay = DatasetLayout.of(dataset_dir)
    s = MDSettings(**{**settings, "seed": int(settings.get("seed", 0)) + replica})
    requested = model
    if model == BEST_META:
        model = best_meta(lay.metrics, choose_from)
    ds = store.open_store(lay.store)
    split = Split.load(lay.split)
    frames = store.frames_from_dataset(ds)
    starts = start_candidates(frames, split.roles["test"], start_elements, start_min_atoms)
    start = int(np.random.default_rng(s.seed).choice(starts))
    atoms = frames.subset([start]).to_atoms()[0]
    molecule = is_molecule(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
    ref_pos = reference_positions(ds, split, start, reference, reference_data)
    if molecule:  # a molecule wrapped across the box's boundary is made whole first
        atoms.positions = make_whole(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
        ref_pos = np.stack(
            [make_whole(atoms.numbers, x, atoms.cell[:], atoms.pbc) for x in ref_pos]
        )
    else:  # a substrate the reference held fixed stays fixed (FixAtoms), as in the data
        from ase.constraints import FixAtoms

        atoms.positions = make_adsorbates_whole(
            atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc
        )
        fixed = fixed_atoms(ref_pos)
        if len(fixed):
            atoms.set_constraint(FixAtoms(indices=fixed))
            log(f"{len(fixed)} atoms fixed in MD: they never move in the reference frames")
    pairs = covalent_bonds(atoms.numbers, atoms.positions)
    ref_lengths = reference_bond_lengths(pairs, ref_pos, molecule)
    calc = EnsembleCalculator(load_ensemble(dataset_dir, model, subset, device))
    bases = [p.name for p in calc.ensemble.bases]
    # the data's temperature from the val and test frames of the start frame's system
    like = np.sort(np.concatenate([split.roles["val"], split.roles["test"]]))
    temperature = data_temperature(
        most_accurate_first(calc.ensemble.bases, lay.baselines),
        frames.subset(start_candidates(frames, like, start_elements, start_min_atoms)),
        s.temperature_K,
        lay.dataset,
        seed=s.seed,
    )
    u_c = None
    if len(bases) >= 2:  # the uncertainty monitor: U1 every step, U_c from the val frames
        calc.uq_weights, u_c = uncertainty_reference(dataset_dir, ds, frames, split, bases)
    elif calc.delta_base is not None:  # a direct-force base alone: its U_Δ, U_c on val frames
        u_c = float(
            calc.delta_base.force_delta(frames.subset(np.sort(split.roles["val"])))[0].max()
        )
    if u_c is not None and s.u_threshold <= 0:
        s = dataclasses.replace(s, u_threshold=u_c)
    log(f"MD of {model} replica {replica} from test frame {start}: {s}")
    # frames go to a .partial file as they come (a killed job keeps them there), renamed at the end
    partial = Path(f"{trajectory}.partial")
    res = run_md(atoms, calc, s, partial, ref_lengths, log=log, molecule=molecule)
    traj = read(partial, index=":", format="extxyz")
    os.replace(partial, trajectory)
    pos = np.stack([a.positions for a in traj])
    dt_ps = s.timestep_fs * 1e-3 * s.record_every
    out = {"dataset": dataset_dir.name, "model": model, "replica": replica, "start_frame": start}
    out["requested"] = requested
    out["start_formula"] = atoms.get_chemical_formula()
    out.update(res.to_dict())
    out["fixed_atoms"] = len(atoms.constraints[0].index) if atoms.constraints else 0
    out["horizon_ps"] = s.steps * s.timestep_fs * 1e-3  # the configured run length
    out["temperature_K"] = s.temperature_K
    out["reference"] = reference + ("+parts" if reference_data else "")
    out["reference_frames"] = len(ref_pos)
    out["reference_hr"] = h_of_r(ref_pos).tolist()  # what hr_mae compares with (the figure too)
    out.update(temperature)
    # a run the uncertainty monitor stopped neither completed nor collapsed: stability unknown
    out["stable"] = None if res.stopped == "uncertainty" else res.stopped == "completed"
    out.update(uncertainty_warning(traj, s.u_threshold, res.collapse_time_ps))
    out.update(
        structure_observables(
            pos, ref_pos, atoms, dt_ps, bool(out["stable"]), molecule, diffusing_species
        )
    )
    out.update(conservation(atoms, calc, s, traj, trajectory))
    atomic_write_text(out_json, json.dumps(out, indent=1, default=float) + "\n")
    log(
        f"{model} replica {replica}: {res.stopped} after {res.time_ps:.3f} ps, "
        f"{res.steps_per_second:.1f} steps/s, h(r) error {out['hr_mae']:.3f}"
    )
    return out


def structure_observables(
    pos: np.ndarray,
    ref_pos: np.ndarray,
    atoms,
    dt_ps: float,
    stable: bool,
    molecule: bool,
    diffusing_species: int | None = None,
) -> dict[str, Any]:
    """Observables of a trajectory ``pos (T, N, 3)`` against the reference frames ``ref_pos``:
    h(r) error for every system; for a periodic condensed phase (not a ``molecule``, which
    keeps to the bond criterion and h(r) even in a periodic box) also the RDF error, the
    benchmark's RDF-window collapse (10 frames off by MAE > 0.1) and, for a stable run of at
    least 10 frames, the diffusivity (of ``diffusing_species``, else all atoms)."""
    out: dict[str, Any] = {
        "molecule": bool(molecule),
        "hr_mae": h_of_r_error(h_of_r(pos), h_of_r(ref_pos)) if len(pos) > 1 else np.nan,
    }
    if molecule or not np.asarray(atoms.pbc).all():
        return out
    _, g = rdf(pos, atoms.cell[:], atoms.numbers, r_max=6.0)
    _, g_ref = rdf(ref_pos, atoms.cell[:], atoms.numbers, r_max=6.0)
    out["rdf_mae"] = rdf_error(g, g_ref)
    first = rdf_window_collapse(pos, atoms.cell[:], atoms.numbers, g_ref, 10, 0.1)
    out["rdf_collapse_time_ps"] = None if first is None else first * dt_ps
    mask = None if diffusing_species is None else atoms.numbers == diffusing_species
    # positions in the extxyz are not wrapped by ASE's integrators: the MSD is unwrapped
    long_enough = stable and len(pos) >= 10
    out["diffusivity_A2_per_ps"] = diffusivity(pos, dt_ps, mask) if long_enough else np.nan
    return out


def most_accurate_first(pots: Sequence[Any], baselines_json: Path) -> list[Any]:
    """The bases ``pots`` by val force RMSE (``baselines.json``), lowest first; one base as is."""
    pots = list(pots)
    if len(pots) < 2:
        return pots
    from elmlff.uq.metrics import val_rmse_weights

    rmse, _ = val_rmse_weights(baselines_json, [p.name for p in pots])
    return [pots[i] for i in np.argsort(rmse, kind="stable")]


def data_temperature(
    pots: Sequence[Any],
    frames,
    target_K: float,
    dataset: str,
    seed: int = 0,
    max_frames: int = 128,
    n_probes: int = 4,
    max_atoms: int = 2048,
) -> dict[str, Any]:
    """The configurational temperature of ``frames`` (the store's val and test frames, with
    their reference forces) through the first differentiable base of ``pots``
    (:func:`elmlff.md.temperature.estimate_temperature`; at most ``max_frames`` frames and
    about ``max_atoms`` atoms, at least 8 frames), as ``data_temperature_K`` and
    ``data_temperature_base``; a warning line when the MD's ``target_K`` differs from it by
    more than a factor of 2. Nothing (and a log line saying why) where no base can tell."""

    from elmlff.bases import is_differentiable
    from elmlff.md.temperature import estimate_temperature

    pot = next((p for p in pots if is_differentiable(p)), None)
    if pot is None:
        log("no data temperature estimate: no base with a differentiable energy")
        return {"data_temperature_K": None}
    max_frames = min(max_frames, max(8, int(max_atoms / np.mean(frames.n_atoms))))
    try:
        t = estimate_temperature(pot, frames, n_probes, max_frames, seed)
    except (ElmlffError, RuntimeError) as exc:  # advice only: the MD runs without it
        log(f"no data temperature estimate through {pot.name}: {str(exc).splitlines()[0]}")
        return {"data_temperature_K": None, "data_temperature_base": pot.name}
    log(
        f"configurational temperature of the val/test frames through {pot.name}: {t:.0f} K "
        f"(MD at {target_K:g} K)"
    )
    if not 0.5 <= target_K / t <= 2.0:
        warn(
            f"MD at {target_K:g} K but the data's configurational temperature is ~{t:.0f} K "
            f"(factor > 2); set datasets.{dataset}.md.settings.temperature_K"
        )
    return {"data_temperature_K": t, "data_temperature_base": pot.name}


def uncertainty_reference(
    dataset_dir: Path, ds, frames, split: Split, bases: Sequence[str]
) -> tuple[np.ndarray, float]:
    """(U1 weights ∝ 1/val force RMSE of ``bases`` from baselines.json, U_c = the largest U1 of
    those bases on the val frames of the store): U above anything seen on validation data."""
    from elmlff import keys
    from elmlff.uq.metrics import ensemble_uncertainty, val_rmse_weights

    _, w = val_rmse_weights(DatasetLayout.of(dataset_dir).baselines, list(bases))
    idx = np.sort(split.roles["val"])
    names = ds["model"].values.astype(str).tolist()
    f = ds[keys.BASE_FORCES].values[[names.index(b) for b in bases]][:, frames.atom_index(idx)]
    u = ensemble_uncertainty(f, frames.n_atoms[idx], w).U1.to_numpy()
    return w, float(u.max())


def uncertainty_warning(traj: list, u_c: float, collapse_ps: float | None) -> dict[str, Any]:
    """When U first exceeded U_c in the recorded frames, and (for a collapse) how long before
    the collapse that was (positive: U warned in time)."""
    u = np.array([a.info.get("uncertainty", np.nan) for a in traj])
    t = np.array([a.info.get("time_ps", np.nan) for a in traj])
    if not np.isfinite(u).any() or u_c <= 0:
        return {}
    above = np.flatnonzero(u > u_c)
    cross = float(t[above[0]]) if len(above) else None
    out: dict[str, Any] = {
        "u_threshold": u_c,
        "u_max": float(np.nanmax(u)),
        "u_cross_time_ps": cross,
    }
    if collapse_ps is not None:
        out["u_warning_ps"] = None if cross is None else collapse_ps - cross
    return out


def conservation(atoms, calc, s: MDSettings, traj: list, trajectory: Path) -> dict[str, Any]:
    """How conservative the model is, from the start frame: the NVE energy drift (the main run
    when it is NVE, else a second ``nve_probe_steps`` NVE run with the same velocities; only for
    models with an energy) and the work ∮F·dx around a closed loop (every model; 0 for a
    conservative one)."""
    import tempfile

    from ase.io import read

    out: dict[str, Any] = {"nve_drift_eV_per_atom_ps": None}
    has_energy = "energy" in calc.results
    if has_energy and s.thermostat == "nve":
        totals = [a.info.get("total_energy") for a in traj]
        dt_ps = s.timestep_fs * 1e-3 * s.record_every
        out["nve_drift_eV_per_atom_ps"] = energy_drift(np.array(totals), len(atoms), dt_ps)
    elif has_energy and s.nve_probe_steps:
        probe = dataclasses.replace(
            s,
            thermostat="nve",
            steps=s.nve_probe_steps,
            record_every=max(s.nve_probe_steps // 50, 1),
        )
        with tempfile.TemporaryDirectory(dir=Path(trajectory).parent) as tmp:
            res = run_md(atoms, calc, probe, Path(tmp) / "nve.extxyz", log=lambda m: None)
            nve = read(Path(tmp) / "nve.extxyz", index=":", format="extxyz")
        totals = np.array([a.info["total_energy"] for a in nve])
        dt_ps = probe.timestep_fs * 1e-3 * probe.record_every
        out["nve_drift_eV_per_atom_ps"] = energy_drift(totals, len(atoms), dt_ps)
        out["nve_probe_ps"] = res.time_ps
        out["nve_probe_stopped"] = res.stopped
    probe_atoms = atoms.copy()
    probe_atoms.set_constraint()  # the loop moves every coordinate; fixed ones feel forces too
    probe_atoms.calc = calc

    def forces(x: np.ndarray) -> np.ndarray:
        probe_atoms.positions = x
        return probe_atoms.get_forces()

    out["loop_work_eV"] = loop_work(forces, atoms.positions, s.loop_radius, 32, seed=s.seed)
    out["loop_radius_A"] = s.loop_radius
    drift = out["nve_drift_eV_per_atom_ps"]
    drift = "n/a (no energy)" if drift is None else f"{1e3 * drift:.3g} meV/atom/ps"
    log(
        f"conservation: NVE drift {drift}, loop work {1e3 * out['loop_work_eV']:.3g} meV "
        f"(loop radius {s.loop_radius} Å)"
    )
    return out


#: per-replica quantities that go into md_summary.csv
SUMMARY_KEYS = (
    "time_ps",
    "horizon_ps",
    "time_to_collapse_ps",
    "collapse_time_ps",
    "stable",
    "steps_per_second",
    "hr_mae",
    "rdf_mae",
    "rdf_collapse_time_ps",
    "diffusivity_A2_per_ps",
    "nve_drift_eV_per_atom_ps",
    "loop_work_eV",
    "loop_radius_A",
    "mean_temperature_K",
    "temperature_K",
    "data_temperature_K",
    "u_threshold",
    "u_max",
    "u_cross_time_ps",
    "u_warning_ps",
)


def time_to_collapse(d: Mapping[str, Any]) -> float | None:
    """The benchmark's time to collapse of one replica (its JSON ``d``): when it collapsed (or
    blew up: NaN forces, runaway temperature, calculator error), else the run's full length
    ``horizon_ps``; None for a run the uncertainty monitor stopped (stability unknown)."""
    stopped = str(d["stopped"])
    if stopped == "uncertainty":
        return None
    if stopped == "completed":
        return float(d.get("horizon_ps") or d["time_ps"])
    collapse = d.get("collapse_time_ps")
    return float(d["time_ps"] if collapse is None else collapse)


def summarize(
    replica_jsons: Sequence[Path], metrics_csv: Path, out_csv: Path, out_md: Path
) -> pd.DataFrame:
    """``md_summary.csv`` (tidy: dataset, model, replica, metric, value; replica ``all`` holds
    the means over replicas) and a Table-1-like Markdown table (force MAE from ``metrics.csv``).

    Time to collapse is the benchmark's number, ``time_to_collapse_ps``: the mean over all
    replicas with a stable run counted at its full length (``horizon_ps``), beside the stable
    percentage; ``collapse_time_ps`` (replica ``all``) is the mean over the replicas that
    collapsed only."""
    rows, radii, horizons, temps, data_temps, fixed = [], set(), set(), set(), [], set()
    starts: dict[str, set] = {}
    for p in replica_jsons:
        if not Path(p).exists():
            raise ElmlffError(f"MD result {p} not found", "run the md_replica rule")
        d = json.loads(Path(p).read_text())
        radii.add(d.get("loop_radius_A"))
        d["time_to_collapse_ps"] = time_to_collapse(d)
        if d.get("horizon_ps") is None and d["stopped"] == "completed":
            d["horizon_ps"] = d["time_ps"]  # an older replica JSON: a completed run's length
        horizons.add(d.get("horizon_ps"))
        temps.add(d.get("temperature_K"))
        fixed.add(int(d.get("fixed_atoms") or 0))
        starts.setdefault(d["model"], set()).add(d.get("start_formula", "?"))
        if d.get("data_temperature_K") is not None:
            data_temps.append(float(d["data_temperature_K"]))
        for k in SUMMARY_KEYS:
            if k in d:
                v = d[k]
                rows.append(
                    {
                        "dataset": d["dataset"],
                        "model": d["model"],
                        "replica": str(d["replica"]),
                        "metric": k,
                        "value": np.nan if v is None else float(v),
                    }
                )
        rows.append({**rows[-1], "metric": "stopped_" + d["stopped"].split(":")[0], "value": 1.0})
    df = pd.DataFrame(rows)
    per = df[df.metric.isin(SUMMARY_KEYS)]
    agg = per.groupby(["dataset", "model", "metric"], sort=False).value.mean().reset_index()
    agg["replica"] = "all"
    agg.loc[agg.metric == "stable", "value"] *= 100.0
    agg.loc[agg.metric == "stable", "metric"] = "stable_percent"
    out = pd.concat([df, agg[df.columns]], ignore_index=True)
    with atomic_path(out_csv) as tmp:
        out.to_csv(tmp, index=False)
    metrics = pd.read_csv(metrics_csv)
    mae = metrics[(metrics.split == "test") & (metrics.metric == "force_mae_framemean")]
    mae = mae.set_index("model").value
    horizon = _known(horizons, "{:g} ps", "horizon_ps in md_summary.csv")
    lines = [
        "| model | force MAE, frame mean [meV/Å] | stable [%] "
        f"| time to collapse [ps, of {horizon}] | h(r) error | steps/s "
        "| NVE drift [meV/atom/ps] | loop work [meV] | U > U_c before collapse [ps] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    a = agg.pivot_table(index="model", columns="metric", values="value", sort=False)
    for model, r in a.iterrows():
        lines.append(
            f"| {model} | {1e3 * mae.get(model, np.nan):.2f} | {r['stable_percent']:.0f} | "
            f"{_ps(r.get('time_to_collapse_ps', np.nan))} | "
            f"{r.get('hr_mae', np.nan):.3f} | {r.get('steps_per_second', np.nan):.1f} | "
            f"{_meV(r.get('nve_drift_eV_per_atom_ps', np.nan), 'no energy')} | "
            f"{_meV(np.abs(r.get('loop_work_eV', np.nan)), '-')} | "
            f"{_ps(r.get('u_warning_ps', np.nan))} |"
        )
    n = per.groupby("model").replica.nunique().max()
    text = "\n".join(
        [
            f"MD of {_count(len(a), 'model')} x {_count(n, 'replica')} of {horizon} at "
            f"{_known(temps, '{:g} K', 'temperature_K in md_summary.csv')}"
            f"{_data_temperature(data_temps)}{_fixed(fixed)}. "
            "h(r) error: ∫|h_MD(r) - h_test(r)| dr with h "
            f"a probability density of all interatomic distances on {len(HR_BINS) - 1} bins over "
            "0-10 Å (0 = identical, 2 = disjoint); time to collapse: the benchmark's number, the "
            "mean over all replicas of the time of the first collapse (a covalent bond, "
            "between non-metal atoms, 0.5 Å off its reference length, or a run that blew up: "
            "NaN forces, runaway temperature, calculator error), "
            "a stable run counted at its full length "
            f"({horizon}), so it reads with the stable percentage (md_summary.csv also has "
            "collapse_time_ps, the mean over the collapsed replicas only); NVE drift: slope of "
            "the total energy per atom "
            "in a run without thermostat from the same start (models with an energy); loop work: "
            f"|∮F·dx| around a closed loop of radius {_radius(radii)} in configuration space at "
            "the start frame, mean over replicas (0 for a conservative force field; a direct "
            "force model has no energy, and this shows its non-conservation); U > U_c before "
            "collapse: how "
            "long before a collapse the ensemble force deviation U1 of the model's bases first "
            "exceeded U_c (the largest U1 on the val frames), mean over collapsed replicas "
            "(- when none collapsed or the model runs one base).",
            "",
            *lines,
            "",
            *condensed_lines(a, starts),
        ]
    )
    atomic_write_text(out_md, text)
    return out


def condensed_lines(a: pd.DataFrame, starts: Mapping[str, set]) -> list[str]:
    """Markdown of the condensed-phase observables (RDF error, diffusivity) of the models
    ``a`` (replica means by metric) that have them; none for molecules."""
    if "rdf_mae" not in a or a["rdf_mae"].isna().all():
        return []
    lines = [
        "Condensed phases: RDF error, the mean |g_MD(r) − g_ref(r)| over 0-6 Å against the "
        "reference frames; self-diffusion coefficient D from the slope of the unwrapped "
        "mean-squared displacement over lags of 1/5 to 1/2 of a stable run (1 Å²/ps = "
        "10⁻⁴ cm²/s); means over replicas.",
        "",
        "| model | start cells | RDF error | D [Å²/ps] |",
        "|---|---|---:|---:|",
    ]
    for model, r in a[a["rdf_mae"].notna()].iterrows():
        d = r.get("diffusivity_A2_per_ps", np.nan)
        lines.append(
            f"| {model} | {', '.join(sorted(starts.get(model, {'?'})))} | "
            f"{r['rdf_mae']:.3f} | {'-' if np.isnan(d) else f'{d:.3f}'} |"
        )
    return [*lines, ""]


def _known(values: set, fmt: str, elsewhere: str) -> str:
    """The one value all runs share, formatted; else where to find each run's."""
    known = {v for v in values if v is not None}
    return fmt.format(known.pop()) if len(known) == 1 else elsewhere


def _data_temperature(temps: Sequence[float]) -> str:
    """' (the data's configurational temperature: ~Y K)' from the replicas' estimates."""
    if not temps:
        return ""
    return f" (the val/test frames' configurational temperature: ~{np.median(temps):.0f} K)"


def _fixed(counts: set[int]) -> str:
    """', N atoms held fixed ...' where the runs held atoms fixed (:func:`fixed_atoms`)."""
    counts = {c for c in counts if c}
    if not counts:
        return ""
    n = "/".join(str(c) for c in sorted(counts))
    return f", {n} atoms held fixed (FixAtoms) where the reference frames never move them"


def _count(n: int, noun: str) -> str:
    """``1 replica``, ``2 replicas``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ps(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _meV(v: float, missing: str) -> str:
    return missing if v is None or not np.isfinite(v) else f"{1e3 * v:.3g}"


def h_of_r_figure(dataset_dir: Path, models: Sequence[str], out: Path) -> None:
    """h(r) of every model's MD (all replicas' frames) beside the test frames' h(r), one panel
    per model, from the trajectories and the store under ``results/{dataset}`` only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.io import read

    lay = DatasetLayout.of(dataset_dir)
    ds = store.open_store(lay.store)
    split = Split.load(lay.split)
    frames = store.frames_from_dataset(ds)
    centres = 0.5 * (HR_BINS[1:] + HR_BINS[:-1])
    ncol = min(len(models), 3)
    nrow = -(-len(models) // ncol)
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(max(4.2 * ncol, 6.5), 3.0 * nrow + (0.4 if ncol == 1 else 0.0)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for ax, model in zip(axes.flat, models, strict=False):
        trajs = lay.md_trajectories(model)
        if not trajs:
            raise ElmlffError(f"no MD trajectories of {model} in {lay.dir}", "run md")
        pos, ref_h, label = [], None, model
        for t in trajs:
            traj = read(t, index=":", format="extxyz")
            pos.append(np.stack([a.positions for a in traj]))
            if ref_h is None:
                info = json.loads(t.with_suffix(".json").read_text())
                if info.get("model", model) != model:  # best_meta: the meta it chose
                    label = f"{model} ({info['model']})"
                which = str(info.get("reference", "test"))
                if "reference_hr" in info:  # the replica's own reference (hr_mae's)
                    ref_h = np.asarray(info["reference_hr"])
                else:  # a replica of an older run: its test frames
                    idx = reference_frames(ds, split, info["start_frame"], "test")
                    ref = frames.positions[frames.atom_index(idx)].reshape(len(idx), -1, 3)
                    ref_h = h_of_r(ref)
        h = h_of_r(np.concatenate([p for p in pos if p.shape[1:] == pos[0].shape[1:]]))
        err = h_of_r_error(h, ref_h)
        ax.plot(centres, ref_h, color="black", lw=1.2, label=f"reference ({which} frames)")
        ax.plot(centres, h, color="#C44E52", lw=1.0, label=f"MD ({_count(len(trajs), 'replica')})")
        ax.set_title(f"{label}: ∫|Δh| dr = {err:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for col in range(ncol):  # the lowest visible panel of each column carries the r axis
        ax = axes[(len(models) - 1 - col) // ncol, col]
        ax.set_xlabel("r [Å]")
        ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("h(r) [1/Å]")
    axes[0][0].legend(fontsize=8)
    hi = np.flatnonzero(ref_h > 0)
    axes[0][0].set_xlim(0, min(10.0, HR_BINS[hi[-1] + 1] + 0.5) if len(hi) else 10.0)
    sep = " " if ncol > 1 else "\n"  # one narrow panel: the title on two lines
    fig.suptitle(
        f"{lay.dataset}: distribution of interatomic distances in MD{sep}(∫|Δh| dr of the "
        "replicas pooled; the MD table averages each replica's own)",
        fontsize=10 if ncol > 1 else 9,
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def _radius(radii: set) -> str:
    """The loop radius of the runs ('x Å'; else where to find it)."""
    known = {r for r in radii if r is not None}
    if len(known) == 1:
        return f"{known.pop():g} Å"
    return "loop_radius_A (per run, in md_summary.csv)" if known else "md_settings.loop_radius"
