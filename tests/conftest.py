"""Shared fixtures: paths, the embedded methane set, synthetic frames, a tiny trained base."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
if os.environ.get("ELMLFF_SLURM") != "1":  # no controller here: see tests/bin/scontrol
    os.environ["PATH"] = f"{Path(__file__).parent / 'bin'}{os.pathsep}{os.environ['PATH']}"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METHANE = ROOT / "data" / "methane"


def pytest_collection_modifyitems(config, items):
    """Skip ``shared_data`` tests when ../shared/data is absent, and ``slurm`` tests unless the
    SLURM tier (tests/slurm/run-tier.sh) started a cluster and set ELMLFF_SLURM=1."""
    no_shared = pytest.mark.skip(reason="../shared/data not present")
    no_slurm = pytest.mark.skip(reason="no live SLURM cluster (run tests/slurm/run-tier.sh)")
    for item in items:
        if "shared_data" in item.keywords and not SHARED.exists():
            item.add_marker(no_shared)
        if "slurm" in item.keywords and os.environ.get("ELMLFF_SLURM") != "1":
            item.add_marker(no_slurm)


@pytest.fixture(scope="session")
def methane():
    from elmlff.data import read

    return read("deepmd", METHANE / "training_data", energy_unit="eV", length_unit="angstrom")


def write_npz(path: Path, n_frames: int = 3, **extra) -> Path:
    """A generic npz data file (``R z E F``) of 2-atom frames with random labels; ``extra``
    adds or replaces arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "R": rng.normal(size=(n_frames, 2, 3)),
        "z": np.array([1, 1]),
        "E": rng.normal(size=n_frames),
        "F": rng.normal(size=(n_frames, 2, 3)),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{**arrays, **extra})
    return Path(path)


def biased_bases(frames, names, noise):
    """MetaData of stored base predictions for a meta-model's test: one copy of the reference
    forces per ``noise`` (Gaussian, eV/Å), then a biased base (x1.6 + 0.3); energies within
    10 meV of the reference. ``names``: every base, the biased one last."""
    from elmlff.meta.data import MetaData

    rng = np.random.default_rng(0)
    f = frames.forces
    bf = np.stack([f + rng.normal(scale=s, size=f.shape) for s in noise] + [1.6 * f + 0.3])
    be = np.stack([frames.energy + rng.normal(scale=0.01, size=len(frames)) for _ in names])
    return MetaData(frames, list(names), be, bf, cutoff=4.0)


def random_frames(n_frames: int = 4, sizes=(3, 5, 2, 4), seed: int = 0, pbc: bool = False):
    """Frames with different atom counts and random labels."""
    from elmlff.data import Frames

    rng = np.random.default_rng(seed)
    n = np.array([sizes[i % len(sizes)] for i in range(n_frames)])
    na = int(n.sum())
    cell = np.tile(np.eye(3) * 10.0, (n_frames, 1, 1)) if pbc else np.zeros((n_frames, 3, 3))
    return Frames(
        numbers=rng.choice([1, 6, 8], na),
        positions=rng.normal(size=(na, 3)) * 2,
        n_atoms=n,
        cell=cell,
        pbc=np.full((n_frames, 3), pbc),
        energy=rng.normal(size=n_frames),
        forces=rng.normal(size=(na, 3)),
        source_index=np.arange(n_frames),
        source_part=np.full(n_frames, "p"),
    )


@pytest.fixture(scope="session")
def tiny_schnet(methane, tmp_path_factory):
    """A SchNet base trained for 2 epochs on 60 methane frames (float64, for FD checks)."""
    from elmlff.bases import BaseSpec, get_family, write_info

    out = tmp_path_factory.mktemp("tiny_schnet")
    spec = BaseSpec(
        "tiny_schnet",
        "schnetpack",
        {
            "architecture": "schnet",
            "n_rbf": 8,
            "n_atom_basis": 16,
            "n_interactions": 2,
            "cutoff": 4.0,
        },
        {"max_epochs": 2, "batch_size": 16, "dtype": "float64"},
    )
    info = get_family("schnetpack").train(
        spec, methane.subset(range(60)), methane.subset(range(60, 80)), out
    )
    write_info(
        out,
        {
            "name": spec.name,
            "family": spec.family,
            "fit": "full",
            "trained_on": list(range(60)),
            **info,
        },
    )
    return out
