"""schnetpack bases: physics (shared mixin), the Protocol, errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from elmlff import bases as B
from elmlff.errors import ElmlffError

from physics import PotentialPhysicsTests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def potential(tiny_schnet):
    return B.load(tiny_schnet)


@pytest.fixture(scope="module")
def frames(methane):
    return methane.subset([100, 101, 102])


def _random_potential(architecture: str, cutoff: float, seed: int, name: str | None = None):
    """A float64 schnetpack model of ``architecture`` with random weights (seeded)."""
    from elmlff.bases.schnetpack import SchNetPackPotential, build_model

    torch.manual_seed(seed)
    params = {
        "architecture": architecture,
        "n_rbf": 6,
        "n_atom_basis": 8,
        "n_interactions": 2,
        "cutoff": cutoff,
    }
    model = build_model(params, "float64")
    info = {"species": [1, 6], "params": params, "training": {"dtype": "float64"}}
    return SchNetPackPotential(name or f"{architecture}_{seed}", model, info)


class TestSchNetPhysics(PotentialPhysicsTests):
    pass


def test_training_leaves_no_file_in_the_working_directory(methane, tmp_path, monkeypatch):
    """schnetpack's data module writes `splitting.lock` into the working directory: training
    runs it in the base's scratch directory, so the base's folder is all that appears."""
    monkeypatch.chdir(tmp_path)
    spec = B.BaseSpec("one_epoch", "schnetpack", {"n_rbf": 4, "n_atom_basis": 4}, {"max_epochs": 1})
    info = B.get_family("schnetpack").train(
        spec, methane.subset(range(8)), methane.subset([8, 9]), "m"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert info["epochs_run"] == 1 and info["best_epoch"] == 1
    assert info["history"][0]["epoch"] == 1 and info["history"][0]["val_force_mae"] > 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["best_model"]


class TestPaiNNPhysics(PotentialPhysicsTests):
    """PaiNN with random weights: the physics must hold for any weights."""

    @pytest.fixture(scope="class")
    def potential(self):
        return _random_potential("painn", 4.0, seed=0, name="painn")


def test_unseen_element_is_a_clear_error(potential, frames):
    other = frames.subset([0])
    other.numbers = other.numbers.copy()
    other.numbers[0] = 8
    with pytest.raises(ElmlffError, match=r"trained on elements Z=\[1, 6\].*Z=\[8\]"):
        potential.predict(other)


def test_missing_checkpoint_is_a_clear_error(tiny_schnet, tmp_path):
    broken = tmp_path / "base"
    shutil.copytree(tiny_schnet, broken)
    (broken / "best_model").unlink()
    with pytest.raises(ElmlffError, match=r"checkpoint .* missing"):
        B.load(broken)
    with pytest.raises(ElmlffError, match="no trained base"):
        B.load(tmp_path / "nothing")


def test_unknown_architecture_and_family():
    from elmlff.bases.schnetpack import build_model

    with pytest.raises(ElmlffError, match="unknown schnetpack architecture 'dimenet'"):
        build_model({"architecture": "dimenet"})
    with pytest.raises(ElmlffError, match="unknown base family 'mace'"):
        B.get_family("mace")


class _CountingConverter:
    def __init__(self, converter) -> None:
        self.converter, self.calls = converter, 0

    def __call__(self, atoms):
        self.calls += 1
        return self.converter(atoms)


def test_bases_at_one_cutoff_convert_each_structure_once_and_keep_their_own_forces(
    frames, monkeypatch
):
    """An ensemble step runs every base on one structure: schnetpack's input conversion (the
    neighbour list) runs once per structure and cutoff, and each base's energy and forces
    through the shared inputs are those of its own ``predict``."""
    from elmlff.bases import schnetpack

    monkeypatch.setattr(schnetpack, "_SHARED_INPUTS", {})  # nothing left by other tests
    pots = [
        _random_potential("schnet", 4.0, 0),
        _random_potential("painn", 4.0, 1),
        _random_potential("schnet", 3.0, 2),
    ]
    for p in pots:
        p.converter = _CountingConverter(p.converter)
    total = lambda: sum(p.converter.calls for p in pots)  # noqa: E731
    for step, fr in enumerate([frames.subset([0]), frames.subset([1]), frames.subset([1, 2])]):
        before = total()
        rest = B.frame_tensors(fr)
        for p in pots:
            pos = torch.as_tensor(fr.positions).requires_grad_(True)
            e, f = B.energy_and_forces(p, pos, *rest)
            e_ref, f_ref = p.predict(fr)
            assert torch.allclose(e, torch.as_tensor(e_ref), rtol=0, atol=1e-10), (step, p.name)
            assert torch.allclose(f, torch.as_tensor(f_ref), rtol=0, atol=1e-10), (step, p.name)
        # predict() converts for itself (one call per base); energy() once per cutoff
        assert total() - before == len(pots) + 2, step
