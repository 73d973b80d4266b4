"""NEP adapter: GPUMD input writing and output parsing on files written here (no GPUMD)."""

from __future__ import annotations

import numpy as np
import pytest

from elmlff import bases as B
from elmlff.bases import nep
from elmlff.errors import ElmlffError

from conftest import random_frames


def test_train_xyz_is_gpumd_extended_xyz(tmp_path):
    f = random_frames(n_frames=3, sizes=(3, 2), pbc=False)
    f.pbc[1] = True
    f.cell[1] = np.diag([7.0, 8.0, 9.0])
    nep.write_structures(f, tmp_path / "train.xyz")
    lines = (tmp_path / "train.xyz").read_text().splitlines()
    assert lines[0] == "3" and lines[5] == "2"  # atom counts head each frame
    head = lines[1]
    assert f"energy={f.energy[0]:.10f}" in head and 'pbc="F F F"' in head
    assert "Properties=species:S:1:pos:R:3:forces:R:3" in head
    assert f'Lattice="{nep.VACUUM:.10f} 0.0000000000' in head  # vacuum box, no cell given
    assert 'Lattice="7.0000000000 0.0000000000 0.0000000000 0.0000000000 8.0' in lines[6]
    assert 'pbc="T T T"' in lines[6]
    # ASE reads it back with the same labels
    import ase.io

    back = ase.io.read(tmp_path / "train.xyz", index=":")
    np.testing.assert_allclose(back[0].get_forces(), f.forces[:3], atol=1e-9)
    np.testing.assert_allclose(back[2].positions, f.positions[5:8], atol=1e-9)
    assert back[1].get_potential_energy() == pytest.approx(f.energy[1])


def test_nep_in_lists_types_and_hyper_parameters():
    text = nep.nep_in({"cutoff": [5.0, 3.5], "neuron": 20}, {"generations": 500}, ["H", "C"])
    rows = dict(line.split(maxsplit=1) for line in text.splitlines())
    assert rows["type"] == "2 H C"
    assert rows["version"] == "4"
    assert rows["cutoff"] == "5.0 3.5"
    assert rows["neuron"] == "20"
    assert rows["generation"] == "500"
    assert rows["l_max"] == "4 2 0"


def test_loss_output_is_parsed(tmp_path):
    loss = np.array(
        [
            [100, 1.2, 0.1, 0.1, 0.05, 0.30, 0.0, 0.06, 0.32, 0.0],
            [200, 0.9, 0.1, 0.1, 0.03, 0.20, 0.0, 0.04, 0.21, 0.0],
        ]
    )
    np.savetxt(tmp_path / "loss.out", loss)
    parsed = nep.read_loss(tmp_path / "loss.out")
    assert parsed["generation"].tolist() == [100, 200]
    assert parsed["force_rmse_test"].tolist() == [0.32, 0.21]
    np.savetxt(tmp_path / "loss_bad.out", loss[:, :7])
    with pytest.raises(ElmlffError, match="7 columns, expected 10"):
        nep.read_loss(tmp_path / "loss_bad.out")


def test_nep_record_is_not_differentiable_and_needs_gpumd():
    rec = B.FAMILIES["nep"]
    assert (rec.executable, rec.distribution, rec.env_file) == ("nep", "calorine", "envs/nep.yaml")
    pot = nep.NEPPotential("n", "nep.txt", {"species": [1, 6]})
    assert pot.family == "nep" and not B.is_differentiable(pot)
    with pytest.raises(ElmlffError, match="no differentiable torch energy"):
        pot.energy(None, None, None, None, None)
    assert B.distribution("nep") == "calorine" and "calorine" in B.distributions()


def test_nep_is_left_out_without_gpumd(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, why = B.family_available("nep")
    assert not ok and why == B.FAMILIES["nep"].missing_hint
    assert "`nep` executable is not on PATH" in why
    assert B.family_available("schnetpack") == (True, "")
    from elmlff.config import ensemble, left_out, validate_config

    cfg = {
        "datasets": {
            "m": {
                "format": "deepmd",
                "path": ".",
                "units": {"energy": "eV", "length": "angstrom"},
                "parts": {".": "pool"},
            }
        },
        "bases": {"a": {"family": "schnetpack"}, "n": {"family": "nep"}},
        "ensemble": ["a", "n"],
    }
    validate_config(cfg)
    assert ensemble(cfg, "m") == ["a"]
    assert left_out(cfg) == {"n": why}
    with pytest.raises(ElmlffError, match="install GPUMD"):
        B.get_family("nep").train(
            B.BaseSpec("n", "nep"), random_frames(), random_frames(), "unused"
        )
