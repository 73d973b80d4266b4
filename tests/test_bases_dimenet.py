"""dimenet bases (torch-geometric's DimeNet / DimeNet++ on the project's own graph and triplets):
physics (shared mixin) of a trained DimeNet++, of untrained DimeNet++ on periodic frames and of
an untrained original DimeNet; the triplets against brute force; the blocks against the stock
``forward``; training, checkpoint and errors. Tiny models, a few frames: seconds on one core."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from elmlff import bases as B
from elmlff.bases import dimenet as D
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

from physics import PotentialPhysicsTests, energy_np

RMD17 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rmd17"
ETHANOL = RMD17 / "rmd17_ethanol_train_01.npz"

TINY_PP = {
    "architecture": "dimenet++",
    "hidden_channels": 16,
    "int_emb_size": 8,
    "basis_emb_size": 4,
    "out_emb_channels": 16,
    "num_blocks": 1,
    "num_spherical": 3,
    "num_radial": 4,
    "cutoff": 4.0,
}
TINY_DIMENET = {
    "architecture": "dimenet",
    "hidden_channels": 16,
    "num_bilinear": 4,
    "num_blocks": 1,
    "num_spherical": 3,
    "num_radial": 4,
    "cutoff": 4.0,
}
TINY_TRAINING = {"max_epochs": 5, "batch_size": 4, "lr": 3e-3, "dtype": "float64", "seed": 0}
TRAIN, VAL, HELD_OUT = range(32), range(32, 44), range(200, 240)


def untrained(
    params: dict, species=(1, 6), ref=None, init: str = "glorot_orthogonal", scale: float = 1.0
):
    """A float64 potential with random weights (the stock zero output init would give E = 0);
    the physics must hold for any weights. ``scale`` shrinks the output layers so that forces
    stay near those of real molecules (eV/Å), where the mixin's finite-difference tolerances
    are set. Unscaled, the original DimeNet at random gives forces of ~60 eV/Å, and the
    mixin's finite differences of its Hessian-vector product (step 1e-4 Å) err by 4e-5 eV/Å,
    over the tolerance; that error shrinks as step² (4e-7 at 1e-5 Å): truncation, not autograd."""
    torch.manual_seed(0)
    model = D.build_model(params, "float64", output_initializer=init)
    with torch.no_grad():
        for block in model.output_blocks:
            block.lin.weight.mul_(scale)
    return D.DimeNetPotential("untrained", model, list(species), ref or {}, "cpu")


@pytest.fixture(scope="module")
def trained(methane, tmp_path_factory):
    """(folder, train() info) of a tiny DimeNet++ trained for a few epochs in float64."""
    out = tmp_path_factory.mktemp("tiny_dimenet") / "base"
    spec = B.BaseSpec("tiny_dimenet", "dimenet", dict(TINY_PP), dict(TINY_TRAINING))
    info = B.get_family("dimenet").train(spec, methane.subset(TRAIN), methane.subset(VAL), out)
    B.write_info(out, {"name": spec.name, "family": spec.family, **info})
    return out, info


@pytest.fixture(scope="module")
def potential(trained):
    return B.load(trained[0])


@pytest.fixture(scope="module")
def frames(methane):
    return methane.subset([100, 101, 102])


class TestDimeNetPPPhysics(PotentialPhysicsTests):
    """The trained DimeNet++ on methane (a 15 Å periodic box: minimum-image edges, so the
    periodic image shift test runs too)."""


def periodic_methane(methane, which=(100, 101, 102)) -> Frames:
    """Methane frames in a small triclinic cell: with a 3 Å cutoff, atoms meet their own
    periodic images and the graph goes through vesin (not the minimum-image path)."""
    f = methane.subset(list(which))
    cell = np.array([[4.2, 0.0, 0.0], [0.9, 4.0, 0.0], [0.4, -0.7, 4.4]])
    f.cell = np.tile(cell, (len(f), 1, 1))
    f.pbc = np.ones((len(f), 3), dtype=bool)
    return f


class TestDimeNetPPPeriodicPhysics(PotentialPhysicsTests):
    """Untrained DimeNet++ on frames whose atoms see their own periodic images (a triclinic
    cell smaller than twice the cutoff): FD forces, rotations of atoms and cell, image shift."""

    @pytest.fixture(scope="class")
    def potential(self):
        return untrained({**TINY_PP, "cutoff": 3.0})

    @pytest.fixture(scope="class")
    def frames(self, methane):
        return periodic_methane(methane)


class TestOriginalDimeNetPhysics(PotentialPhysicsTests):
    """The original DimeNet (bilinear interaction blocks, other angle convention), untrained:
    builds, forces = −dE/dx (finite differences), invariances, Hessian-vector products."""

    @pytest.fixture(scope="class")
    def potential(self):
        pot = untrained(TINY_DIMENET, ref={1: -0.5, 6: -10.0}, scale=0.002)
        assert type(pot.model).__name__ == "DimeNet"
        return pot


# -- graph and triplets ----------------------------------------------------------------------
def brute_force_triplets(frames: Frames, cutoff: float, images: int = 0) -> list[tuple]:
    """Every (i, j, k, image of j seen from i, image of k seen from j) with j -> i and k -> j
    edges within ``cutoff`` and k != i in the same image, by looping over atoms and images."""
    out = []
    shifts = list(itertools.product(range(-images, images + 1), repeat=3))
    for f in range(len(frames)):
        o, n = frames.offsets[f], frames.n_atoms[f]
        x, cell = frames.positions[o : o + n], frames.cell[f]

        into = {  # every edge j -> i (with the image of j) into each atom i
            i: [
                (j, s)
                for j in range(n)
                for s in shifts
                if (j, s) != (i, (0, 0, 0))
                and np.linalg.norm(x[j] + np.array(s) @ cell - x[i]) < cutoff
            ]
            for i in range(n)
        }
        for i in range(n):
            for j, s_ji in into[i]:
                for k, s_kj in into[j]:
                    total = tuple(a + b for a, b in zip(s_ji, s_kj, strict=True))
                    if k == i and total == (0, 0, 0):
                        continue
                    out.append((o + i, o + j, o + k, s_ji, s_kj))
    return sorted(out)


def project_triplets(frames: Frames, cutoff: float) -> list[tuple]:
    g = D.edge_graph(frames, cutoff)
    # each triplet's edges must be the triplet's atoms
    assert torch.equal(g.j[g.idx_ji], g.idx_j) and torch.equal(g.i[g.idx_ji], g.idx_i)
    assert torch.equal(g.j[g.idx_kj], g.idx_k) and torch.equal(g.i[g.idx_kj], g.idx_j)
    cells = frames.cell[frames.frame_of_atom[g.i.numpy()]]
    periodic = np.abs(cells).sum(axis=(1, 2)) > 0
    # integer image of each edge: shift = S @ cell
    s = np.zeros((len(g.i), 3), dtype=int)
    if periodic.any():
        sol = np.linalg.solve(
            cells[periodic].transpose(0, 2, 1), g.shift.numpy()[periodic][..., None]
        )[..., 0]
        s[periodic] = np.rint(sol).astype(int)
    return sorted(
        (int(a), int(b), int(c), tuple(s[ji]), tuple(s[kj]))
        for a, b, c, ji, kj in zip(
            g.idx_i, g.idx_j, g.idx_k, g.idx_ji.numpy(), g.idx_kj.numpy(), strict=True
        )
    )


def molecule(positions, numbers) -> Frames:
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    return Frames(
        numbers=numbers,
        positions=positions,
        n_atoms=[n],
        cell=np.zeros((1, 3, 3)),
        pbc=np.zeros((1, 3), dtype=bool),
        energy=[0.0],
        forces=np.zeros((n, 3)),
    )


def test_triplets_equal_brute_force_on_a_five_atom_molecule():
    """A partly connected graph (some pairs beyond the cutoff): every triplet k -> j -> i,
    k != i, exactly once, and no other."""
    x = [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [1.6, 1.0, 0.0], [2.9, 1.2, 0.3], [-0.4, -1.0, 0.2]]
    f = molecule(x, [6, 1, 8, 1, 1])
    cutoff = 1.6
    g = D.edge_graph(f, cutoff)
    assert 0 < len(g.i) < 5 * 4, "the graph should be neither empty nor complete"
    want = brute_force_triplets(f, cutoff)
    have = project_triplets(f, cutoff)
    assert len(want) > 0 and len(set(have)) == len(have)
    assert have == want


def test_triplets_equal_brute_force_with_periodic_images(methane):
    """Atoms that meet their own images: a triplet k -> j -> i with k = i in another image is
    kept, the back edge (same image) dropped, as torch-geometric drops k = i for molecules."""
    f = periodic_methane(methane, [100])
    want = brute_force_triplets(f, 3.0, images=2)
    have = project_triplets(f, 3.0)
    assert any(t[0] == t[2] for t in have), "no k = i triplet across images: the check is empty"
    assert have == want


@pytest.mark.skipif(not ETHANOL.exists(), reason="../shared/data/rmd17 not present")
def test_triplets_equal_brute_force_on_ethanol():
    """rMD17 ethanol (9 atoms, all within 5 Å): 72 edges and 72 x 7 = 504 triplets per frame;
    two frames in one batch keep their atoms apart."""
    d = np.load(ETHANOL)
    z = d["nuclear_charges"]
    assert z.dtype == np.uint8
    n = len(z)
    f = Frames(
        numbers=np.tile(z, 2),
        positions=d["coords"][:2].reshape(-1, 3),
        n_atoms=[n, n],
        cell=np.zeros((2, 3, 3)),
        pbc=np.zeros((2, 3), dtype=bool),
        energy=np.zeros(2),
        forces=np.zeros((2 * n, 3)),
    )
    g = D.edge_graph(f, 5.0)
    assert len(g.i) == 2 * 72 and len(g.idx_kj) == 2 * 504
    assert project_triplets(f, 5.0) == brute_force_triplets(f, 5.0)


def test_a_uint8_numbers_array_works(potential, frames):
    """rMD17 stores nuclear charges as uint8: a uint8 tensor must index the embedding and the
    reference energies as atomic numbers (a uint8 index would be read as a boolean mask)."""
    pos = torch.as_tensor(frames.positions)
    want = potential.energy(pos, *B.frame_tensors(frames)).detach()
    _, n_atoms, cell, pbc = B.frame_tensors(frames)
    numbers = torch.as_tensor(frames.numbers.astype(np.uint8))
    assert numbers.dtype == torch.uint8
    have = potential.energy(pos, numbers, n_atoms, cell, pbc).detach()
    torch.testing.assert_close(have, want, rtol=0, atol=1e-12)
    u8 = frames.subset([0, 1, 2])
    u8.numbers = frames.numbers.astype(np.uint8)
    np.testing.assert_allclose(potential.predict(u8)[0], want.numpy(), atol=1e-12)


@pytest.mark.parametrize("params", [TINY_PP, TINY_DIMENET], ids=["dimenet++", "dimenet"])
def test_blocks_are_called_as_the_stock_forward_calls_them(params, frames, monkeypatch):
    """torch-geometric's own ``forward``, with its ``radius_graph`` and ``triplets`` (pyg-lib,
    torch-sparse: not installable) replaced by the project's graph, gives the same energies
    as :func:`atom_energies`: the blocks, the angles and the sums are the stock ones."""
    import torch_geometric.nn.models.dimenet as stock

    mol = frames.subset([0, 1])
    mol.pbc = np.zeros_like(mol.pbc)  # the stock forward knows no periodic shifts
    g = D.edge_graph(mol, params["cutoff"])
    monkeypatch.setattr(stock, "radius_graph", lambda *a, **k: torch.stack([g.j, g.i]))
    monkeypatch.setattr(
        stock,
        "triplets",
        lambda edge_index, num_nodes: (g.i, g.j, g.idx_i, g.idx_j, g.idx_k, g.idx_kj, g.idx_ji),
    )
    pot = untrained(params)
    z, pos = torch.as_tensor(mol.numbers), torch.as_tensor(mol.positions)
    batch = torch.as_tensor(mol.frame_of_atom)
    want = pot.model(z, pos, batch)[:, 0]
    have = pot.energy(pos, *B.frame_tensors(mol))
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


def test_a_molecule_in_a_wide_box_is_the_molecule_in_vacuum(frames):
    pot = untrained(TINY_PP)
    vacuum = frames.subset([0, 1, 2])
    vacuum.pbc = np.zeros_like(vacuum.pbc)
    vacuum.cell = np.zeros_like(vacuum.cell)
    e0, f0 = pot.predict(frames)
    e1, f1 = pot.predict(vacuum)
    np.testing.assert_allclose(e1, e0, atol=1e-10)
    np.testing.assert_allclose(f1, f0, atol=1e-10)


# -- training -----------------------------------------------------------------------------------
def force_mae(pot, frames: Frames) -> float:
    return float(np.abs(pot.predict(frames)[1] - frames.forces).mean())


def test_training_lowers_the_force_error_and_keeps_the_best_epoch(trained, potential, methane):
    """Against the same network untrained (the stock zero output init: zero forces), on
    frames it never saw; the loaded model is the epoch of lowest val loss."""
    out, info = trained
    held_out = methane.subset(HELD_OUT)
    before = untrained(TINY_PP, ref=potential.reference_energy, init="zeros")
    mae0, mae1 = force_mae(before, held_out), force_mae(potential, held_out)
    assert mae0 > 0.1  # eV/Å: methane's forces, not a trivial set
    print(f"held-out force MAE untrained {mae0:.4f}, trained {mae1:.4f} eV/Å")
    assert mae1 < 0.6 * mae0, (mae0, mae1)
    h = info["history"]
    assert [r["epoch"] for r in h] == list(range(1, info["epochs_run"] + 1))
    best = min(h, key=lambda r: r["val_loss"])
    assert (info["best_epoch"], info["best_val_loss"]) == (best["epoch"], best["val_loss"])
    np.testing.assert_allclose(force_mae(potential, methane.subset(VAL)), best["val_force_mae"])
    assert sorted(p.name for p in out.iterdir()) == sorted([D.MODEL_FILE, B.INFO_FILE])
    assert info["species"] == [1, 6] == potential.species
    assert info["n_parameters"] == D.n_parameters(potential.model)


def test_reference_energies_are_a_least_squares_fit(methane):
    ref = D.reference_energies(methane.subset(TRAIN))
    counts = np.array([4, 1])  # CH4
    pred = counts @ np.array([ref[1], ref[6]])
    np.testing.assert_allclose(pred, methane.subset(TRAIN).energy.mean(), atol=1e-9)


def test_training_is_seeded_logged_and_early_stopped(methane, tmp_path, capsys):
    """lr 0 leaves the val loss flat: with patience 1 training stops after epoch 2, keeps
    epoch 1, and a second run with the same seed gives the same numbers."""
    spec = B.BaseSpec(
        "flat",
        "dimenet",
        {**TINY_PP, "num_blocks": 1},
        {"max_epochs": 5, "patience": 1, "lr": 0.0, "batch_size": 4, "dtype": "float64"},
    )
    fam = B.get_family("dimenet")
    a = fam.train(spec, methane.subset(range(8)), methane.subset([8, 9]), tmp_path / "a")
    b = fam.train(spec, methane.subset(range(8)), methane.subset([8, 9]), tmp_path / "b")
    assert (a["epochs_run"], a["best_epoch"]) == (2, 1)
    assert a["history"] == b["history"]
    log = capsys.readouterr().out
    assert "[flat] epoch 1/5 " in log and "val_force_MAE=" in log and "early stop" in log
    assert "[flat] epoch 3/5" not in log


def test_errors_are_one_line(trained, tmp_path, methane):
    with pytest.raises(ElmlffError, match="unknown dimenet architecture 'schnet'"):
        D.build_model({"architecture": "schnet"})
    with pytest.raises(ElmlffError, match="out_channels: 3"):
        D.build_model({"out_channels": 3})
    with pytest.raises(ElmlffError, match="dtype: 'float16'"):
        B.get_family("dimenet").train(
            B.BaseSpec("x", "dimenet", TINY_PP, {"dtype": "float16"}),
            methane.subset([0]),
            methane.subset([1]),
            tmp_path / "x",
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / B.INFO_FILE).write_text((trained[0] / B.INFO_FILE).read_text())
    with pytest.raises(ElmlffError, match=r"checkpoint .* missing"):
        B.load(broken)


def test_energy_keeps_a_graph_through_a_function_of_the_positions(potential, frames):
    """energy() of positions that are themselves a function of a leaf (a meta-model's case):
    the derivative w.r.t. the leaf is the chain rule of the forces."""
    one = frames.subset([0])
    leaf = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    x0 = torch.as_tensor(one.positions)
    e = potential.energy(x0 * leaf, *B.frame_tensors(one))
    (de,) = torch.autograd.grad(e.sum(), leaf)
    f = potential.predict(one)[1]
    np.testing.assert_allclose(float(de), float(-(f * one.positions).sum()), rtol=1e-8)
    np.testing.assert_allclose(float(e[0].detach()), energy_np(potential, one)[0], atol=1e-12)


def test_the_basis_forms_come_from_a_disk_cache_in_a_new_process(frames, tmp_path, monkeypatch):
    """The sympy forms of the spherical basis are pickled once and a later process (here: an
    emptied in-process cache) builds the same model from the file without deriving them."""
    from torch_geometric.nn.models import dimenet_utils

    monkeypatch.setenv("ELMLFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "_FORMS", {})
    fresh = untrained(TINY_PP)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [f.split("-")[1] for f in files] == ["bessel_basis", "real_sph_harm"], files

    def bessel_basis(*args):
        raise AssertionError("derived again instead of read from the cache")

    def real_sph_harm(*args):
        raise AssertionError("derived again instead of read from the cache")

    monkeypatch.setattr(D, "_FORMS", {})
    monkeypatch.setattr(dimenet_utils, "bessel_basis", bessel_basis)
    monkeypatch.setattr(dimenet_utils, "real_sph_harm", real_sph_harm)
    cached = untrained(TINY_PP)
    np.testing.assert_allclose(energy_np(cached, frames), energy_np(fresh, frames), rtol=0, atol=0)
