"""MD with ASE's integrators and any ASE calculator; trajectories written frame by frame (a
killed run keeps what it had) and early stops that are results, not crashes.

A run stops early, and says when and why, on: a bond collapse (the stability criterion of
:mod:`elmlff.md.observables`), non-finite forces or positions, a temperature outside
``[0, max_temperature_factor x target]``, an exception from the calculator, or (when asked) an
ensemble uncertainty U above ``u_threshold`` on ``u_stop_frames`` recorded frames in a row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elmlff.errors import ElmlffError
from elmlff.log import log
from elmlff.md.observables import bond_lengths, covalent_bonds, first_collapse, is_molecule

THERMOSTATS = ("nose_hoover", "langevin", "nve")


@dataclass
class MDSettings:
    """One MD protocol (the benchmark's MD17 defaults: 500 K, 0.5 fs, Nosé-Hoover)."""

    thermostat: str = "nose_hoover"
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    steps: int = 1000
    record_every: int = 10
    seed: int = 0
    tdamp_fs: float = 50.0  # Nosé-Hoover chain damping time
    friction_per_fs: float = 0.01  # Langevin friction
    delta: float = 0.5  # Å, bond deviation that counts as a collapse
    max_temperature_factor: float = 5.0  # stop above this x the target temperature
    nve_probe_steps: int = 200  # a second, NVE run from the same start for the energy drift
    loop_radius: float = 0.1  # Å, radius of the closed loop of the loop-work (curl) check
    u_threshold: float = 0.0  # eV/Å, U_c of the uncertainty monitor (0: the max U on val frames)
    u_stop_frames: int = 0  # stop when U > U_c on this many recorded frames in a row (0: never)


@dataclass
class MDResult:
    """What one run did (one row of the MD summary)."""

    steps: int
    time_ps: float  # simulated time reached
    stopped: str  # "completed", "collapse", "nan", "temperature", "calculator error: ..."
    collapse_time_ps: float | None
    steps_per_second: float  # MD steps per wall second, after the first (warm-up) chunk
    mean_temperature_K: float
    n_frames: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _integrator(atoms, s: MDSettings):
    from ase import units

    dt = s.timestep_fs * units.fs
    if s.thermostat == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if s.thermostat == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=s.temperature_K,
            friction=s.friction_per_fs / units.fs,
            rng=np.random.default_rng(s.seed + 1),
        )
    if s.thermostat == "nose_hoover":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        cls = _fixed_atoms_nvt() if atoms.constraints else NoseHooverChainNVT
        return cls(atoms, timestep=dt, temperature_K=s.temperature_K, tdamp=s.tdamp_fs * units.fs)
    raise ElmlffError(f"unknown thermostat {s.thermostat!r}", f"use one of {list(THERMOSTATS)}")


def _fixed_atoms_nvt():
    """ASE's Nosé-Hoover chain for a system with fixed atoms (ASE's ``FixAtoms``), which ASE's
    own does not support: it integrates its own copy of the momenta with unconstrained forces
    (``get_forces(md=True)``), so fixed atoms gather momentum that the chain reads as heat and
    removes from the mobile ones (a slab's top layer froze), and it gives 3 kT/2 to every atom.
    Here fixed atoms feel no force and the chain counts the degrees of freedom the constraints
    leave."""
    from ase.md.nose_hoover_chain import NoseHooverChainNVT, NoseHooverChainThermostat

    class FixedAtomsNVT(NoseHooverChainNVT):
        def __init__(self, atoms, timestep: float, temperature_K: float, tdamp: float) -> None:
            super().__init__(atoms, timestep=timestep, temperature_K=temperature_K, tdamp=tdamp)
            self._thermostat = NoseHooverChainThermostat(
                num_atoms_global=atoms.get_number_of_degrees_of_freedom() / 3,
                masses=self.masses,
                temperature_K=temperature_K,
                tdamp=tdamp,
            )
            self._p = self.atoms.get_momenta()  # the constrained ones: 0 for fixed atoms

        def _get_forces(self):
            self._update_atoms()
            return self.atoms.get_forces()  # constrained: fixed atoms feel no force

    return FixedAtomsNVT


def _frame(atoms, step: int, time_ps: float, results: dict[str, Any]):
    """A copy of ``atoms`` carrying the step's forces (and energy) and scalars in ``info``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    forces = np.asarray(results["forces"])
    spc = {"forces": forces}
    if "energy" in results:
        spc["energy"] = float(results["energy"])
        out.info["total_energy"] = float(results["energy"]) + atoms.get_kinetic_energy()
    out.calc = SinglePointCalculator(out, **spc)
    out.info.update(
        step=step,
        time_ps=time_ps,
        temperature_K=float(atoms.get_temperature()),
        force_max=float(np.linalg.norm(forces, axis=1).max()),
    )
    for k in ("force_std_mean", "force_std_max", "uncertainty"):
        if k in results:
            out.info[k] = float(results[k])
    return out


def run_md(
    atoms,
    calc,
    settings: MDSettings,
    trajectory: Path,
    reference_lengths: np.ndarray | None = None,
    log: Callable[[str], None] = log,
    molecule: bool | None = None,
) -> MDResult:
    """Run one MD replica of ``atoms`` with ``calc``; append every ``record_every``-th frame to
    the extxyz ``trajectory`` as it goes. ``reference_lengths`` are the bonds' reference lengths
    (by default those of the initial frame; bonds are found in the initial frame).

    Velocities are Maxwell-Boltzmann at the target temperature with the centre of mass at
    rest; for a molecule (``molecule``, by default decided from the structure by
    :func:`~elmlff.md.observables.is_molecule`, so a molecule in a periodic box counts) the net
    rotation is removed too, as in gas-phase runs. Constraints of ``atoms`` (a fixed
    substrate: ASE's ``FixAtoms``) hold in the run; its temperature is that of the degrees of
    freedom they leave."""
    from ase.io import write
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    s = settings
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(
        atoms, temperature_K=s.temperature_K, rng=np.random.default_rng(s.seed)
    )
    Stationary(atoms)
    if molecule is None:
        molecule = is_molecule(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
    if molecule:
        import warnings

        with warnings.catch_warnings():  # a molecule in a periodic box: the box is irrelevant
            warnings.filterwarnings("ignore", "Periodic boundary conditions are ignored")
            ZeroRotation(atoms)
    pairs = covalent_bonds(atoms.numbers, atoms.positions)
    ref = reference_lengths
    if ref is None:
        ref = bond_lengths(atoms.positions, pairs)[0]
    dyn = _integrator(atoms, s)
    dt_ps = s.timestep_fs * 1e-3
    trajectory = Path(trajectory)
    trajectory.parent.mkdir(parents=True, exist_ok=True)
    trajectory.unlink(missing_ok=True)
    stopped, collapse, done, wall, timed, temps, n_frames = "completed", None, 0, 0.0, 0, [], 0
    above = 0  # recorded frames in a row with U > U_c
    with open(trajectory, "w") as fh:
        atoms.get_forces()
        write(fh, _frame(atoms, 0, 0.0, calc.results), format="extxyz")
        n_frames += 1
        while done < s.steps:
            n = min(s.record_every, s.steps - done)
            t0 = time.perf_counter()
            try:
                dyn.run(n)
            except Exception as exc:  # a calculator that fails is a result of this model
                stopped = f"calculator error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
                break
            if done > 0 or s.steps <= s.record_every:  # the first chunk warms up JIT/caches
                wall, timed = wall + time.perf_counter() - t0, timed + n
            done += n
            forces = np.asarray(calc.results.get("forces", np.nan))
            temp = atoms.get_temperature()
            temps.append(temp)
            if not (np.isfinite(forces).all() and np.isfinite(atoms.positions).all()):
                stopped = "nan"
                break
            write(fh, _frame(atoms, done, done * dt_ps, calc.results), format="extxyz")
            fh.flush()
            n_frames += 1
            if not 0.0 <= temp <= s.max_temperature_factor * s.temperature_K:
                stopped = "temperature"
                break
            # this frame alone: first_collapse is 0 when a bond broke, None when all hold
            if pairs.size and first_collapse(atoms.positions[None], pairs, ref, s.delta) == 0:
                stopped, collapse = "collapse", done * dt_ps
                break
            u = calc.results.get("uncertainty")
            above = above + 1 if u is not None and s.u_threshold > 0 and u > s.u_threshold else 0
            if s.u_stop_frames and above >= s.u_stop_frames:
                stopped = "uncertainty"
                break
            if done % max(s.steps // 10, s.record_every) < s.record_every:
                log(f"MD step {done}/{s.steps} ({done * dt_ps:.3f} ps) T = {temp:.0f} K")
    if stopped != "completed":
        log(f"MD stopped at step {done} ({done * dt_ps:.3f} ps): {stopped}")
    return MDResult(
        steps=done,
        time_ps=done * dt_ps,
        stopped=stopped,
        collapse_time_ps=collapse,
        steps_per_second=timed / wall if wall > 0 else float("nan"),
        mean_temperature_K=float(np.mean(temps)) if temps else float("nan"),
        n_frames=n_frames,
        extra={"n_bonds": len(pairs), "molecule": bool(molecule)},
    )
