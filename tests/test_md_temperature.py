"""The data's configurational temperature ⟨|F|²⟩ / (k_B ⟨tr H⟩), tested on frames sampled by
Langevin dynamics at a known temperature with an analytic Morse potential, and the MD stage's
warning when its temperature is far from the data's."""

from __future__ import annotations

import numpy as np
import pytest
from analytic import MorsePotential

from elmlff.data import Frames
from elmlff.md.temperature import KB_EV_PER_K, estimate_temperature, hessian_trace

#: a stiff, methane-like Morse molecule: C-H 1.09 Å, H-H 1.78 Å (tetrahedral), well 1 eV deep
POT = MorsePotential("morse", d=1.0, a=1.5, r0=1.09, r0_same=1.78)
Z = np.array([6, 1, 1, 1, 1])
X0 = 1.09 / np.sqrt(3) * np.array([[0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])


def _frames(positions: np.ndarray, forces: np.ndarray) -> Frames:
    n = len(positions) // len(Z)
    return Frames(
        numbers=np.tile(Z, n),
        positions=positions,
        n_atoms=np.full(n, len(Z)),
        cell=np.zeros((n, 3, 3)),
        pbc=np.zeros((n, 3), bool),
        energy=np.zeros(n),
        forces=forces,
    )


def langevin_frames(
    temperature_K: float, n_mol=16, n_samples=16, every=15, equil=150, dt_fs=1.0, seed=0
) -> Frames:
    """Canonical frames of ``n_mol`` independent Morse molecules at ``temperature_K``: BAOAB
    Langevin dynamics (friction 0.05/fs; its configurational sampling is accurate to O(dt²)),
    one frame per molecule every ``every`` steps after ``equil`` steps, with the forces."""
    from ase import units
    from ase.data import atomic_masses

    rng = np.random.default_rng(seed)
    kt, dt = units.kB * temperature_K, dt_fs * units.fs
    c1 = np.exp(-0.05 * dt_fs)
    c2 = np.sqrt(1 - c1**2)
    m = np.tile(atomic_masses[Z], n_mol)[:, None]
    x = np.tile(X0, (n_mol, 1))
    p = rng.normal(size=x.shape) * np.sqrt(m * kt)
    fr = _frames(x, np.zeros_like(x))

    def force(x):
        fr.positions = x
        return POT.predict(fr)[1]

    f = force(x)
    pos, frc = [], []
    for step in range(equil + n_samples * every):
        p = p + 0.5 * dt * f
        x = x + 0.5 * dt * p / m
        p = c1 * p + c2 * np.sqrt(m * kt) * rng.normal(size=p.shape)
        x = x + 0.5 * dt * p / m
        f = force(x)
        p = p + 0.5 * dt * f
        if step >= equil and (step - equil + 1) % every == 0:
            pos.append(x.copy())
            frc.append(f.copy())
    return _frames(np.concatenate(pos), np.concatenate(frc))


@pytest.fixture(scope="module")
def sampled():
    return {t: langevin_frames(t, seed=i) for i, t in enumerate((50.0, 300.0))}


def test_hutchinson_trace_matches_the_exact_hessian_trace():
    """The mean of vᵀHv over Rademacher v converges to tr H: 400 copies of one frame x 10
    probes (4,000 samples) against the full Hessian of the frame by autograd."""
    import torch

    from elmlff.bases import frame_tensors

    rng = np.random.default_rng(3)
    fr = _frames(X0 + rng.normal(scale=0.05, size=X0.shape), np.zeros_like(X0))
    pos = torch.as_tensor(fr.positions, dtype=torch.float64)
    h = torch.autograd.functional.hessian(
        lambda q: POT.energy(q, *frame_tensors(fr)).sum(), pos
    ).reshape(15, 15)
    exact = float(torch.trace(h))
    copies = _frames(np.tile(fr.positions, (400, 1)), np.zeros((400 * len(Z), 3)))
    per_frame = hessian_trace(POT, copies, n_probes=10, seed=1)
    assert per_frame.mean() == pytest.approx(exact, rel=0.03)
    assert per_frame.std() > 0.05 * exact  # each one is a noisy, unbiased estimate


@pytest.mark.parametrize("temperature", [50.0, 300.0])
def test_configurational_temperature_recovers_the_sampling_temperature(sampled, temperature):
    fr = sampled[temperature]
    assert len(fr) == 256
    est = estimate_temperature(POT, fr, n_probes=2, max_frames=None)
    assert est == pytest.approx(temperature, rel=0.2)
    # the same estimate by hand: Σ|F|² / (k_B Σ tr H)
    trace = hessian_trace(POT, fr, n_probes=2, seed=0)
    assert est == pytest.approx(np.sum(fr.forces**2) / (KB_EV_PER_K * trace.sum()))


def test_md_stage_warns_when_its_temperature_is_far_from_the_data(sampled, capsys):
    from elmlff.md.campaign import data_temperature

    class NEPLike:  # no differentiable energy: skipped, the next base is used
        name, family = "nep_like", "nep"

    fr = sampled[50.0]
    out = data_temperature([NEPLike(), POT], fr, 500.0, "methane")
    assert out["data_temperature_base"] == "morse"
    assert out["data_temperature_K"] == pytest.approx(50.0, rel=0.2)
    err = capsys.readouterr().err
    assert err.startswith("elmlff: warning: MD at 500 K but the data's configurational ")
    assert "(factor > 2); set datasets.methane.md.settings.temperature_K" in err
    out = data_temperature([POT], fr, 60.0, "methane")
    assert capsys.readouterr().err == ""
    assert data_temperature([NEPLike()], fr, 60.0, "methane") == {"data_temperature_K": None}


def test_the_data_temperature_goes_through_the_most_accurate_base(tmp_path):
    """A base that learned little gives a meaningless configurational temperature (the
    methanol/Cu ensembles reported ~1400 K through their first base, flagged, against ~370 K
    through PaiNN): the ensemble's bases are tried by val force RMSE, lowest first."""
    import json
    from types import SimpleNamespace

    from elmlff.md.campaign import most_accurate_first

    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"val_force_rmse": {"a": 0.3, "b": 0.1, "c": 0.2}}))
    pots = [SimpleNamespace(name=n) for n in "abc"]
    assert [p.name for p in most_accurate_first(pots, path)] == ["b", "c", "a"]
    assert most_accurate_first(pots[:1], tmp_path / "nowhere.json") == pots[:1]
