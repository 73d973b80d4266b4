"""MD observables against hand-computed values, and MD runs that stop (and say why) instead of
crashing."""

from __future__ import annotations

import numpy as np
import pytest
from analytic import MorsePotential
from ase.calculators.calculator import Calculator, all_changes

from elmlff.baselines import LinearCombiner
from elmlff.calculator import EnsembleCalculator
from elmlff.errors import ElmlffError
from elmlff.md.observables import (
    HR_BINS,
    bond_lengths,
    bonds,
    diffusivity,
    energy_drift,
    first_collapse,
    h_of_r,
    h_of_r_error,
    loop_work,
    rdf,
)
from elmlff.md.run import MDSettings, run_md
from elmlff.meta.ensemble import LinearEnsemble


def test_h_of_r_of_a_fixed_geometry_equals_a_hand_count():
    x = np.array([[0.0, 0, 0], [1.01, 0, 0], [0, 2.01, 0]])  # distances 1.01, 2.01, 2.2581
    h = h_of_r(np.stack([x, x]))  # two identical frames
    width = 10.0 / 500
    expected = np.zeros(500)
    for d in (1.01, 2.01, np.hypot(1.01, 2.01)):
        expected[int(d / width)] += 1 / (3 * width)
    np.testing.assert_allclose(h, expected)
    assert np.sum(h * np.diff(HR_BINS)) == pytest.approx(1.0)
    assert h_of_r_error(h, h) == 0.0
    assert h_of_r_error(h, h_of_r(x * 3)) == pytest.approx(2.0)  # no distance in common


def test_bonds_of_methane_and_collapse_at_a_known_frame(methane):
    fr = methane.subset([0])
    pairs = bonds(fr.numbers, fr.positions)
    carbon = int(np.flatnonzero(fr.numbers == 6)[0])
    assert len(pairs) == 4 and (pairs == carbon).any(axis=1).all()  # four C-H bonds, no H-H
    traj = np.repeat(fr.positions[None], 20, axis=0)
    h = int(pairs[0][pairs[0] != carbon][0])
    stretch = np.linspace(0.0, 1.9, 20)  # the C-H bond grows by 0.1 Å per frame
    traj[:, h] += stretch[:, None] * (fr.positions[h] - fr.positions[carbon])
    ref = bond_lengths(fr.positions, pairs)[0]
    dev = bond_lengths(traj, pairs) - ref
    expected = int(np.flatnonzero(np.abs(dev).max(axis=1) > 0.5)[0])
    assert first_collapse(traj, pairs, ref) == expected and 3 <= expected <= 6
    assert first_collapse(traj[:expected], pairs, ref) is None


def test_diffusivity_of_a_random_walk_with_known_d():
    d_true, dt = 0.05, 0.01  # Å²/ps, ps
    rng = np.random.default_rng(0)
    steps = rng.normal(scale=np.sqrt(2 * d_true * dt), size=(2000, 300, 3))
    d = diffusivity(np.cumsum(steps, axis=0), dt)
    assert d == pytest.approx(d_true, rel=0.1)
    with pytest.raises(ElmlffError, match="longer trajectory"):
        diffusivity(np.zeros((5, 3, 3)), dt)


def test_rdf_of_an_ideal_gas_is_one_and_pairs_resolve():
    rng = np.random.default_rng(1)
    box = 14.0
    x = rng.uniform(0, box, size=(4, 400, 3))
    numbers = np.where(np.arange(400) < 100, 29, 8)
    _, g = rdf(x, np.eye(3) * box, numbers, r_max=5.0, n_bins=10)
    assert np.allclose(g[2:], 1.0, atol=0.1)  # shells beyond 1 Å hold enough pairs
    _, g_cu_o = rdf(x, np.eye(3) * box, numbers, pair=(29, 8), r_max=5.0, n_bins=10)
    assert np.allclose(g_cu_o[4:], 1.0, atol=0.15)
    with pytest.raises(ElmlffError, match="element not in the system"):
        rdf(x, np.eye(3) * box, numbers, pair=(29, 1))


def test_rdf_window_criterion_flags_the_window_where_the_structure_changes():
    from ase.build import bulk

    from elmlff.md.observables import rdf_window_collapse

    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    rng = np.random.default_rng(0)
    crystal = cu.positions + rng.normal(scale=0.05, size=(30, len(cu), 3))
    melted = rng.uniform(0, 10.8, size=(20, len(cu), 3))  # the structure is lost
    traj = np.concatenate([crystal, melted])
    _, g_ref = rdf(crystal, cu.cell[:], cu.numbers, r_max=5.0, n_bins=50)
    first = rdf_window_collapse(traj, cu.cell[:], cu.numbers, g_ref, 10, 0.3, 5.0, 50)
    assert first == 30
    assert rdf_window_collapse(crystal, cu.cell[:], cu.numbers, g_ref, 10, 0.3, 5.0, 50) is None


def test_energy_drift_is_the_fitted_slope_per_atom():
    e = -10.0 + 0.1 * np.arange(100) * 0.001  # 0.1 eV/ps in total over 5 atoms
    assert energy_drift(e, 5, 0.001) == pytest.approx(0.1 / 5)


def _morse_calculator():
    pots = [
        MorsePotential("a", r0=1.09, r0_same=1.78),
        MorsePotential("b", scale=1.2, r0_same=1.78),
    ]
    return EnsembleCalculator(LinearEnsemble(LinearCombiner("mean", ["a", "b"], [0.5, 0.5]), pots))


def test_nve_run_conserves_energy_and_writes_the_trajectory_frame_by_frame(methane, tmp_path):
    """400 velocity-Verlet steps of 0.25 fs from 300 K with an exactly conservative calculator:
    the total energy stays within 2 meV (the O(dt²) error of the C-H stretch) while the kinetic
    energy varies by much more."""
    from ase.io import read

    atoms = methane.subset([0]).to_atoms()[0]
    atoms.pbc = False
    s = MDSettings(thermostat="nve", temperature_K=300, timestep_fs=0.25, steps=400, record_every=5)
    res = run_md(atoms, _morse_calculator(), s, tmp_path / "nve.extxyz", log=lambda m: None)
    assert res.stopped == "completed" and res.steps == 400 and res.n_frames == 81
    frames = read(tmp_path / "nve.extxyz", index=":")
    assert len(frames) == 81 and frames[-1].info["time_ps"] == pytest.approx(0.1)
    total = np.array([f.info["total_energy"] for f in frames])
    kinetic = np.array([f.get_kinetic_energy() for f in frames])
    assert np.abs(total - total[0]).max() < 2e-3
    assert np.ptp(kinetic) > 5 * np.abs(total - total[0]).max()
    assert frames[3].info["force_std_max"] > 0  # the ensemble disagreement, every frame
    assert res.steps_per_second > 0


def test_loop_work_is_zero_for_a_gradient_and_the_circulation_for_a_curl(methane):
    """∮F·dx: ~0 for the Morse ensemble (F = -dE/dx); for F = A x with A antisymmetric it is
    -2π r² uᵀAv exactly (the trapezoid rule is exact for this trigonometric integrand)."""
    atoms = methane.subset([0]).to_atoms()[0]
    atoms.calc = _morse_calculator()

    def morse(x):
        atoms.positions = x
        return atoms.get_forces()

    x0 = atoms.positions.copy()
    assert abs(loop_work(morse, x0, radius=0.1, n_points=32)) < 1e-7
    rng = np.random.default_rng(1)
    b = rng.normal(size=(15, 15))
    a = b - b.T
    q, _ = np.linalg.qr(rng.normal(size=(15, 2)))
    u, v = q[:, 0], q[:, 1]
    w = loop_work(lambda x: (a @ x.ravel()).reshape(-1, 3), x0, 0.1, 16, (u, v))
    assert w == pytest.approx(-2 * np.pi * 0.01 * (u @ a @ v), rel=1e-10)
    assert abs(w) > 1e-3
    # the Morse forces plus a small curl: the loop work sees the curl alone
    w2 = loop_work(lambda x: morse(x) + 0.01 * (a @ x.ravel()).reshape(-1, 3), x0, 0.1, 32, (u, v))
    assert w2 == pytest.approx(0.01 * w, rel=1e-4)


def test_nose_hoover_and_langevin_runs_complete(methane, tmp_path):
    atoms = methane.subset([0]).to_atoms()[0]
    atoms.pbc = False
    for thermostat in ("nose_hoover", "langevin"):
        s = MDSettings(thermostat=thermostat, temperature_K=300, steps=40, record_every=10)
        res = run_md(atoms, _morse_calculator(), s, tmp_path / f"{thermostat}.extxyz", log=print)
        assert res.stopped == "completed" and np.isfinite(res.mean_temperature_K)


class Broken(Calculator):
    """Huge, NaN, or failing forces."""

    implemented_properties = ("energy", "forces")

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        if self.mode == "raise" and self.atoms.positions[0, 0] != self._x0:
            raise RuntimeError("model blew up")
        f = {
            "huge": 1e3 * np.ones((n, 3)) * np.sign(np.arange(n) - 2.5)[:, None],
            "nan": np.full((n, 3), np.nan),
            "raise": np.zeros((n, 3)),
        }[self.mode]
        self.results = {"energy": 0.0, "forces": f}


@pytest.mark.parametrize(
    ("mode", "stopped"),
    [("huge", ("temperature", "collapse")), ("nan", ("nan",)), ("raise", ("calculator error",))],
)
def test_an_exploding_run_is_stopped_and_recorded_not_crashed(methane, tmp_path, mode, stopped):
    atoms = methane.subset([0]).to_atoms()[0]
    atoms.pbc = False
    calc = Broken(mode)
    calc._x0 = atoms.positions[0, 0]
    s = MDSettings(thermostat="nve", temperature_K=300, steps=200, record_every=2)
    res = run_md(atoms, calc, s, tmp_path / "boom.extxyz", log=lambda m: None)
    assert res.stopped.startswith(stopped) and res.steps < 200
    assert (tmp_path / "boom.extxyz").stat().st_size > 0  # what it had is kept


def test_uncertainty_monitor_records_u_and_stops_when_it_stays_high(methane, tmp_path):
    """The calculator reports U (here U0, uniform weights) every step; with a threshold below
    the ensemble's U the run stops after u_stop_frames recorded frames, and the warning time is
    computed from the recorded frames."""
    from ase.io import read

    from elmlff.md.campaign import uncertainty_warning

    atoms = methane.subset([0]).to_atoms()[0]
    atoms.pbc = False
    calc = _morse_calculator()
    s = MDSettings(temperature_K=300, steps=100, record_every=10, u_threshold=1e-6, u_stop_frames=3)
    res = run_md(atoms, calc, s, tmp_path / "u.extxyz", log=lambda m: None)
    assert res.stopped == "uncertainty" and res.steps == 30
    frames = read(tmp_path / "u.extxyz", index=":")
    u = [f.info["uncertainty"] for f in frames]
    assert len(u) == 4 and min(u) > 0
    # U0 of the two Morse bases at the first frame, by hand: sqrt(mean_k max_j |F_jk - <F_j>|^2)
    atoms.calc = None
    pots = calc.ensemble.bases
    fk = np.stack([p.predict(methane.subset([0]))[1] for p in pots])
    worst = np.linalg.norm(fk - fk.mean(0), axis=2).max(axis=1)
    assert u[0] == pytest.approx(np.sqrt((worst**2).mean()), rel=1e-6)
    w = uncertainty_warning(frames, u_c=u[2] - 1e-12, collapse_ps=0.5)
    assert w["u_cross_time_ps"] == pytest.approx(frames[2].info["time_ps"])
    assert w["u_warning_ps"] == pytest.approx(0.5 - frames[2].info["time_ps"])
    assert uncertainty_warning(frames, u_c=10.0, collapse_ps=0.5)["u_warning_ps"] is None


# -- issue 15: bonds as the benchmark cuts them, molecule or condensed phase, time to collapse --


def _ase_bonds(atoms) -> set[tuple[int, int]]:
    """The benchmark's bonds: ASE's NeighborList(natural_cutoffs(atoms)) at its default skin."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=False)
    nl.update(atoms)
    return {tuple(sorted((a, int(b)))) for a in range(len(atoms)) for b in nl.get_neighbors(a)[0]}


def test_bonds_are_ase_neighbor_list_pairs_on_a_stretched_bond(methane):
    """ASE adds the 0.3 Å skin to each atom's cutoff: C-H is bonded up to 0.76 + 0.31 + 0.6 =
    1.67 Å (not 1.37 Å). A C-H stretched to 1.5 Å is a bond, at 1.8 Å it is not; on perturbed
    methane and ethanol frames the pairs equal ASE's NeighborList."""
    from ase.build import molecule

    atoms = methane.subset([0]).to_atoms()[0]
    atoms.pbc = False
    carbon = int(np.flatnonzero(atoms.numbers == 6)[0])
    h = int(np.flatnonzero(atoms.numbers == 1)[0])
    for length, bonded in ((1.5, True), (1.66, True), (1.68, False), (1.8, False)):
        x = atoms.copy()
        u = x.positions[h] - x.positions[carbon]
        x.positions[h] = x.positions[carbon] + length * u / np.linalg.norm(u)
        pairs = {tuple(p) for p in bonds(x.numbers, x.positions).tolist()}
        assert ((min(carbon, h), max(carbon, h)) in pairs) is bonded, length
        assert pairs == _ase_bonds(x)
    rng = np.random.default_rng(0)
    for base in (atoms, molecule("CH3CH2OH")):
        for _ in range(5):
            x = base.copy()
            x.positions += rng.normal(scale=0.25, size=x.positions.shape)
            got = bonds(x.numbers, x.positions)
            assert {tuple(p) for p in got.tolist()} == _ase_bonds(x)
            assert (got[:, 0] < got[:, 1]).all()


def test_molecule_or_condensed_phase_is_read_from_the_structure_not_pbc(methane):
    from ase.build import bulk, fcc111

    from elmlff.md.observables import is_molecule

    atoms = methane.subset([0]).to_atoms()[0]
    assert atoms.pbc.all()  # DeePMD's convention: a molecule in a periodic 15 Å box
    assert is_molecule(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
    wrapped = atoms.copy()  # the molecule cut by the cell boundary is still a molecule
    wrapped.positions -= wrapped.positions[1]
    wrapped.wrap()
    assert is_molecule(wrapped.numbers, wrapped.positions, wrapped.cell[:], wrapped.pbc)
    assert is_molecule(atoms.numbers, atoms.positions, None, [False] * 3)
    cu = bulk("Cu", "fcc", a=3.6)
    assert not is_molecule(cu.numbers, cu.positions, cu.cell[:], cu.pbc)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    assert not is_molecule(cu.numbers, cu.positions, cu.cell[:], cu.pbc)
    for periodic in (False, True):  # pbc (T, T, F) or all True: periodic in-plane
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=10.0, periodic=periodic)
        assert not is_molecule(slab.numbers, slab.positions, slab.cell[:], slab.pbc)
    # no bond network, but densely packed (a molecular liquid or crystal): condensed
    ar = bulk("Ar", "fcc", a=5.26)
    assert not is_molecule(ar.numbers, ar.positions, ar.cell[:], ar.pbc)


def test_a_molecule_in_a_box_gets_h_of_r_only_and_starts_without_rotation(methane, tmp_path):
    """Methane in its periodic box: h(r) but no RDF, RDF-window collapse or diffusivity; its
    run starts with no net angular momentum. A periodic Cu crystal does get the RDF."""
    from ase.build import bulk
    from ase.io import read

    from elmlff.md.campaign import structure_observables

    atoms = methane.subset([0]).to_atoms()[0]
    pos = methane.positions[: 5 * 20].reshape(20, 5, 3)
    out = structure_observables(pos, pos, atoms, 0.005, True, True)
    assert out["molecule"] and np.isfinite(out["hr_mae"])
    assert not {"rdf_mae", "rdf_collapse_time_ps", "diffusivity_A2_per_ps"} & set(out)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    cu_pos = cu.positions + rng.normal(scale=0.05, size=(20, len(cu), 3))
    out = structure_observables(cu_pos, cu_pos, cu, 0.005, True, False)
    assert out["rdf_mae"] == pytest.approx(0.0) and "diffusivity_A2_per_ps" in out

    s = MDSettings(thermostat="nve", temperature_K=300, timestep_fs=0.25, steps=20, record_every=10)
    res = run_md(atoms, _morse_calculator(), s, tmp_path / "box.extxyz", log=lambda m: None)
    assert res.extra["molecule"] is True
    first = read(tmp_path / "box.extxyz", index=0)
    first.pbc = False
    assert np.abs(first.get_angular_momentum()).max() < 1e-6
    assert np.abs(first.get_momenta().sum(axis=0)).max() < 1e-6


def _replica(tmp_path, replica: int, **fields):
    import json

    d = {
        "dataset": "toy",
        "model": "m",
        "replica": replica,
        "steps": 500,
        "loop_radius_A": 0.1,
        "hr_mae": 0.1,
        "steps_per_second": 10.0,
        "horizon_ps": 0.25,
        "temperature_K": 50.0,
        "data_temperature_K": 48.0,
        **fields,
    }
    p = tmp_path / f"replica{replica}.json"
    p.write_text(json.dumps(d))
    return p


def test_time_to_collapse_is_the_benchmarks_mean_over_all_replicas(tmp_path):
    """One replica collapsed at 0.1 ps, one stayed stable for its full 0.25 ps: the benchmark's
    time to collapse is 0.175 ps (not 0.1, the mean over the collapsed one alone), next to
    50 % stable; the table names the horizon."""
    import pandas as pd

    from elmlff.md.campaign import summarize

    paths = [
        _replica(
            tmp_path,
            0,
            stopped="collapse",
            time_ps=0.1,
            collapse_time_ps=0.1,
            stable=False,
            fixed_atoms=32,
        ),
        _replica(
            tmp_path, 1, stopped="completed", time_ps=0.25, collapse_time_ps=None, stable=True
        ),
        _replica(
            tmp_path, 2, stopped="uncertainty", time_ps=0.05, collapse_time_ps=None, stable=None
        ),
    ]
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(
        {"model": ["m"], "split": ["test"], "metric": ["force_mae_framemean"], "value": [0.02]}
    ).to_csv(metrics, index=False)
    out = summarize(paths, metrics, tmp_path / "md_summary.csv", tmp_path / "md_table.md")
    assert list(pd.read_csv(tmp_path / "md_summary.csv").columns) == [
        "dataset",
        "model",
        "replica",
        "metric",
        "value",
    ]
    agg = out[out.replica == "all"].set_index("metric").value
    assert agg["time_to_collapse_ps"] == pytest.approx(0.175)  # the uncertainty stop: unknown
    assert agg["collapse_time_ps"] == pytest.approx(0.1)  # the collapsed replicas only
    assert agg["stable_percent"] == pytest.approx(50.0)
    per = out[out.metric == "time_to_collapse_ps"].set_index("replica").value
    assert per["0"] == pytest.approx(0.1) and per["1"] == pytest.approx(0.25)
    assert np.isnan(per["2"])
    table = (tmp_path / "md_table.md").read_text()
    assert "of 0.25 ps" in table and "at 50 K" in table and "~48 K" in table
    assert "32 atoms held fixed" in table  # one replica's JSON says so; older ones have none
    assert "| m | 20.00 | 50 | 0.175 |" in table


def test_a_wrapped_molecule_is_made_whole_before_bonds_and_h_of_r(methane):
    from elmlff.md.observables import HR_BINS, bonds, h_of_r, h_of_r_error, make_whole

    atoms = methane.subset([0]).to_atoms()[0]
    whole = bonds(atoms.numbers, atoms.positions)
    wrapped = atoms.copy()  # H atoms pushed across the boundary: the raw positions break bonds
    wrapped.positions -= wrapped.positions[0] - 0.2
    wrapped.wrap()
    assert len(bonds(wrapped.numbers, wrapped.positions)) < len(whole)
    fixed = make_whole(wrapped.numbers, wrapped.positions, wrapped.cell[:], wrapped.pbc)
    assert np.array_equal(bonds(wrapped.numbers, fixed), whole)
    assert h_of_r_error(h_of_r(fixed), h_of_r(atoms.positions), HR_BINS) < 1e-9
    shift = fixed - atoms.positions  # one rigid translation, the same for every atom
    assert np.allclose(shift, shift[0], atol=1e-9)
    from ase.build import bulk  # an infinite network is left as it is

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert np.array_equal(make_whole(cu.numbers, cu.positions, cu.cell[:], cu.pbc), cu.positions)


def test_md_reference_is_the_test_frames_or_the_whole_data_set_plus_extra_parts(tmp_path):
    """The benchmark takes reference bond lengths and h(r) from the whole reference data; a
    data set's extra reference parts (e.g. other rMD17 split files) join them, and only frames
    with the start frame's atoms count."""
    from elmlff import store
    from elmlff.data import Split
    from elmlff.md.campaign import reference_positions

    from conftest import random_frames

    f = random_frames(n_frames=6, sizes=(3,))
    f.numbers = np.tile([8, 1, 1], 6)  # one molecule, six frames
    split = Split({"train": [0, 1], "meta": [2], "val": [3], "test": [4, 5]})
    ds = store.reference_dataset(f, split)
    pos = f.positions.reshape(6, 3, 3)
    np.testing.assert_allclose(reference_positions(ds, split, 4, "test", None), pos[[4, 5]])
    np.testing.assert_allclose(reference_positions(ds, split, 4, "all", None), pos)
    extra = tmp_path / "more.npz"  # two more frames of the molecule, one of another molecule
    more = np.random.default_rng(3).normal(size=(2, 3, 3))
    np.savez(extra, R=more, z=np.array([8, 1, 1]), E=np.zeros(2), F=np.zeros((2, 3, 3)))
    np.savez(
        tmp_path / "other.npz", R=more, z=np.array([6, 1, 1]), E=np.zeros(2), F=np.zeros((2, 3, 3))
    )
    spec = {
        "format": "npz",
        "path": str(tmp_path),
        "units": {"energy": "eV", "length": "angstrom"},
        "parts": {"more.npz": "pool", "other.npz": "pool"},
    }
    got = reference_positions(ds, split, 4, "all", spec)
    np.testing.assert_allclose(got, np.concatenate([pos, more]))


def test_a_condensed_phase_measures_bond_deviations_from_its_start_frame(methane):
    """A slab's reference frames are stored wrapped into the cell and hold other configurations:
    averaged over them, a bond of the start frame that one of them wraps across the boundary
    gets a length near the cell's, and every MD run would 'collapse' at its first check (the
    methanol/Cu campaign did). A condensed phase is measured from its start frame; a molecule
    keeps the benchmark's mean over the reference frames."""
    from ase.build import fcc100

    from elmlff.md.campaign import reference_bond_lengths
    from elmlff.md.observables import is_molecule

    start = fcc100("Cu", size=(3, 3, 3), vacuum=8.0, periodic=True)
    start.positions += [2.0, 2.0, 0.0]  # as MD leaves them: not wrapped into the cell
    stored = start.copy()
    stored.wrap()  # as data sets store them
    assert not is_molecule(start.numbers, start.positions, start.cell[:], start.pbc)
    pairs = bonds(start.numbers, start.positions)
    ref_pos = np.stack([stored.positions, stored.positions])
    averaged = bond_lengths(ref_pos, pairs).mean(axis=0)
    assert first_collapse(start.positions[None], pairs, averaged) == 0  # the false collapse
    assert reference_bond_lengths(pairs, ref_pos, molecule=False) is None  # run_md: the start's
    own = bond_lengths(start.positions, pairs)[0]
    assert first_collapse(start.positions[None], pairs, own) is None
    # a molecule: each bond's mean over the reference frames, by hand for the first bond
    pos = methane.positions.reshape(len(methane), -1, 3)[:3]
    mol_pairs = bonds(methane.numbers[:5], pos[0])
    want = np.mean([np.linalg.norm(p[mol_pairs[0, 0]] - p[mol_pairs[0, 1]]) for p in pos])
    got = reference_bond_lengths(mol_pairs, pos, molecule=True)
    assert got is not None and np.isclose(got[0], want)


def _methanol_on_copper():
    """CH3OH above a 3-layer Cu(100) slab, wrapped into the periodic cell across x."""
    from ase.build import add_adsorbate, fcc100, molecule

    slab = fcc100("Cu", size=(3, 3, 3), vacuum=8.0, periodic=True)
    add_adsorbate(slab, molecule("CH3OH"), 2.5, "ontop")
    slab.positions[-6:, 0] -= slab.positions[-6:, 0].min() + 0.3  # sticks out on the left
    wrapped = slab.copy()
    wrapped.wrap()
    return slab, wrapped


def test_stability_bonds_of_a_slab_are_the_adsorbates_made_whole_not_metal_contacts():
    """Natural cutoffs also list Cu-Cu pairs and Cu-adsorbate contacts, which move on in a
    healthy surface run; a collapse is judged on the covalent bonds, here methanol's five,
    found even when the stored frame has the molecule wrapped across the cell's boundary."""
    from elmlff.md.observables import covalent_bonds, make_adsorbates_whole

    whole, wrapped = _methanol_on_copper()
    z = wrapped.numbers
    assert len(bonds(z, wrapped.positions)) > 30  # Cu-Cu pairs and contacts
    assert len(covalent_bonds(z, wrapped.positions)) < 5  # bonds cut by the boundary
    fixed = make_adsorbates_whole(z, wrapped.positions, wrapped.cell[:], wrapped.pbc)
    pairs = covalent_bonds(z, fixed)
    assert len(pairs) == 5 and (z[pairs] != 29).all()  # C-O, 3 C-H, O-H
    np.testing.assert_allclose(
        bond_lengths(fixed, pairs), bond_lengths(whole.positions, pairs), atol=1e-9
    )
    assert np.array_equal(fixed[z == 29], wrapped.positions[z == 29])  # the slab stays put
    # a molecule of H, C, N, O keeps every bond of the benchmark
    mol = _methanol_on_copper()[0][-6:]
    assert np.array_equal(
        covalent_bonds(mol.numbers, mol.positions), bonds(mol.numbers, mol.positions)
    )


def test_atoms_the_reference_never_moves_are_fixed():
    from elmlff.md.campaign import fixed_atoms

    rng = np.random.default_rng(0)
    ref = np.repeat(rng.normal(size=(1, 6, 3)), 4, axis=0)
    ref[:, 3:] += rng.normal(scale=0.05, size=(4, 3, 3))  # three atoms move
    ref[1, 2, 0] += 1e-3  # and one barely
    assert fixed_atoms(ref).tolist() == [0, 1]
    assert fixed_atoms(ref[:1]).tolist() == []  # one frame tells nothing


def test_nose_hoover_with_a_fixed_substrate_thermostats_the_mobile_atoms(tmp_path):
    """ASE's own Nosé-Hoover chain does not support fixed atoms: its momentum copy lets them
    gather momentum that it removes as heat, and the mobile layer froze to ~0 K (checked), and
    it gives 3 kT/2 to every atom (three times the target for one mobile layer of three). The
    mobile layer holds the target, and the fixed atoms do not move."""
    from ase.build import fcc100
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.io import read

    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0, periodic=True)
    slab.set_constraint(FixAtoms(mask=slab.positions[:, 2] < slab.positions[:, 2].max() - 0.5))
    s = MDSettings(temperature_K=400, timestep_fs=4.0, steps=3000, record_every=20, tdamp_fs=40)
    res = run_md(slab, EMT(), s, tmp_path / "slab.extxyz", log=lambda m: None)
    assert res.stopped == "completed" and res.extra["n_bonds"] == 0  # Cu-Cu: no covalent bond
    traj = read(tmp_path / "slab.extxyz", index=":")
    temps = [a.info["temperature_K"] for a in traj[len(traj) // 3 :]]
    assert 300 < np.mean(temps) < 500  # stock ASE: ~0 K
    still = slab.constraints[0].index
    assert np.abs(traj[-1].positions[still] - slab.positions[still]).max() < 1e-6  # extxyz


def test_md_start_frames_of_chosen_elements_and_best_meta_on_val_not_test(tmp_path):
    """``md.start_elements`` keeps the test frames made of exactly those elements (not those
    that merely contain them); best_meta is the meta of lowest *val* force RMSE, whatever the
    test RMSEs say, and unknown names or missing rows are one-line errors."""
    import pandas as pd

    from elmlff.md.campaign import best_meta, start_candidates

    from conftest import random_frames

    f = random_frames(n_frames=4, sizes=(2,))
    f.numbers = np.array([3, 3, 3, 14, 14, 14, 3, 3])  # Li2, LiSi, Si2, Li2
    pool = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(start_candidates(f, pool), pool)
    np.testing.assert_array_equal(start_candidates(f, pool, ["Li"]), [0, 3])
    np.testing.assert_array_equal(start_candidates(f, pool, ["Si", "Li"]), [1])
    np.testing.assert_array_equal(start_candidates(f, pool[:3], ["Si"]), [2])
    f.n_atoms = np.array([1, 3, 2, 2])  # the same 8 atoms cut into frames of other sizes
    np.testing.assert_array_equal(start_candidates(f, pool, min_atoms=2), [1, 2, 3])
    with pytest.raises(ElmlffError, match=r"no test frame has that many atoms"):
        start_candidates(f, pool, min_atoms=4)
    with pytest.raises(ElmlffError, match=r"no test frame is made of exactly"):
        start_candidates(f, pool, ["Ge"])
    with pytest.raises(ElmlffError, match=r"unknown element"):
        start_candidates(f, pool, ["Xx"])
    rows = [
        ("direct", "val", 0.20),
        ("direct", "test", 0.05),
        ("conserv", "val", 0.10),
        ("conserv", "test", 0.30),
        ("chgnet", "val", 0.01),  # a base: not a candidate
    ]
    csv = tmp_path / "metrics.csv"
    pd.DataFrame(
        [{"model": m, "split": s, "metric": "force_rmse", "value": v} for m, s, v in rows]
        + [{"model": "direct", "split": "val", "metric": "force_mae", "value": 0.001}]
    ).to_csv(csv, index=False)
    assert best_meta(csv, ["direct", "conserv"]) == "conserv"
    assert best_meta(csv, ["direct"]) == "direct"
    with pytest.raises(ElmlffError, match=r"no val force RMSE for meta\(s\) \['amortized'\]"):
        best_meta(csv, ["direct", "amortized"])
