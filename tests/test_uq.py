"""Uncertainty: U0/U1/U2 and the baselines against hand-computed values, Spearman and coverage
edge cases, the force delta, and the extxyz scoring command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from analytic import MorsePotential

from elmlff.cli import main
from elmlff.errors import ElmlffError
from elmlff.uq.metrics import (
    coverage_curve,
    ensemble_uncertainty,
    force_delta,
    inverse_rmse_weights,
    spearman,
    threshold_curve,
    weighted_uncertainty,
)


@pytest.fixture
def two_frames():
    """Three models on a 1-atom frame and a 2-atom frame, with reference forces.

    Frame A: F = (1,0,0), (-1,0,0), (0,0,0); mean 0; deviations 1, 1, 0; reference (3,4,0).
    Frame B: atom 1 F = 0, 0, (0,3,0) (mean (0,1,0), deviations 1, 1, 2), atom 2 all zero;
    reference (0,1,0) and (0,0,2).
    """
    f = np.zeros((3, 3, 3))
    f[0, 0] = [1, 0, 0]
    f[1, 0] = [-1, 0, 0]
    f[2, 1] = [0, 3, 0]
    ref = np.array([[3.0, 4, 0], [0, 1, 0], [0, 0, 2]])
    return f, np.array([1, 2]), ref


def test_u0_u1_u2_and_baselines_equal_hand_computed_values(two_frames):
    f, n, ref = two_frames
    w = inverse_rmse_weights([1.0, 2.0, 4.0])
    np.testing.assert_allclose(w, [4 / 7, 2 / 7, 1 / 7])
    t = ensemble_uncertainty(f, n, w, ref)
    np.testing.assert_allclose(t.U0, [np.sqrt(2 / 3), np.sqrt(2)])
    np.testing.assert_allclose(t.U1, [np.sqrt(6 / 7), np.sqrt(10 / 7)])
    # the MD calculator's per-step U1, without the table
    np.testing.assert_allclose(weighted_uncertainty(f, n, w), [np.sqrt(6 / 7), np.sqrt(10 / 7)])
    with pytest.raises(ElmlffError, match="weights"):
        weighted_uncertainty(f, n, [0.5, 0.3, 0.1])
    # U2, frame A: weighted mean (2/7, 0, 0); deviations 5/7, 9/7, 2/7
    u2a = np.sqrt((4 * 25 + 2 * 81 + 4) / 343)
    # frame B: weighted mean of atom 1 (0, 3/7, 0); deviations 3/7, 3/7, 18/7
    u2b = np.sqrt((4 * 9 + 2 * 9 + 324) / 343)
    np.testing.assert_allclose(t.U2, [u2a, u2b])
    # deepmd's model deviation: sigma_j = sqrt(mean_k |F_jk - <F_j>|^2)
    np.testing.assert_allclose(t.std_max, [np.sqrt(2 / 3), np.sqrt(2)])
    np.testing.assert_allclose(t.std_mean, [np.sqrt(2 / 3), np.sqrt(2) / 2])
    np.testing.assert_allclose(t.dF, [5.0, 2.0])
    np.testing.assert_allclose(t.dF_w, [np.hypot(3 - 2 / 7, 4), 2.0])
    np.testing.assert_allclose(t.rmse_mean, [np.sqrt(25 / 3), np.sqrt(4 / 6)])


def test_uniform_weights_make_u1_equal_u0(two_frames):
    f, n, _ = two_frames
    t = ensemble_uncertainty(f, n, np.full(3, 1 / 3))
    np.testing.assert_allclose(t.U1, t.U0)
    np.testing.assert_allclose(t.U2, t.U0)
    assert "dF" not in t


def test_spearman_is_one_on_a_monotone_case_and_bootstraps_an_interval():
    err = np.random.default_rng(0).random(50)
    r = spearman(err**3 + 1, err, bootstrap=200)
    assert r["rho"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0)
    assert spearman(-err, err, 50)["rho"] == pytest.approx(-1.0)
    noisy = spearman(err + np.random.default_rng(1).normal(0, 0.3, 50), err, 500)
    assert noisy["ci_low"] < noisy["rho"] < noisy["ci_high"] < 1


def test_coverage_curve_ends_at_the_plain_rmse_and_drops_the_most_uncertain_first():
    rng = np.random.default_rng(0)
    n_comp = 3 * rng.integers(3, 8, size=40).astype(float)
    per_comp = rng.random(40)
    sq = per_comp * n_comp
    c = coverage_curve(per_comp, sq, n_comp, np.array([0.1, 0.5, 1.0]))
    assert c.rmse.iloc[-1] == pytest.approx(np.sqrt(sq.sum() / n_comp.sum()))
    kept = np.argsort(per_comp)[:4]  # an oracle U keeps the 4 best frames at 10 %
    assert c.rmse.iloc[0] == pytest.approx(np.sqrt(sq[kept].sum() / n_comp[kept].sum()))
    assert (np.diff(c.rmse) >= 0).all()
    t = threshold_curve(per_comp, sq, n_comp, np.array([-1.0, 2.0]))
    assert np.isnan(t.rmse[0]) and t.fraction_kept[0] == 0
    assert t.rmse[1] == pytest.approx(c.rmse.iloc[-1]) and t.fraction_kept[1] == 1


def test_force_delta_is_zero_for_an_exact_gradient_and_not_otherwise(methane):
    """A Morse model's autograd forces against its analytic gradient (numpy): U_Δ ~ 0; a
    'direct head' that is off (another Morse's forces) gives U_Δ > 0."""
    pot = MorsePotential("m", d=0.3, a=1.2, r0=1.1)
    fr = methane.subset(range(4))
    _, f_auto = pot.predict(fr)

    def analytic(pos):
        pos = np.asarray(pos, dtype=np.float64)
        d = pos[:, None] - pos[None]
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        e = np.exp(-1.2 * (r - 1.1))
        dedr = 2 * 0.3 * (1 - e) * 1.2 * e  # dE/dr of D (1 - e^{-a(r - r0)})^2
        return -(dedr[..., None] * d / r[..., None]).sum(axis=1)

    exact = np.concatenate([analytic(fr.positions[fr.atom_index([i])]) for i in range(len(fr))])
    assert force_delta(exact, f_auto, fr.n_atoms).max() < 1e-9
    _, f_other = MorsePotential("o", d=0.3, a=1.2, r0=1.15).predict(fr)
    assert (force_delta(f_other, f_auto, fr.n_atoms) > 1e-3).all()


def test_bad_input_gets_one_line_errors(two_frames):
    f, n, ref = two_frames
    with pytest.raises(ElmlffError, match=r"positive and finite.*\['b'\]"):
        inverse_rmse_weights([0.1, 0.0], ["a", "b"])
    with pytest.raises(ElmlffError, match="expected \\(models, 4 atoms, 3\\)"):
        ensemble_uncertainty(f, np.array([1, 3]), np.full(3, 1 / 3))
    bad = f.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ElmlffError, match="NaN"):
        ensemble_uncertainty(bad, n, np.full(3, 1 / 3))
    with pytest.raises(ElmlffError, match="reference forces"):
        ensemble_uncertainty(f, n, np.full(3, 1 / 3), ref[:2])


def _write_extxyz(path, frames, forces, models, ref=True, drop=None):
    """Frames carrying forces_<model> arrays (and the reference forces)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    out = []
    for i, atoms in enumerate(frames.to_atoms()):
        a = frames.atom_index([i])
        for k, m in enumerate(models):
            if drop == (m, i):
                continue
            atoms.arrays[f"forces_{m}"] = forces[k, a]
        atoms.calc = SinglePointCalculator(atoms, forces=frames.forces[a]) if ref else None
        out.append(atoms)
    write(path, out, format="extxyz")


def test_uq_score_round_trips_an_extxyz_file_built_from_a_store(methane, tmp_path):
    """Frames of different sizes (methane and a 3-atom fragment) with three models' forces,
    written as extxyz, scored by the command: the table equals the direct computation."""
    from elmlff.data.frames import Frames

    part = methane.subset(range(6))
    small = methane.subset([6])
    keep = [0, 1, 2]
    small.numbers, small.positions = small.numbers[keep], small.positions[keep]
    small.forces, small.n_atoms = small.forces[keep], np.array([3])
    frames = Frames.concatenate([part, small], name="mixed")
    rng = np.random.default_rng(0)
    models = ["a", "b", "c"]
    forces = frames.forces[None] + rng.normal(0, [[[0.01]], [[0.02]], [[0.05]]], (3, 33, 3))
    path = tmp_path / "f.extxyz"
    _write_extxyz(path, frames, forces, models)
    rmse = ["a=0.01", "b=0.02", "c=0.05"]
    args = ["uq", "score", str(path), "--out", str(tmp_path / "u.csv"), "--rmse", *rmse]
    assert main([*args, "--summary", str(tmp_path / "s.json"), "--bootstrap", "50"]) == 0
    got = pd.read_csv(tmp_path / "u.csv")
    want = ensemble_uncertainty(
        forces, frames.n_atoms, inverse_rmse_weights([0.01, 0.02, 0.05]), frames.forces
    )
    for col in ("U0", "U1", "U2", "std_mean", "std_max", "dF", "dF_w"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-6, atol=1e-9)
    assert got.n_atoms.tolist() == [5] * 6 + [3]
    info = json.loads((tmp_path / "s.json").read_text())
    assert info["weights"]["a"] > info["weights"]["c"] and info["labelled"]
    assert {r["uncertainty"] for r in info["spearman"]} >= {"U0", "U1", "U2", "std_max"}


def test_uq_score_refuses_missing_forces_and_bad_weights(methane, tmp_path, capsys):
    frames = methane.subset(range(3))
    forces = np.repeat(frames.forces[None], 2, axis=0)
    path = tmp_path / "f.extxyz"
    _write_extxyz(path, frames, forces, ["a", "b"], drop=("b", 1))
    assert main(["uq", "score", str(path), "--out", str(tmp_path / "u.csv")]) == 2
    err = capsys.readouterr().err
    assert "model 'b' has no per-atom array forces_b on 1 frames (first: frame 1)" in err
    _write_extxyz(path, frames, forces, ["a", "b"])
    assert (
        main(
            ["uq", "score", str(path), "--out", str(tmp_path / "u.csv"), "--rmse", "a=0.1", "b=-1"]
        )
        == 2
    )
    assert "must be positive and finite" in capsys.readouterr().err
    assert (
        main(["uq", "score", str(path), "--out", str(tmp_path / "u.csv"), "--rmse", "a=0.1"]) == 2
    )
    assert "RMSE weights name ['b'] missing" in capsys.readouterr().err
    # unlabelled frames: the table still comes, with no error columns and no rho
    _write_extxyz(path, frames, forces, ["a", "b"], ref=False)
    assert main(["uq", "score", str(path), "--out", str(tmp_path / "u.csv")]) == 0
    assert "dF" not in pd.read_csv(tmp_path / "u.csv")


def test_uq_score_names_the_model_and_frame_of_nan_forces(methane, tmp_path, capsys):
    frames = methane.subset(range(3))
    forces = np.repeat(frames.forces[None], 2, axis=0)
    forces[1, 7, 2] = np.nan  # atom 7 = frame 1, its atom 2
    path = tmp_path / "f.extxyz"
    _write_extxyz(path, frames, forces, ["a", "b"])
    assert main(["uq", "score", str(path), "--out", str(tmp_path / "u.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"elmlff: error: {path}: model 'b' has NaN/inf forces on 1 frames (first: frame 1, "
        "atom 2); fix: re-predict those frames with that model, or leave it out with --models"
    )
    # NaN in the reference forces: named too
    from ase.io import read, write

    from elmlff.uq.score import read_extxyz

    _write_extxyz(path, frames, np.repeat(frames.forces[None], 2, axis=0), ["a", "b"])
    images = read(path, index=":")
    images[2].calc.results["forces"][1, 0] = np.nan
    write(path, images, format="extxyz")
    with pytest.raises(
        ElmlffError,
        match=r"reference forces 'forces' are NaN/inf on 1 frames "
        r"\(first: frame 2, atom 1\)",
    ):
        read_extxyz(path)


def test_uq_score_rmse_arguments(methane, tmp_path, capsys):
    """--rmse with --models, a file after --rmse or --models, comma lists and --rmse-json."""
    frames = methane.subset(range(4))
    rng = np.random.default_rng(1)
    forces = frames.forces[None] + rng.normal(0, 0.05, (3, 20, 3))
    path = tmp_path / "f.extxyz"
    _write_extxyz(path, frames, forces, ["a", "b", "c"])
    out = ["--out", str(tmp_path / "u.csv"), "--summary", str(tmp_path / "s.json")]

    def weights(*args):
        assert main(["uq", "score", *args, *out, "--bootstrap", "10"]) == 0, capsys.readouterr()
        return json.loads((tmp_path / "s.json").read_text())["weights"]

    # --models with the full --rmse list: RMSEs of models left out are ignored
    w = weights(str(path), "--models", "a", "b", "--rmse", "a=0.1", "b=0.2", "c=0.4")
    assert w == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert json.loads((tmp_path / "s.json").read_text())["rmse_not_scored"] == ["c"]
    # the file after --rmse (which takes every word that follows) or after --models
    want = {"a": 4 / 7, "b": 2 / 7, "c": 1 / 7}
    assert weights("--rmse", "a=0.1", "b=0.2", "c=0.4", str(path)) == pytest.approx(want)
    assert weights("--models", "a", "b", str(path)) == pytest.approx({"a": 0.5, "b": 0.5})
    # the README's form, a comma list, and a JSON file (or a uq summary holding the RMSEs)
    assert weights(str(path), "--rmse", "a=0.1", "b=0.2", "c=0.4") == pytest.approx(want)
    assert weights(str(path), "--rmse", "a=0.1,b=0.2,c=0.4") == pytest.approx(want)
    (tmp_path / "r.json").write_text(json.dumps({"a": 0.1, "b": 0.2, "c": 0.4}))
    assert weights(str(path), "--rmse-json", str(tmp_path / "r.json")) == pytest.approx(want)
    (tmp_path / "r.json").write_text(json.dumps({"force_rmse_for_weights": {"a": 0.1, "b": 0.2}}))
    got = weights(str(path), "--rmse-json", str(tmp_path / "r.json"), "--rmse", "c=0.4")
    assert got == pytest.approx(want)

    def error(*args):
        assert main(["uq", "score", *args, "--out", str(tmp_path / "u.csv")]) == 2
        return capsys.readouterr().err.strip()

    msg = error(str(path), "--rmse", "a=0.1", "b=0.2", "c=0.4", "z=1")
    assert f"RMSE given for ['z'], not in {path} (its models: ['a', 'b', 'c'])" in msg
    msg = error(str(path), "--models", "a", "b", "--rmse", "a=0.1")
    assert "RMSE weights name ['b'] missing (scored models: ['a', 'b']" in msg
    msg = error(str(path), "--rmse", "a", "0.1")
    assert "bad --rmse 'a'" in msg
    msg = error(str(path), "--rmse", "a=0.1", "--rmse-json", str(tmp_path / "r.json"))
    assert msg.startswith("elmlff: error: model 'a' has two RMSEs (0.1 and 0.1)")
    (tmp_path / "r.json").write_text("{oops")
    assert ":1: not valid JSON" in error(str(path), "--rmse-json", str(tmp_path / "r.json"))
    assert "no extxyz file given" in error("--rmse", "a=0.1")


# -- adversarial sampling and selection for labelling ---------------------------------------
def _morse_bases():
    return [
        MorsePotential("a", r0=1.09, r0_same=1.78),
        MorsePotential("b", scale=1.3, a=1.0, r0_same=1.70),
        MorsePotential("c", scale=0.8, r0=1.12, r0_same=1.85),
    ]


def test_differentiable_u_equals_u1_and_the_attack_raises_it(methane, tmp_path):
    import torch

    from elmlff.baselines import LinearCombiner
    from elmlff.bases import frame_tensors
    from elmlff.calculator import EnsembleCalculator
    from elmlff.meta.ensemble import LinearEnsemble
    from elmlff.uq.adversarial import AttackSettings, attack, differentiable_u, label

    pots = _morse_bases()
    w = inverse_rmse_weights([0.01, 0.03, 0.02])
    fr = methane.subset(range(4))
    pos = torch.as_tensor(fr.positions, dtype=torch.float64).requires_grad_(True)
    u, _ = differentiable_u(pots, w, pos, *frame_tensors(fr))
    f = np.stack([p.predict(fr)[1] for p in pots])
    np.testing.assert_allclose(
        u.detach().numpy(), ensemble_uncertainty(f, fr.n_atoms, w).U1, rtol=1e-10
    )
    hot = AttackSettings(steps=6, max_step=0.02, temperature_K=5000)  # U dominates the step
    traj, table = attack(fr, pots, w, hot, log=lambda m: None)
    assert len(traj) == 7 and len(table) == 28
    first, last = table[table.step == 0], table[table.step == 6]
    assert (last.U.to_numpy() > first.U.to_numpy()).all()
    assert (last.max_displacement <= 6 * 0.02 + 1e-9).all() and (last.max_displacement > 0).all()
    # labelled by a reference calculator (here an exact Morse): ΔF of the ensemble mean
    ref = EnsembleCalculator(
        LinearEnsemble(LinearCombiner("ref", ["r"], [1.0]), [MorsePotential("r")])
    )
    lab = label(traj[:2], pots, w, ref)
    assert len(lab) == 8 and (lab.dF > 0).all()
    np.testing.assert_allclose(lab.U1[:4], first.U, rtol=1e-8)
    # cold, the energy term dominates: the frames move down in energy instead
    cold = AttackSettings(steps=6, max_step=0.02, temperature_K=30)
    _, table = attack(fr, pots, w, cold, log=lambda m: None)
    assert table[table.step == 6].dE.mean() < -0.005


def test_selection_for_labelling_by_threshold_and_count(methane, tmp_path):
    from ase.io import read, write

    from elmlff.uq.adversarial import select_for_labelling

    atoms = methane.subset(range(5)).to_atoms()
    for i, a in enumerate(atoms):
        a.info["uncertainty"] = [0.1, 0.5, 0.3, 0.05, 0.4][i]
    write(tmp_path / "md.extxyz", atoms[:3], format="extxyz")
    write(tmp_path / "more.extxyz", atoms[3:], format="extxyz")
    pool = [tmp_path / "md.extxyz", tmp_path / "more.extxyz"]
    assert select_for_labelling(pool, tmp_path / "top.extxyz", top=2) == 2
    got = read(tmp_path / "top.extxyz", index=":")
    assert [a.info["U_selected"] for a in got] == [0.5, 0.4]
    assert got[1].info["selected_from"].endswith("more.extxyz")
    assert select_for_labelling(pool, tmp_path / "hi.extxyz", u_c=0.2) == 3
    with pytest.raises(ElmlffError, match="one of --u-c, --top"):
        select_for_labelling(pool, tmp_path / "x.extxyz")
    del atoms[0].info["uncertainty"]
    write(tmp_path / "bad.extxyz", atoms[:1], format="extxyz")
    with pytest.raises(ElmlffError, match="frame 0 has no 'uncertainty'"):
        select_for_labelling([tmp_path / "bad.extxyz"], tmp_path / "x.extxyz", top=1)


def test_the_attack_raises_u_of_a_tiny_trained_ensemble(methane, tiny_schnet):
    """A trained SchNet and a Morse base: U (through SchNet's second derivatives) rises."""
    from elmlff import bases as B
    from elmlff.uq.adversarial import AttackSettings, attack

    pots = [B.load(tiny_schnet), MorsePotential("morse")]
    fr = methane.subset(range(100, 103))
    s = AttackSettings(steps=5, max_step=0.01, temperature_K=5000)
    _, table = attack(fr, pots, np.array([0.5, 0.5]), s, log=lambda m: None)
    u = table.pivot(index="step", columns="frame", values="U")
    assert (u.iloc[-1] > u.iloc[0]).all()
    assert (np.diff(u.to_numpy(), axis=0) > -1e-6).mean() > 0.8  # nearly every step goes up
