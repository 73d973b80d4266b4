"""Meta-models: Ensemble-conserv physics through the bases, Ensemble-direct on mixed batches,
training that beats the plain mean on a biased ensemble, the ASE calculator, leak guards."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from analytic import MorsePotential, labelled

from elmlff import bases as B
from elmlff.calculator import EnsembleCalculator
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.meta import build, load_model, save
from elmlff.meta.data import MetaData, Stats, batch_from_frames
from elmlff.meta.direct import CSRGraph, folded_gat_conv, gaussian_rbf
from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble, LinearEnsemble
from elmlff.meta.graph import neighbour_graph
from elmlff.meta.live import base_outputs
from elmlff.meta.params import TrainSettings
from elmlff.meta.train import fit

from conftest import biased_bases, random_frames
from physics import PotentialPhysicsTests


def theta(n_models: int, species, use_forces: bool = True, seed: int = 0):
    """A small e3nn θ with a random (non-zero) readout, so it depends on every input."""
    torch.manual_seed(seed)
    th = build(
        "conserv",
        n_models,
        list(species),
        Stats(0.5, -8.0, 0.05),
        {"use_forces": use_forces, "cutoff": 4.0, "scalars": 8, "vectors": 4, "layers": 2},
    )
    with torch.no_grad():
        for p in th.readout.parameters():
            p.normal_(0.0, 0.1)
    return th.eval()


def morse_problem(methane, n_frames: int):
    """(frames, bases, MetaData): ``n_frames`` methane frames labelled by a Morse reference,
    two live Morse bases, one good (x1.05) and one biased (x1.6), and their stored predictions."""
    ref = MorsePotential("ref")
    pots = [MorsePotential("good", scale=1.05), MorsePotential("biased", scale=1.6)]
    fr = labelled(methane.subset(range(n_frames)), ref)
    preds = [p.predict(fr) for p in pots]
    e, f = np.stack([e for e, _ in preds]), np.stack([f for _, f in preds])
    return fr, pots, MetaData(fr, ["good", "biased"], e, f, cutoff=4.0)


@pytest.fixture(scope="module")
def ensemble_bases(tiny_schnet):
    """A trained SchNet and an analytic Morse base, both float64."""
    return [B.load(tiny_schnet), MorsePotential("morse")]


class TestConservEnsemblePhysics(PotentialPhysicsTests):
    """Forces = -dE/dx of the whole ensemble (bases included) by finite differences; rotation,
    translation, HVP and batching, through the shared physics mixin."""

    @pytest.fixture(scope="class")
    def potential(self, ensemble_bases):
        return ConservEnsemble(theta(2, [1, 6]), ensemble_bases)

    @pytest.fixture(scope="class")
    def frames(self, methane):
        fr = methane.subset(
            [0, 7, 19]
        )  # a molecule: drop DeePMD's 15 Å box (Morse is not periodic)
        fr.pbc, fr.cell = np.zeros_like(fr.pbc), np.zeros_like(fr.cell)
        return fr

    def test_predict_forces_equal_autograd_forces(self, potential, frames, ensemble_bases):
        """(Replaces the mixin's check, which for this class would compare autograd with
        itself.) With θ's network at zero the ensemble is the 1/M blend of its bases plus
        constant element energies, so its forces must equal the blend of each base's own
        ``predict()`` forces (schnetpack's inference path, the analytic Morse gradient); the
        trained-like θ of ``potential`` must differ from that blend."""
        th = theta(2, [1, 6])
        with torch.no_grad():
            for p in th.readout.parameters():
                p.zero_()
        _, f = ConservEnsemble(th, ensemble_bases).predict(frames)
        blend = np.mean([p.predict(frames)[1] for p in ensemble_bases], axis=0)
        np.testing.assert_allclose(f, blend, atol=1e-8)
        assert np.abs(potential.predict(frames)[1] - blend).max() > 1e-3


class TestConservEnergyOnlyPhysics(PotentialPhysicsTests):
    """Eq. 7 θ(E_m, x) over conservative bases: ``predict`` takes the chain rule, one backward
    pass per base (−dE/dx = Σ_m (∂θ/∂E_m) F_m − ∂θ/∂x), so the mixin's comparison with autograd
    through ``energy()`` (every base differentiated inside θ) and with finite differences checks
    that shortcut, not autograd against itself."""

    @pytest.fixture(scope="class")
    def potential(self, ensemble_bases):
        pot = ConservEnsemble(theta(2, [1, 6], use_forces=False), ensemble_bases)
        assert pot.chain_rule
        return pot

    @pytest.fixture(scope="class")
    def frames(self, methane):
        fr = methane.subset([0, 7, 19])
        fr.pbc, fr.cell = np.zeros_like(fr.pbc), np.zeros_like(fr.cell)
        return fr


def test_conserv_prediction_batches_are_capped_in_atoms(ensemble_bases, methane, monkeypatch):
    """The graph through the live bases grows with the atoms of a batch (128 slab frames ran
    out of memory): a cap in atoms splits the batch, and the predictions do not change."""
    pot = ConservEnsemble(theta(2, [1, 6]), ensemble_bases)
    frames = methane.subset(np.arange(6))
    whole = pot.predict_all(frames, batch_size=64)
    seen = []
    original = ConservEnsemble.outputs

    def spy(self, positions, *args, **kw):
        seen.append(len(positions))
        return original(self, positions, *args, **kw)

    monkeypatch.setattr(ConservEnsemble, "outputs", spy)
    monkeypatch.setattr(ConservEnsemble, "max_batch_atoms", 2 * 5)  # two methane frames
    split = pot.predict_all(frames, batch_size=64)
    assert seen == [10, 10, 10]
    np.testing.assert_allclose(split.forces, whole.forces, atol=1e-10)
    np.testing.assert_allclose(split.energy, whole.energy, atol=1e-10)


def test_conserv_forces_include_the_hessian_vector_term_through_the_bases(ensemble_bases, methane):
    """Eq. 6: our forces are −dE/dx of the ensemble's energy (central differences along a random
    direction); with the base forces detached (the reference code's shortcut) the
    (dθ/dF_m)·∇F_m term is lost and the forces are not the energy's gradient."""
    pot = ConservEnsemble(theta(2, [1, 6]), ensemble_bases)
    one = methane.subset([3])
    args = B.frame_tensors(one)
    v = np.random.default_rng(0).normal(size=one.positions.shape)
    v /= np.linalg.norm(v)
    h = 1e-4

    def energy(x: np.ndarray) -> float:
        return float(pot.energy(torch.as_tensor(x, dtype=torch.float64), *args).detach()[0])

    fd = -(energy(one.positions + h * v) - energy(one.positions - h * v)) / (2 * h)
    _, f = pot.predict(one)
    assert float((f * v).sum()) == pytest.approx(fd, abs=1e-6)
    pos = torch.as_tensor(one.positions, dtype=torch.float64).requires_grad_(True)
    b = pot._structure(pos, *args)
    em, fm = base_outputs(ensemble_bases, pos, *args, create_graph=True)
    (detached,) = torch.autograd.grad(pot.theta(b, pos, em, fm.detach()).sum(), pos)
    assert abs(float((-detached.numpy() * v).sum()) - fd) > 1e-3


def test_energy_only_variant_trained_from_the_store_matches_live_bases(ensemble_bases, methane):
    """Eq. 7 θ(E_m, x): the first-order expansion of the stored E_m gives exactly the live
    ensemble's energy and forces at the data points."""
    from elmlff.meta.train import ConservStep

    th = theta(2, [1, 6], use_forces=False)
    fr = methane.subset([1, 2, 5])
    preds = [p.predict(fr) for p in ensemble_bases]
    b = batch_from_frames(fr, np.stack([e for e, _ in preds]), np.stack([f for _, f in preds]), 4.0)
    e_store, f_store = ConservStep(th)(b, create_graph=False)
    e_live, f_live = ConservStep(th)(b, create_graph=False, pots=ensemble_bases)
    np.testing.assert_allclose(e_store.detach(), e_live.detach(), atol=1e-8)
    np.testing.assert_allclose(f_store, f_live, atol=1e-7)
    assert np.abs(f_live.numpy()).max() > 1e-2


@pytest.mark.parametrize("case", ["methane", "mixed_sizes"])
def test_cached_base_jacobians_give_the_live_training_step(case, ensemble_bases, methane):
    """Eq. 6 from the bases' energies, forces and force Jacobians at the frames (computed once,
    frames of different sizes zero-padded) gives the live bases' energy, forces and the loss's
    gradients to θ's weights; each Jacobian is the forces' central-difference derivative."""
    from elmlff.meta.live import LocalBases, force_jacobians
    from elmlff.meta.train import ConservStep

    if case == "methane":
        fr, pots, species = methane.subset([1, 2, 5, 9]), ensemble_bases, [1, 6]
    else:  # 3, 5, 2 and 4 atoms; two Morse bases of different shapes
        fr = random_frames(4, seed=3)
        pots, species = [MorsePotential("a"), MorsePotential("b", a=0.9, r0=1.4)], [1, 6, 8]
    fr.pbc, fr.cell = np.zeros_like(fr.pbc), np.zeros_like(fr.cell)
    th = theta(2, species, seed=1).train()
    preds = [p.predict(fr) for p in pots]
    b = batch_from_frames(fr, np.stack([e for e, _ in preds]), np.stack([f for _, f in preds]), 4.0)
    local = LocalBases(3 * int(fr.n_atoms.max()))
    local.add(np.arange(len(fr)), pots, b)
    step = ConservStep(th)

    def run(**where):
        th.zero_grad()
        e, f = step(b, create_graph=True, **where)
        (((f - b.ref_forces) ** 2).mean() + 1e-3 * ((e - b.ref_energy) ** 2).mean()).backward()
        return e.detach(), f.detach(), [p.grad.clone() for p in th.parameters()]

    e_live, f_live, g_live = run(pots=pots)
    e_loc, f_loc, g_loc = run(local=local)
    torch.testing.assert_close(e_loc, e_live, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f_loc, f_live, rtol=1e-9, atol=1e-10)
    for a, c in zip(g_loc, g_live, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)
    assert max(float(g.abs().max()) for g in g_live) > 1e-3
    # the Jacobian of the largest frame along a random direction, by central differences
    big = int(np.argmax(fr.n_atoms))
    one = fr.subset([big])
    args = B.frame_tensors(one)
    x0 = torch.as_tensor(one.positions, dtype=torch.float64)
    _, _, jac = force_jacobians(pots, x0, *args, rows=local.rows)
    v = torch.as_tensor(np.random.default_rng(0).normal(size=x0.shape))
    h = 1e-5
    for m, p in enumerate(pots):
        fd = (
            B.energy_and_forces(p, (x0 + h * v).requires_grad_(True), *args)[1]
            - B.energy_and_forces(p, (x0 - h * v).requires_grad_(True), *args)[1]
        ) / (2 * h)
        n3 = 3 * len(x0)
        jv = jac[0, m, :n3, :n3] @ v.reshape(-1)
        np.testing.assert_allclose(jv.numpy(), fd.detach().reshape(-1).numpy(), atol=1e-6)
        assert float(jac[0, m, n3:].abs().sum() + jac[0, m, :, n3:].abs().sum()) == 0.0


def test_force_jacobians_without_vmap_loop_over_rows(monkeypatch):
    """A base that vmap cannot batch (here: every base, refused by a patched autograd) gets
    its Jacobian one row at a time: the same blocks as the vmapped pass."""
    from elmlff.meta.live import force_jacobians

    fr = random_frames(3, seed=5)
    pots = [MorsePotential("a"), MorsePotential("b", a=0.9, r0=1.4)]
    args = B.frame_tensors(fr)
    x0 = torch.as_tensor(fr.positions, dtype=torch.float64)
    batched = force_jacobians(pots, x0, *args, rows=15)
    grad = torch.autograd.grad
    refused = []

    def no_vmap(*a, is_grads_batched=False, **kw):
        if is_grads_batched:
            refused.append(True)
            raise RuntimeError("vmap: not supported (test)")
        return grad(*a, **kw)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    looped = force_jacobians(pots, x0, *args, rows=15)
    assert len(refused) == len(pots)
    for a, c in zip(looped, batched, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    assert float(batched[2].abs().max()) > 0.1


def test_conserv_training_from_cached_jacobians_repeats_live_training(methane):
    """fit() with the bases' Jacobians cached (``bases: auto`` on small frames) runs the same
    epochs as through the live bases at every step (``bases: live``): the same val errors."""
    fr, pots, data = morse_problem(methane, 40)
    fit_idx, val_idx = np.arange(30), np.arange(30, 40)
    runs = {}
    for bases in ["auto", "live"]:
        model = build(
            "conserv",
            2,
            fr.species,
            Stats.fit(fr.subset(fit_idx)),
            {"use_forces": True, "cutoff": 4.0, "scalars": 8, "vectors": 4},
            seed=0,
        )
        s = TrainSettings(max_epochs=3, batch_size=8, lr=1e-2, patience=5, bases=bases)
        runs[bases] = fit(
            model, data, fit_idx, val_idx, data.models, s, {-1: pots}, pots, log=lambda m: None
        )
    assert runs["auto"]["base_jacobians"] == "cached"
    assert runs["live"]["base_jacobians"] == "every step"
    for key in ["untrained_val_force_rmse", "best_val_force_rmse"]:
        assert runs["auto"][key] == pytest.approx(runs["live"][key], rel=1e-9)
    cached = [h["val_force_rmse"] for h in runs["auto"]["history"]]
    live = [h["val_force_rmse"] for h in runs["live"]["history"]]
    np.testing.assert_allclose(cached, live, rtol=1e-9)
    assert len(set(np.round(cached, 6))) > 1  # it trained


def test_nve_with_the_ensemble_calculator_conserves_total_energy(ensemble_bases, methane):
    """300 velocity-Verlet steps of 0.25 fs (75 fs, ~7 C-H vibrations) from 300 K: the total
    energy stays within 5 meV (2.5 % of the 0.19 eV kinetic energy of methane at 300 K; the
    O(dt²) Verlet error for a 11 fs C-H period is ~0.5 meV; measured 0.4 meV) while the kinetic
    energy swings by far more (0.6 eV here: the 2-epoch SchNet base is far from equilibrium)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = methane.subset([0]).to_atoms()[0]
    atoms.calc = EnsembleCalculator(ConservEnsemble(theta(2, [1, 6]), ensemble_bases))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    e0 = atoms.get_total_energy()
    tot, kin, std = [], [], []
    for _ in range(300):
        dyn.run(1)
        tot.append(atoms.get_total_energy())
        kin.append(atoms.get_kinetic_energy())
        std.append(atoms.calc.results["force_std_max"])
    drift = np.abs(np.array(tot) - e0).max()
    print(f"NVE drift {1e3 * drift:.3f} meV, kinetic energy swing {1e3 * np.ptp(kin):.1f} meV")
    assert drift < 5e-3, f"total energy moved by {1e3 * drift:.2f} meV"
    assert np.ptp(kin) > 10 * drift  # energy flows between kinetic and potential
    assert np.all(np.array(std) > 0) and np.isfinite(std).all()


def test_calculator_reports_base_disagreement_computed_by_hand(methane):
    a, b = MorsePotential("a"), MorsePotential("b", scale=1.5)
    atoms = methane.subset([4]).to_atoms()[0]
    calc = EnsembleCalculator(
        LinearEnsemble(__import__("elmlff.baselines").baselines.mean(["a", "b"]), [a, b])
    )
    atoms.calc = calc
    f = atoms.get_forces()
    fa, fb = a.predict(methane.subset([4]))[1], b.predict(methane.subset([4]))[1]
    np.testing.assert_allclose(f, (fa + fb) / 2, atol=1e-12)
    sigma = np.linalg.norm(fa - fb, axis=1) / 2  # two bases: std = half the difference
    assert calc.results["force_std_mean"] == pytest.approx(sigma.mean())
    assert calc.results["force_std_max"] == pytest.approx(sigma.max())
    # the extra results are implemented properties (ASE's get_property serves them)
    assert calc.get_property("force_std_max", atoms) == pytest.approx(sigma.max())
    assert calc.get_property("base_forces", atoms).shape == (2, 5, 3)
    assert calc.get_property("uncertainty", atoms) > 0


# -- Ensemble-direct ------------------------------------------------------------------------
def _copper_slab() -> Frames:
    from ase.build import fcc111
    from ase.calculators.singlepoint import SinglePointCalculator

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    rng = np.random.default_rng(1)
    slab.positions += rng.normal(scale=0.02, size=slab.positions.shape)
    slab.calc = SinglePointCalculator(slab, energy=-40.0, forces=rng.normal(size=(12, 3)))
    return Frames.from_atoms([slab], name="slab")


def _copper_bulk(seed: int) -> Frames:
    """A rattled 4-atom cubic Cu cell, 3.61 Å wide: at a 4 Å cutoff each atom sees its own
    periodic images."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=seed)
    cu.calc = SinglePointCalculator(cu, energy=-15.0, forces=np.zeros((4, 3)))
    return Frames.from_atoms([cu], name="bulk")


def test_neighbour_graph_counts_fcc_neighbours_through_periodic_images():
    slab = _copper_slab()
    g = neighbour_graph(slab, cutoff=2.8)  # Cu nearest-neighbour distance 2.55 Å
    counts = np.bincount(g.dst, minlength=12)
    z = slab.positions[:, 2]
    middle = np.abs(z - np.median(z)) < 0.5
    assert (counts[middle] == 12).all() and (counts[~middle] == 9).all()
    assert np.abs(g.shift).sum() > 0  # 2x2 in-plane cell: neighbours are periodic images


@pytest.mark.parametrize("box", [0.0, 6.0], ids=["molecule", "small_periodic_box"])
def test_vectorised_graph_equals_vesin(methane, box):
    """The dense minimum-image path (molecules, wide orthorhombic cells) gives vesin's edges."""
    from elmlff.meta.graph import _pairs_vesin

    fr = methane.subset(range(12))
    fr.cell = np.tile(np.eye(3) * box, (12, 1, 1))
    fr.pbc = np.full((12, 3), box > 0)
    if box:  # each molecule centred on a box corner and wrapped: bonds cross the boundary
        fr.positions = np.mod(fr.positions - np.repeat(fr.positions[fr.offsets], 5, axis=0), box)
    fast = neighbour_graph(fr, 2.9)  # 6 Å box: periodic images within 2.9 Å exist
    ref = [_pairs_vesin(fr, f, 2.9) for f in range(12)]

    def edges(src, dst, shift):
        return sorted(zip(src.tolist(), dst.tolist(), np.round(shift, 6).tolist(), strict=True))

    slow = [np.concatenate(z) for z in zip(*ref, strict=True)]
    assert edges(fast.src, fast.dst, fast.shift) == edges(*slow)
    if box:
        assert np.abs(fast.shift).max() > 0


@pytest.fixture(scope="module")
def mixed(methane):
    """Two methane frames and a periodic Cu slab in one set, with random base predictions."""
    fr = Frames.concatenate([methane.subset([0, 1]), _copper_slab()], name="mixed")
    rng = np.random.default_rng(0)
    return fr, rng.normal(size=(3, 3)) - 40, rng.normal(size=(3, len(fr.numbers), 3))


def _direct(species, seed=0):
    torch.manual_seed(seed)
    m = build("direct", 3, species, Stats(1.0, -10.0, 1.0), {"hidden": 16, "layers": 2})
    with torch.no_grad():  # a random head, so the correction is not zero
        m.head[-1].weight.normal_(0, 0.3)
    return m.eval()


def test_direct_blend_is_the_plain_mean_at_start_and_the_paper_form_has_none(mixed):
    """Default (blend): an untrained model is the plain mean of the base forces. The paper's
    form (``blend: false``): forces come from the head alone, so with its last layer at zero
    it predicts zero forces whatever the bases say."""
    fr, e, f = mixed
    b = batch_from_frames(fr, e, f, 4.0).to("cpu", torch.float32)
    stats = Stats(1.0, -10.0, 1.0)
    with torch.no_grad():
        ours = build("direct", 3, fr.species, stats, {"hidden": 16, "layers": 2})(b)
        np.testing.assert_allclose(ours.numpy(), f.mean(0), atol=1e-5)
        paper = build("direct", 3, fr.species, stats, {"hidden": 16, "layers": 2, "blend": False})
        assert "blend" not in dict(paper.named_parameters())
        assert paper(b).abs().max() > 1e-3  # a default-initialised head
        paper.head[-1].weight.zero_()
        paper.head[-1].bias.zero_()
        assert paper(b).abs().max() == 0


def test_direct_on_a_batch_mixing_methane_and_a_periodic_slab(mixed):
    fr, e, f = mixed
    model = _direct(fr.species)
    ens = DirectEnsemble(model, [])
    together = ens.forces_from(fr, e, f)
    assert together.shape == (len(fr.numbers), 3) and np.isfinite(together).all()
    for k in range(3):  # no message crosses frames: each frame alone gives the same forces
        a = fr.atom_index([k])
        alone = ens.forces_from(fr.subset([k]), e[:, [k]], f[:, a])
        np.testing.assert_allclose(alone, together[a], atol=1e-5)


def test_direct_forces_permute_with_the_atoms(mixed):
    fr, e, f = mixed
    ens = DirectEnsemble(_direct(fr.species), [])
    slab = fr.subset([2])
    a = fr.atom_index([2])
    perm = np.random.default_rng(3).permutation(len(slab.numbers))
    shuffled = fr.subset([2])
    shuffled.numbers, shuffled.positions = slab.numbers[perm], slab.positions[perm]
    out = ens.forces_from(slab, e[:, [2]], f[:, a])
    out_perm = ens.forces_from(shuffled, e[:, [2]], f[:, a][:, perm])
    np.testing.assert_allclose(out_perm, out[perm], atol=1e-5)


def test_direct_refuses_an_element_it_never_saw(mixed, methane):
    fr, e, f = mixed
    ens = DirectEnsemble(_direct([1, 6]), [])
    with pytest.raises(ElmlffError, match=r"Z=\[29\]"):
        ens.forces_from(fr, e, f)


# -- training beats the plain mean when one base is biased ----------------------------------
@pytest.fixture(scope="module")
def biased_problem(methane):
    """Reference: the data's own labels; bases: two noisy copies and one biased (x1.6 + 0.3)."""
    return biased_bases(methane.subset(range(240)), ["a", "b", "biased"], (0.05, 0.05))


def _rmse(pred, ref):
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def test_direct_meta_beats_the_plain_mean_with_a_biased_base(biased_problem, tmp_path):
    data = biased_problem
    fit_idx, val_idx, test_idx = np.arange(160), np.arange(160, 200), np.arange(200, 240)
    model = build(
        "direct",
        3,
        data.frames.species,
        Stats.fit(data.frames.subset(fit_idx)),
        {"hidden": 16, "layers": 2},
    )
    s = TrainSettings(max_epochs=40, batch_size=32, lr=3e-3, patience=40)
    info = fit(model, data, fit_idx, val_idx, data.models, s, log=lambda m: None)
    assert info["best_val_force_rmse"] < info["untrained_val_force_rmse"]
    save(model, data.models, tmp_path / "m", {"x": 1})
    loaded, models = load_model(tmp_path / "m")
    assert models == data.models
    test = data.frames.subset(test_idx)
    a = data.frames.atom_index(test_idx)
    pred = DirectEnsemble(loaded, []).forces_from(
        test, data.base_energy[:, test_idx], data.base_forces[:, a]
    )
    mean = data.base_forces[:, a].mean(0)
    assert _rmse(pred, test.forces) < 0.5 * _rmse(mean, test.forces)


def test_a_meta_whose_training_loss_goes_nan_is_stopped_flagged_and_kept_at_its_best_state(
    biased_problem, monkeypatch
):
    """A diverging training (here: forces that turn NaN from the 20th training batch on) stops
    at that epoch with a DIVERGED log line and ``diverged_epoch`` in its facts, and the model
    is its best val state, finite, not NaN weights and not a silent run to its patience."""
    from elmlff.meta.direct import EnsembleDirect

    data = biased_problem
    fit_idx, val_idx = np.arange(160), np.arange(160, 200)
    model = build("direct", 3, data.frames.species, Stats.fit(data.frames), {"hidden": 16})
    forward, calls = EnsembleDirect.forward, [0]

    def poisoned(self, b):
        f = forward(self, b)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] >= 20:  # 5 batches an epoch: the 4th epoch's last
                return f * torch.nan
        return f

    monkeypatch.setattr(EnsembleDirect, "forward", poisoned)
    lines: list[str] = []
    s = TrainSettings(max_epochs=30, batch_size=32, lr=3e-3, patience=30)
    info = fit(model, data, fit_idx, val_idx, data.models, s, log=lines.append)
    assert info["diverged_epoch"] == 4 and info["epochs_run"] == 3
    assert info["best_epoch"] <= 3 and np.isfinite(info["best_val_force_rmse"])
    assert any("DIVERGED" in line for line in lines)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("use_forces", "l_max", "vectors"),
    [(True, 2, 4), (False, 2, 4), (True, 1, 3), (False, 3, 2)],
    ids=["eq6", "eq7", "eq6_lmax1", "eq7_lmax3"],
)
def test_conserv_fused_form_equals_the_e3nn_modules(mixed, use_forces, l_max, vectors):
    """θ's fused evaluation (dense linears, batched tensor product, gate order folded in) gives
    the e3nn modules' energy, its derivatives in the inputs and, for Eq. 6 training, the
    weights' gradient of a force loss (a second derivative), on a batch mixing a molecule
    and a periodic slab; under ``frozen`` its cached matrices follow a weight update."""
    fr, e, f = mixed
    torch.manual_seed(1)
    params = {"use_forces": use_forces, "cutoff": 4.0, "scalars": 6, "vectors": vectors}
    th = build("conserv", 3, fr.species, Stats(0.5, -8.0, 0.05), {**params, "l_max": l_max})
    with torch.no_grad():
        for p in th.parameters():
            p.normal_(0.0, 0.5)
    b = batch_from_frames(fr, e, f, 4.0)
    x = b.positions.clone().requires_grad_(True)
    em = b.base_energy.clone().requires_grad_(True)
    fm = b.base_forces.clone().requires_grad_(True)
    inputs = (x, em, fm) if use_forces else (x, em)

    def outputs(fused: bool):
        e = th(b, x, em, fm, fused=fused)
        grads = torch.autograd.grad(e.sum(), inputs, create_graph=True)
        loss = (grads[0] ** 2).sum()  # a force loss: its weight gradient is a second derivative
        return [e, *grads, *torch.autograd.grad(loss, list(th.parameters()), allow_unused=True)]

    ref, got = outputs(False), outputs(True)
    assert float(ref[1].detach().abs().max()) > 1e-3  # the energy depends on the positions
    for r, g in zip(ref, got, strict=True):
        if r is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    with th.frozen():
        first = th(b, x, em, fm).detach()
        with torch.no_grad():
            th.blocks[0].lin_up.weight.mul_(1.5)  # the cached matrices must follow
        second = th(b, x, em, fm).detach()
    torch.testing.assert_close(first, ref[0].detach(), rtol=1e-9, atol=1e-12)
    assert float((second - first).abs().max()) > 1e-6
    torch.testing.assert_close(second, th(b, x, em, fm, fused=False).detach(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("use_forces", [True, False], ids=["eq6_live", "eq7_store"])
def test_conserv_meta_beats_the_plain_mean_with_a_biased_base(methane, use_forces):
    """Live analytic bases (one biased) on a Morse reference: θ learns to trust the good base."""
    fr, pots, data = morse_problem(methane, 120)
    fit_idx, val_idx, test_idx = np.arange(80), np.arange(80, 100), np.arange(100, 120)
    model = build(
        "conserv",
        2,
        fr.species,
        Stats.fit(fr.subset(fit_idx)),
        {"use_forces": use_forces, "cutoff": 4.0, "scalars": 8, "vectors": 4},
    )
    s = TrainSettings(max_epochs=20, batch_size=10, lr=1e-2, patience=20)
    # Eq. 6 trains through the live bases; Eq. 7 from the stored predictions (MetaSpec decides
    # which; the job passes live bases only then)
    live = ({-1: pots}, pots) if use_forces else (None, None)
    info = fit(model, data, fit_idx, val_idx, data.models, s, *live, log=lambda m: None)
    assert info["bases_in_training"] == ("live" if use_forces else "stored predictions")
    test = fr.subset(test_idx)
    _, f = ConservEnsemble(model, pots).predict(test)
    mean = np.mean([p.predict(test)[1] for p in pots], axis=0)
    assert _rmse(f, test.forces) < 0.5 * _rmse(mean, test.forces)


def test_meta_data_refuses_nan_base_forces(methane):
    fr = methane.subset(range(3))
    bf = np.zeros((2, 15, 3))
    bf[1, 4, 0] = np.nan
    with pytest.raises(ElmlffError, match=r"base forces of \['b'\] contain NaN"):
        MetaData(fr, ["a", "b"], np.zeros((2, 3)), bf, cutoff=4.0)


def test_subset_names_round_trip_and_refuse_unknown_bases():
    from elmlff.subsets import name, resolve

    ens = ["schnet", "painn", "dp", "nequip"]
    assert resolve("all", ens) == ens
    assert resolve("nequip+schnet", ens) == ["schnet", "nequip"]
    assert name(["nequip", "schnet"], ens) == "schnet+nequip"
    assert name(ens[::-1], ens) == "all"
    with pytest.raises(ElmlffError, match="subset 'schnet\\+nope'"):
        resolve("schnet+nope", ens)


def test_meta_training_refuses_frames_a_base_trained_on_or_test_frames(tmp_path):
    import xarray as xr

    from elmlff import keys
    from elmlff.data.split import Split
    from elmlff.guards import check_meta_split

    roles = {"train": [0, 1, 2], "meta": [3, 4], "val": [5], "test": [6, 7]}
    split = Split(roles, [], 0, "random")
    ins = np.zeros((2, 8), dtype=bool)
    ins[:, :3] = True
    ds = xr.Dataset({keys.BASE_IN_SAMPLE: (("model", "frame"), ins)}, coords={"model": ["a", "b"]})
    check_meta_split(ds, split, ["a", "b"], np.array([3, 4]), "out_of_sample")
    check_meta_split(ds, split, ["a", "b"], np.array([0, 1]), "in_sample")  # the ablation
    with pytest.raises(ElmlffError, match="are also test frames"):
        check_meta_split(ds, split, ["a"], np.array([3, 6]), "out_of_sample")
    with pytest.raises(ElmlffError, match=r"bases \['a', 'b'\] were trained on frames"):
        check_meta_split(ds, split, ["a", "b"], np.array([2, 3]), "out_of_sample")
    # a live base whose base.json says it trained on a meta frame
    from elmlff.bases import write_info

    write_info(tmp_path, {"name": "a", "trained_on": [0, 1, 2, 4]})
    with pytest.raises(ElmlffError, match="base 'a' fit full trained on frames"):
        check_meta_split(
            ds, split, ["a"], np.array([3, 4]), "out_of_sample", {"a": {"full": tmp_path}}
        )
    # a live base that early-stopped on a meta-training frame, or on a test frame
    live = {"a": {"full": tmp_path}}
    write_info(tmp_path, {"name": "a", "trained_on": [0, 1, 2], "validated_on": [3, 5]})
    with pytest.raises(ElmlffError, match="base 'a' fit full early-stopped on meta-training"):
        check_meta_split(ds, split, ["a"], np.array([3, 4]), "out_of_sample", live)
    write_info(tmp_path, {"name": "a", "trained_on": [0, 1, 2], "validated_on": [5, 7]})
    with pytest.raises(ElmlffError, match="early-stopped on test frames"):
        check_meta_split(ds, split, ["a"], np.array([3, 4]), "out_of_sample", live)
    write_info(tmp_path, {"name": "a", "trained_on": [0, 1, 2], "validated_on": [5]})
    check_meta_split(ds, split, ["a"], np.array([3, 4]), "out_of_sample", live)  # val: fine


def test_the_store_guard_checks_what_bases_validated_on():
    import xarray as xr

    from elmlff import keys
    from elmlff.data.split import Split
    from elmlff.guards import check_no_leak

    split = Split({"train": [0, 1, 2], "meta": [3, 4], "val": [5], "test": [6, 7]}, [], 0, "random")
    ins = np.zeros((1, 8), dtype=bool)
    ins[0, :3] = True
    val = np.zeros((1, 8), dtype=bool)
    val[0, 5] = True

    def store(validated):
        return xr.Dataset(
            {
                keys.BASE_IN_SAMPLE: (("model", "frame"), ins),
                keys.BASE_VALIDATED_ON: (("model", "frame"), validated),
            },
            coords={"model": ["a"]},
        )

    check_no_leak(store(val), split)
    for frame, role in ((3, "meta-fit"), (6, "test")):
        bad = val.copy()
        bad[0, frame] = True
        with pytest.raises(ElmlffError, match=rf"\['a'\] were validated on {role} frames"):
            check_no_leak(store(bad), split)


# -- subset study: many direct models trained at once ---------------------------------------
def test_stacked_adam_and_plateau_match_torch():
    from elmlff.meta.group import StackedAdam, StackedPlateau

    torch.manual_seed(0)
    w = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    lrs = [1e-2, 3e-3]
    ref = [torch.optim.Adam([p], lr=lr) for p, lr in zip(w, lrs, strict=True)]
    stacked = torch.stack([p.detach() for p in w]).requires_grad_(True)
    lr = torch.tensor(lrs, dtype=torch.float64)
    opt = StackedAdam({"w": stacked}, lr)
    for _ in range(6):
        targets = torch.randn(2, 4, 3)
        for p, o, t in zip(w, ref, targets, strict=True):
            o.zero_grad()
            ((p - t) ** 3).sum().backward()
            o.step()
        opt.zero_grad()
        ((stacked - targets) ** 3).sum().backward()
        opt.step()
    np.testing.assert_allclose(stacked.detach(), torch.stack(w).detach(), rtol=1e-5, atol=1e-6)
    # plateau: model 0 improves, model 1 stalls -> only model 1's rate halves after patience
    sched = StackedPlateau(lr, factor=0.5, patience=2)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ref[1], factor=0.5, patience=2)
    for i, v1 in enumerate([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]):
        sched.step(np.array([1.0 / (1 + i), v1]))
        torch_sched.step(v1)
    assert lr[1].item() == pytest.approx(ref[1].param_groups[0]["lr"])
    assert lr[1].item() == pytest.approx(lrs[1] / 4)
    assert lr[0].item() == lrs[0]


def test_subsets_trained_together_equal_subsets_trained_one_by_one(biased_problem, monkeypatch):
    from elmlff.meta import group
    from elmlff.meta.group import fit_direct_group, fit_direct_models, vmap_pays
    from elmlff.subsets import seed

    data = biased_problem
    fit_idx, val_idx = np.arange(96), np.arange(160, 200)
    stats = Stats.fit(data.frames.subset(fit_idx))
    subsets = [["a", "b"], ["a", "biased"], ["b", "biased"]]
    s = TrainSettings(max_epochs=6, batch_size=16, lr=3e-3, patience=2)
    params = {"hidden": 16, "layers": 2}

    def models():
        return [
            build("direct", 2, data.frames.species, stats, params, seed=seed(0, "+".join(c)))
            for c in subsets
        ]

    together, quiet = models(), lambda m: None
    infos = fit_direct_group(together, subsets, data, fit_idx, val_idx, s, log=quiet)
    assert [i["trained_with"] for i in infos] == [3, 3, 3]
    # one model stops early and leaves the group (training and validation) while others go on
    assert len({i["epochs_run"] for i in infos}) > 1
    test = data.frames.subset(np.arange(200, 240))
    a = data.frames.atom_index(np.arange(200, 240))
    # small graphs: one vmapped group, however few the models; large batches on a CPU: one
    # after another (on a GPU always a group); one model: alone
    assert vmap_pays(3, data, s, "cpu") and vmap_pays(3, data, s, "cuda")
    large = replace(s, batch_size=10**4)
    assert not vmap_pays(3, data, large, "cpu") and vmap_pays(3, data, large, "cuda")
    assert not vmap_pays(1, data, s, "cpu")
    # the one-after-another path, forced at these settings, trains the same models
    monkeypatch.setattr(group, "VMAP_MAX_BATCH_EDGES", 0)
    assert not vmap_pays(3, data, s, "cpu")
    one_by_one = models()
    alone_infos = fit_direct_models(one_by_one, subsets, data, fit_idx, val_idx, s, log=quiet)
    for c, model, info, alone in zip(subsets, one_by_one, infos, alone_infos, strict=True):
        assert alone["epochs_run"] == info["epochs_run"] and alone["trained_with"] == 1
        assert alone["best_val_force_rmse"] == pytest.approx(info["best_val_force_rmse"], rel=1e-4)
        m = data.model_index(c)
        got = [
            DirectEnsemble(x, []).forces_from(
                test, data.base_energy[m][:, 200:240], data.base_forces[m][:, a]
            )
            for x in (model, together[subsets.index(c)])
        ]
        np.testing.assert_allclose(got[0], got[1], atol=1e-4)
    # the models differ from each other (each learnt its own subset)
    assert len({round(i["best_val_force_rmse"], 6) for i in infos}) == 3


def test_subset_choice_counts_and_groups_by_size():
    from elmlff.subsets import choose, resolve

    ens = [f"b{i}" for i in range(8)]
    groups = choose("all", ens)
    assert sum(len(v) for v in groups.values()) == 255
    assert {k: len(v) for k, v in groups.items()} == {
        1: 8,
        2: 28,
        3: 56,
        4: 70,
        5: 56,
        6: 28,
        7: 8,
        8: 1,
    }
    assert groups[8] == ["all"]
    names = [n for v in groups.values() for n in v]
    assert len(set(names)) == 255
    assert all(len(resolve(n, ens)) == k for k, v in groups.items() for n in v)
    assert choose([2, 7], ens).keys() == {2, 7}
    assert choose([["b3", "b1"], ["b1", "b3"], ["b5"]], ens) == {1: ["b5"], 2: ["b1+b3"]}
    with pytest.raises(ElmlffError, match=r"outside 1\.\.8"):
        choose([0, 9], ens)
    with pytest.raises(ElmlffError, match="not understood"):
        choose("some", ens)


def test_gaussian_rbf_is_the_closed_form_with_its_far_tail_exactly_zero():
    """Gaussians exp(-((d - mu) n / cutoff)^2) on [0, cutoff]; values below 1e-30 are exact
    zeros (float32 denormals would slow every product with them), the others unchanged."""
    d = torch.linspace(0.3, 5.0, 200, dtype=torch.float32)
    got = gaussian_rbf(d, 5.0, 16)
    mu = torch.linspace(0.0, 5.0, 16, dtype=torch.float64)
    ref = torch.exp(-(((d.double()[:, None] - mu) * 16 / 5.0) ** 2))
    big = ref >= 1e-29
    assert got.shape == (200, 16) and got.dtype == torch.float32
    np.testing.assert_allclose(got[big].double(), ref[big], rtol=1e-4)  # float32 arguments
    assert bool((got[ref < 1e-31] == 0).all()) and int((ref < 1e-31).sum()) > 100
    tiny = got[got != 0]
    assert float(tiny.min()) >= 1e-30  # no denormal (nor any value below the floor) is left


def test_direct_is_stock_gatconv_with_folded_edge_attention_and_self_loops_added_once(
    mixed, monkeypatch
):
    """Ensemble-direct's layers are torch-geometric ``GATConv`` computed in a cheaper order
    (edge logits from the folded edge weights; self-loops built once for every layer; the
    fused CSR path with its own softmax): loading the same weights into stock ``GATConv``
    layers that add their own self-loops gives the same forces, and training through the
    fused path (its own sparse backward) the same gradients as torch-geometric's message
    passing. Attention logits spread hundreds apart still agree (the softmax subtracts each
    atom's own largest logit), and a graph's cached edge logits follow the weights. The
    frames: molecules, a slab whose atom pairs recur through several images, and a small bulk
    cell where atoms see their own images."""
    from torch_geometric.nn import GATConv

    from elmlff.meta import direct

    fr, e, f = mixed
    fr = Frames.concatenate([fr, _copper_bulk(seed=2)], name="mixed+bulk")
    rng = np.random.default_rng(3)
    e = np.concatenate([e, rng.normal(size=(3, 1)) - 40], axis=1)
    f = np.concatenate([f, rng.normal(size=(3, 4, 3))], axis=1)
    b = batch_from_frames(fr, e, f, 4.0).to("cpu", torch.float64)
    assert bool((b.src == b.dst).any())  # self-images: stock GATConv drops them, so must we
    model = _direct(fr.species).double()
    for conv in model.convs:
        with torch.no_grad():
            conv.att_edge.normal_(0, 1.0)  # edge attention that matters
    vec = b.positions[b.src] - b.positions[b.dst] + b.shift
    d = vec.norm(dim=1)
    raw = torch.cat(
        [gaussian_rbf(d, model.params["cutoff"], model.params["n_rbf"]), vec / d[:, None]], 1
    )

    def stock_forces() -> np.ndarray:
        stock = copy.deepcopy(model)
        stock.convs = torch.nn.ModuleList()
        for conv in model.convs:
            s = GATConv(16, 4, heads=4, edge_dim=model.params["n_rbf"] + 3).double()
            s.load_state_dict(conv.state_dict())
            stock.convs.append(s)
        # no self-loops here: stock GATConv adds them, and aggregates by gather and scatter
        stock.edges = lambda _b, sparse=False: (torch.stack([b.src, b.dst]), raw)
        plain = copy.copy(b)
        plain.extra = {}
        with torch.no_grad():
            return stock(plain).numpy()

    calls = []
    weighted_sums = direct._weighted_sums
    monkeypatch.setattr(direct, "_weighted_sums", lambda *a: calls.append(1) or weighted_sums(*a))
    graph = model.edges(b, sparse=True)
    ref = stock_forces()
    with torch.no_grad():
        inference = model(b)  # the fused CSR path
    assert len(calls) == len(model.convs)  # one aggregation per layer
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(inference.numpy(), ref, rtol=1e-10, atol=1e-12)

    # training: the fused path's gradients (its own sparse backward) against torch-geometric's
    # edge-list message passing, as a vmapped group trains, for every parameter
    weights = torch.randn(ref.shape, dtype=torch.float64)
    grads = {}
    for path in ("fused", "edge list"):
        plain = copy.copy(b)
        plain.extra = {} if path == "fused" else {"edges": model.edges(b)}
        model.zero_grad()
        forces = model(plain)
        np.testing.assert_allclose(forces.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
        (forces * weights).sum().backward()
        grads[path] = {k: p.grad.clone() for k, p in model.named_parameters()}
    for k, g in grads["edge list"].items():
        assert g.abs().max() > 0, k  # every parameter matters
        np.testing.assert_allclose(grads["fused"][k], g, rtol=1e-9, atol=1e-12, err_msg=k)
    model.zero_grad()
    edge_index, _ = model.edges(b)
    # own images dropped, one self-loop per atom
    assert edge_index.shape[1] == int((b.src != b.dst).sum()) + len(b.numbers)

    b.extra["edges"] = graph  # built before, its edge logits cached by the first call
    with torch.no_grad():
        model(b)
        model.convs[0].att_src.mul_(400.0)  # sender logits hundreds apart
        model.convs[1].att_edge.mul_(3.0)  # the cached edge logits must follow
        calls.clear()
        spread = model(b)
    assert len(calls) == len(model.convs)  # still one aggregation per layer
    np.testing.assert_allclose(spread.numpy(), stock_forces(), rtol=1e-9, atol=1e-11)


def test_fused_gat_gradients_stay_finite_when_an_atom_never_hears_the_loudest_sender():
    """An atom that never hears the batch's loudest sender: shifted by a bound shared over the
    batch (as the fused layer once did), its softmax weights are ~e^-100, zero in float32, and
    its output 0/0 (a smaller gap underflows the denominator's square in the backward pass:
    Ensemble-direct's training on the methanol/Cu slab diverged so at its fourth epoch). The
    layer shifts each atom by its own largest logit: forward and gradients equal stock
    GATConv's."""
    from torch_geometric.utils import add_self_loops

    torch.manual_seed(0)
    conv = folded_gat_conv(4, 4, heads=1, edge_dim=2, add_self_loops=False)
    src, dst = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2])  # atom 2 sends to no one
    attr = torch.rand(3, 2) * 0.1
    w_src = (conv.lin.weight.view(1, 4, 4) * conv.att_src.view(1, 4, 1)).sum(1)[0].detach()
    x = torch.randn(3, 4) * 0.1
    x[2] = 100.0 * w_src / w_src.dot(w_src)  # atom 2's sender logit term: 100
    x.requires_grad_(True)
    crow = torch.tensor([0, 1, 2, 3])
    fused = conv.fused(x, CSRGraph(crow, src, dst, attr, 3))
    (g_fused,) = torch.autograd.grad(fused[0].sum(), x)
    edges, loops = add_self_loops(torch.stack([src, dst]), attr, fill_value="mean", num_nodes=3)
    stock = conv(x, edges, loops)
    (g_stock,) = torch.autograd.grad(stock[0].sum(), x)
    assert torch.isfinite(g_fused).all()
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fused, g_stock, rtol=1e-4, atol=1e-6)


def test_direct_fused_training_on_a_cell_with_more_edges_than_atom_pairs():
    """A tiny periodic cell at a long cutoff has more edges (periodic images) than atom pairs,
    where torch's sampled dense-dense product fails: the fused path's backward falls back to
    gathers and still gives torch-geometric's edge-list gradients."""
    fr = _copper_bulk(seed=4)
    rng = np.random.default_rng(5)
    e, f = rng.normal(size=(3, 1)) - 15, rng.normal(size=(3, 4, 3))
    b = batch_from_frames(fr, e, f, 6.0).to("cpu", torch.float64)
    model = _direct(fr.species).double().train()
    heads = model.convs[0].heads
    g = model.edges(b, sparse=True)
    assert len(g.col) * heads > (heads * g.n) ** 2  # the case torch's SDDMM cannot take
    weights = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for edges in (g, model.edges(b)):
        c = copy.copy(b)
        c.extra = {"edges": edges}
        model.zero_grad()
        (model(c) * weights).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k, ref in grads[1].items():
        np.testing.assert_allclose(grads[0][k], ref, rtol=1e-9, atol=1e-12, err_msg=k)
