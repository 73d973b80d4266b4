"""deepmd-kit (se_e2_a, se_e2_r, se_e3) and nequip bases: physics mixin, Protocol, errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from elmlff import bases as B
from elmlff.errors import ElmlffError

from physics import PotentialPhysicsTests

pytestmark = pytest.mark.slow


def _train(family, name, params, training, methane, tmp_path_factory):
    out = tmp_path_factory.mktemp(name)
    spec = B.BaseSpec(name, family, params, training)
    info = B.get_family(family).train(
        spec, methane.subset(range(48)), methane.subset(range(48, 64)), out
    )
    B.write_info(out, {"name": name, "family": family, "fit": "full", **info})
    return out


@pytest.fixture(scope="module", params=["se_e2_a", "se_e2_r", "se_e3"])
def deepmd_dir(request, methane, tmp_path_factory):
    params = {
        "descriptor": request.param,
        "rcut": 4.0,
        "rcut_smth": 0.5,
        "neuron": [4, 8],
        "axis_neuron": 2,
        "fitting_neuron": [8, 8],
    }
    return _train(
        "deepmd",
        f"dp_{request.param}",
        params,
        {"max_epochs": 2, "batch_size": 16, "checkpoints": 2},
        methane,
        tmp_path_factory,
    )


@pytest.fixture(scope="module")
def nequip_dir(methane, tmp_path_factory):
    params = {"cutoff": 4.0, "num_layers": 2, "num_features": 8, "radial_mlp_width": 8}
    return _train(
        "nequip",
        "nequip_tiny",
        params,
        {"max_epochs": 2, "batch_size": 16},
        methane,
        tmp_path_factory,
    )


@pytest.fixture(scope="module")
def frames(methane):
    return methane.subset([100, 101, 102])


class TestDeePMDPhysics(PotentialPhysicsTests):
    @pytest.fixture(scope="class")
    def potential(self, deepmd_dir):
        return B.load(deepmd_dir)


class TestNequIPPhysics(PotentialPhysicsTests):
    @pytest.fixture(scope="class")
    def potential(self, nequip_dir):
        return B.load(nequip_dir)


def test_deepmd_checkpoint_is_chosen_on_validation(deepmd_dir):
    info = B.read_info(deepmd_dir)
    scores = info["val_force_rmse_per_checkpoint"]
    assert len(scores) == 2 and info["best_checkpoint"] == min(scores, key=scores.get)
    assert info["type_map"] == ["H", "C"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to differ")
def test_deepmd_model_does_not_depend_on_the_cpus_it_may_use(
    deepmd_dir, methane, frames, tmp_path_factory
):
    """The same seed and data give the same DeePMD model on one CPU as on all of them (its
    data loader once took a worker process per CPU, up to four, which changed the batches)."""
    info = B.read_info(deepmd_dir)
    if info["params"]["descriptor"] != "se_e2_a":
        pytest.skip("one descriptor shows it")
    every = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every)})  # the training's subprocess inherits it
    try:
        one = _train(
            "deepmd", "dp_one_cpu", info["params"], info["training"], methane, tmp_path_factory
        )
    finally:
        os.sched_setaffinity(0, every)
    assert (
        B.read_info(one)["val_force_rmse_per_checkpoint"] == info["val_force_rmse_per_checkpoint"]
    )
    e1, f1 = B.load(deepmd_dir).predict(frames)
    e2, f2 = B.load(one).predict(frames)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize("which", ["deepmd", "nequip"])
def test_protocol_and_errors(which, deepmd_dir, nequip_dir, frames, tmp_path):
    d = deepmd_dir if which == "deepmd" else nequip_dir
    pot = B.load(d)
    assert isinstance(pot, B.Potential) and sorted(pot.species) == [1, 6]
    e, f = pot.predict(frames)
    assert e.shape == (3,) and f.shape == (15, 3) and np.isfinite(f).all()
    other = frames.subset([0])
    other.numbers = other.numbers.copy()
    other.numbers[1] = 8
    with pytest.raises(ElmlffError, match=r"Z=\[8\]"):
        pot.predict(other)
    broken = tmp_path / "base"
    shutil.copytree(d, broken)
    for p in broken.iterdir():
        if p.suffix in (".pt", ".ckpt"):
            p.unlink()
    with pytest.raises(ElmlffError, match=r"checkpoint .* missing"):
        B.load(broken)


def test_unknown_deepmd_descriptor():
    from elmlff.bases.deepmd import input_json

    with pytest.raises(ElmlffError, match="unknown DeePMD descriptor 'se_atten'"):
        input_json({"descriptor": "se_atten"}, {}, ["H"], [], [], 10)


def test_loading_every_family_leaves_torch_defaults_alone(deepmd_dir, nequip_dir, frames):
    """Families share one process in meta-models: loading one must not change global torch
    state that another relies on (nequip's global state sets float64 by default)."""
    import torch

    before = torch.get_default_dtype()
    B.load(deepmd_dir)
    pot = B.load(nequip_dir)
    assert torch.get_default_dtype() == before
    assert np.isfinite(pot.predict(frames)[1]).all()


@pytest.mark.parametrize("which", ["deepmd", "nequip"])
def test_epochs_run_and_best_epoch_are_recorded(which, deepmd_dir, nequip_dir):
    """Every family reports the same two numbers: epochs run (2 here) and the epoch of the
    checkpoint kept (chosen on val); NequIP also its per-epoch val force MAE."""
    info = B.read_info(deepmd_dir if which == "deepmd" else nequip_dir)
    assert info["epochs_run"] == 2 and 1 <= info["best_epoch"] <= 2
    if which == "deepmd":  # checkpoint model.ckpt-<step>.pt of the best val force RMSE
        step = int(info["best_checkpoint"].split("-")[1].split(".")[0])
        assert info["best_epoch"] == -(-step // (info["steps"] // 2))
        # the learning curve from deepmd's lcurve.out: one row per epoch, forces in eV/Å
        assert [h["epoch"] for h in info["history"]] == [1, 2]
        assert all(0 < h["val_force_rmse"] < 10 for h in info["history"])
    else:
        assert [h["epoch"] for h in info["history"]] == [1, 2]
        assert all(h["val_force_mae"] > 0 for h in info["history"])
