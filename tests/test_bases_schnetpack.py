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
        from elmlff.bases.schnetpack import SchNetPackPotential, build_model

        torch.manual_seed(0)
        params = {
            "architecture": "painn",
            "n_rbf": 6,
            "n_atom_basis": 8,
            "n_interactions": 2,
            "cutoff": 4.0,
        }
        model = build_model(params, "float64")
        return SchNetPackPotential(
            "painn", model, {"species": [1, 6], "params": params, "training": {"dtype": "float64"}}
        )


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
