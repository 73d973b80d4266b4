"""Pretrained universal potentials (CHGNet, SevenNet, DIEP; weights from their wheels, no
download): each agrees with its own package's ASE calculator, and the shared physics (forces
and stress by finite differences, rotation, translation, periodic images, Hessian-vector
products) holds at float32 tolerances. The "train" step records provenance and trains
nothing. A few silicon cells of 2 and 8 atoms: seconds per model on one core."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elmlff import bases as B
from elmlff.bases import pretrained as P
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

from physics import PotentialPhysicsTests, StressPhysicsTests

pytest.importorskip("pymatgen")


def silicon(n: int = 3) -> Frames:
    """Silicon cells, labels zero (the models predict them): first a strained, rattled
    2-atom primitive cell (the finite-difference checks run on frame 0: 12 energy calls for
    the forces, 12 for the stress), then rattled 8-atom cubic cells."""
    from ase.build import bulk

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        if i == 0:
            at = bulk("Si", "diamond", a=5.43)
            at.set_cell(at.cell @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))), True)
        else:
            at = bulk("Si", "diamond", a=5.43, cubic=True)
        at.rattle(0.08, seed=i)
        images.append(at)
    return Frames(
        numbers=np.concatenate([a.numbers for a in images]),
        positions=np.concatenate([a.positions for a in images]),
        n_atoms=[len(a) for a in images],
        cell=np.stack([a.cell[:] for a in images]),
        pbc=np.ones((n, 3), bool),
        energy=np.zeros(n),
        forces=np.zeros((sum(len(a) for a in images), 3)),
        name="si",
    )


def adapter(family: str) -> type[P.PretrainedPotential]:
    """The family's potential class (its module imports the package)."""
    return B.get_family(family).potential


def own_calculator(pot: P.PretrainedPotential):
    """The package's own ASE calculator for the same weights."""
    if pot.family == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=pot.model, use_device="cpu")
    if pot.family == "sevenn":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(str(pot.weights), device="cpu")
    from diep.pretrained import make_calculator

    return make_calculator(pot.weights.parent)


class _Pretrained(PotentialPhysicsTests, StressPhysicsTests):
    """Float32 models: tolerances from measured float32 noise, far below what a wrong sign,
    factor or missing image would give (forces ~1 eV/Å, stress ~0.01 eV/Å³ here)."""

    family = ""
    alien_z = 118  # oganesson: none of the three knows it
    atol = autograd_atol = batch_atol = 2e-4
    fd_step, fd_atol = 2e-3, 5e-3
    # silicon is stiff: with a random unit-normal direction per component, central
    # differences of the forces converge to the autograd product only below ~3e-4 Å (CHGNet:
    # error 0.71 / 0.21 / 0.05 eV/Å² at 1e-3 / 5e-4 / 2.5e-4 Å, then float32 noise; products
    # ~20 eV/Å²)
    hvp_step, hvp_atol = 2.5e-4, 0.15
    stress_step, stress_atol = 2e-3, 1e-4

    @pytest.fixture(scope="class")
    def potential(self):
        pytest.importorskip(self.family)
        return adapter(self.family)("pretrained", {})

    @pytest.fixture(scope="class")
    def frames(self):
        return silicon()

    def test_agrees_with_its_own_ase_calculator(self, potential, frames):
        e, f, s = potential.predict_stress(frames)
        calc = own_calculator(potential)
        for k, atoms in enumerate(frames.to_atoms()):
            atoms.calc = calc
            a = slice(frames.offsets[k], frames.offsets[k] + frames.n_atoms[k])
            assert abs(e[k] - atoms.get_potential_energy()) < 1e-4 * len(atoms)
            np.testing.assert_allclose(f[a], atoms.get_forces(), atol=1e-4)
            np.testing.assert_allclose(s[k], atoms.get_stress(voigt=False), atol=1e-6)
        assert np.abs(f).max() > 0.1 and np.abs(s).max() > 1e-3

    def test_train_records_provenance_and_trains_nothing(self, potential, frames, tmp_path):
        fam = B.get_family(self.family)
        info = fam.train(B.BaseSpec("u", self.family), frames, frames, tmp_path)
        B.write_info(tmp_path, {**info, "name": "u", "family": self.family})
        assert info["trained"] is False and info["package_version"]
        assert len(info["weights_sha256"]) == 64
        marker = json.loads((tmp_path / P.MARKER).read_text())
        assert marker["weights"] == info["weights"]
        again = B.load(tmp_path)
        np.testing.assert_allclose(again.predict(frames)[0], potential.predict(frames)[0])

    def test_a_changed_weight_file_is_refused(self, frames, tmp_path):
        fam = B.get_family(self.family)
        info = fam.train(B.BaseSpec("u", self.family), frames, frames, tmp_path)
        B.write_info(tmp_path, {**info, "name": "u", "family": self.family})
        marker = json.loads((tmp_path / P.MARKER).read_text())
        (tmp_path / P.MARKER).write_text(json.dumps({**marker, "weights_sha256": "0" * 64}))
        with pytest.raises(ElmlffError, match="weights differ"):
            B.load(tmp_path)


class TestCHGNet(_Pretrained):
    family = "chgnet"


class TestSevenNet(_Pretrained):
    family = "sevenn"


class TestDIEP(_Pretrained):
    family = "diep"


def test_unknown_or_downloading_model_names_are_refused():
    pytest.importorskip("sevenn")
    with pytest.raises(ElmlffError, match=r"not shipped.*7net-0"):
        adapter("sevenn")("x", {"model": "7net-omat"})  # sevenn would download it
    with pytest.raises(ElmlffError, match="not shipped"):
        adapter("chgnet")("x", {"model": "0.1.0"})


def test_multi_fidelity_sevennet_needs_its_fidelity():
    pytest.importorskip("sevenn")
    with pytest.raises(ElmlffError, match=r"needs params\.modal"):
        adapter("sevenn")("x", {"model": "7net-mf-0"})
    with pytest.raises(ElmlffError, match="one fidelity"):
        adapter("sevenn")("x", {"model": "7net-0", "modal": "PBE"})


def test_molecules_are_refused_with_a_fix():
    pytest.importorskip("chgnet")
    f = silicon(1)
    f.pbc[:] = False
    with pytest.raises(ElmlffError, match="not periodic along all three axes"):
        adapter("chgnet")("x", {}).predict(f)


def test_a_missing_package_leaves_the_family_unavailable(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "diep" else real(n, *a)
    )
    ok, why = B.family_available("diep")
    assert not ok and "pip install diep==2.0.0" in why
