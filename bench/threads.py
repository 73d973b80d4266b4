"""Two jobs on a 2-core laptop: one after another on two threads each, or side by side on one
thread each (what the local profile does: rules ask for ``threads: 1``, ``cores: 2``).

Each job is a real training job of the campaign: a SchNet base (schnetpack's trainer) and a
DimeNet++ base (the project's loop over torch-geometric's blocks), laptop-sized, a few epochs on
the embedded methane frames. Prints the wall time of both ways and their ratio, measured in one
run (a benchmark, not a test): ``python bench/threads.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOBS = {
    "schnet": (
        "schnetpack",
        {"architecture": "schnet", "n_rbf": 20, "n_atom_basis": 32, "n_interactions": 3},
        {"batch_size": 16, "lr": 0.002},
    ),
    "dimenet": (
        "dimenet",
        {
            "architecture": "dimenet++",
            "hidden_channels": 32,
            "num_blocks": 2,
            "int_emb_size": 16,
            "basis_emb_size": 8,
            "out_emb_channels": 32,
        },
        {"batch_size": 16, "lr": 0.002},
    ),
}


def worker(name: str, epochs: int, frames: int, out: Path) -> None:
    """One training job (run in a child process with its own thread count)."""
    import numpy as np

    from elmlff.bases import BaseSpec, get_family
    from elmlff.data.readers import read

    fr = read(
        "deepmd",
        ROOT / "data" / "methane" / "training_data",
        energy_unit="eV",
        length_unit="angstrom",
    )
    family, params, training = JOBS[name]
    spec = BaseSpec(
        name,
        family,
        {**params, "cutoff": 5.0},
        {**training, "max_epochs": epochs, "patience": epochs},
    )
    idx = np.arange(frames)
    get_family(family).train(spec, fr.subset(idx), fr.subset(idx[: frames // 5]), out)


def run(jobs: list[str], threads: int, together: bool, epochs: int, frames: int) -> float:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "DP_INTRA_OP_PARALLELISM_THREADS": str(threads),
    }
    cmds = [
        [sys.executable, __file__, "--worker", j, "--epochs", str(epochs), "--frames", str(frames)]
        for j in jobs
    ]
    t0 = time.perf_counter()
    if together:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, env=env, stdout=subprocess.DEVNULL).returncode for c in cmds]
    if any(codes):
        raise SystemExit(f"a job failed: {codes}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", choices=sorted(JOBS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=400)
    a = ap.parse_args()
    if a.worker:
        with tempfile.TemporaryDirectory() as tmp:
            worker(a.worker, a.epochs, a.frames, Path(tmp) / "model")
        return
    jobs = sorted(JOBS)
    serial = run(jobs, 2, False, a.epochs, a.frames)
    side = run(jobs, 1, True, a.epochs, a.frames)
    print(
        f"jobs: {', '.join(jobs)} ({a.epochs} epochs, {a.frames} methane frames each), "
        f"{os.cpu_count()} CPUs"
    )
    print(f"one after another, 2 threads each: {serial:.1f} s (process start included)")
    print(f"side by side, 1 thread each:       {side:.1f} s")
    print(f"ratio (one after another / side by side): {serial / side:.2f}x")


if __name__ == "__main__":
    main()
