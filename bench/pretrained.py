"""Inference cost of the pretrained universal potentials (CHGNet, SevenNet, DIEP) on this
machine: load time, time per structure and per atom for energy + forces (and with the stress),
and peak resident memory, on silicon supercells of growing size. Each model is loaded once and
evaluates batches of structures (never one model per frame).

Then (``--meta N``, default 64 atoms; 0 skips it) the materials ensemble of
``config/campaigns/materials.yaml`` (CHGNet 0.3.0, CHGNet r2SCAN, SevenNet-0, DIEP) on N-atom
cells: each meta-model's cost relative to the summed base inference, as
``bench/meta_inference.py`` measures it (Ensemble-direct target < 1 %, Ensemble-conserv < 3x;
untrained metas: the cost does not depend on the weights).

A benchmark that prints numbers measured in one run, not a test:
``python bench/pretrained.py [--sizes 8 64 216] [--frames 4] [--meta 64]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np


def cells(n_atoms: int, frames: int):
    """``frames`` rattled silicon cubic supercells of ``n_atoms`` atoms (8 k³)."""
    from ase.build import bulk

    from elmlff.data.frames import Frames

    k = round((n_atoms / 8) ** (1 / 3))
    images = []
    for i in range(frames):
        at = bulk("Si", "diamond", a=5.43, cubic=True).repeat((k, k, k))
        at.rattle(0.05, seed=i)
        images.append(at)
    return Frames(
        numbers=np.concatenate([a.numbers for a in images]),
        positions=np.concatenate([a.positions for a in images]),
        n_atoms=[len(a) for a in images],
        cell=np.stack([a.cell[:] for a in images]),
        pbc=np.ones((frames, 3), bool),
        energy=np.zeros(frames),
        forces=np.zeros((sum(len(a) for a in images), 3)),
        name="si",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 216])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--families", nargs="+", default=["chgnet", "sevenn", "diep"])
    ap.add_argument("--meta", type=int, default=64, help="atoms per cell of the meta part")
    args = ap.parse_args()

    import torch

    from elmlff import bases as B

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"threads: {torch.get_num_threads()}; {args.frames} structures per size")
    for fam in args.families:
        ok, why = B.family_available(fam)
        if not ok:
            print(f"{fam}: skipped ({why})")
            continue
        t0 = time.perf_counter()
        pot = B.get_family(fam).potential(fam, {})
        load = time.perf_counter() - t0
        print(f"{pot.label}: loaded in {load:.1f} s")
        for n in args.sizes:
            f = cells(n, args.frames)
            pot.predict(f.subset([0]))  # warm-up
            t0 = time.perf_counter()
            pot.predict(f)
            ef = (time.perf_counter() - t0) / len(f)
            t0 = time.perf_counter()
            pot.predict_stress(f)
            efs = (time.perf_counter() - t0) / len(f)
            na = int(f.n_atoms[0])
            print(
                f"  {na:4d} atoms: E+F {1e3 * ef:8.1f} ms/structure {1e3 * ef / na:6.2f} ms/atom;"
                f" E+F+stress {1e3 * efs:8.1f} ms/structure"
            )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak resident memory of this process so far: {rss:.0f} MiB")
    if args.meta:
        meta_overhead(args.meta, args.frames)


def meta_overhead(n_atoms: int, frames: int) -> None:
    """Ensemble-direct and Ensemble-conserv over the materials campaign's four pretrained
    bases, relative to the bases' own inference (bench/meta_inference.py's measurement)."""
    import sys
    from pathlib import Path

    import yaml

    from elmlff import bases as B

    sys.path.insert(0, str(Path(__file__).parent))
    from meta_inference import bench

    cfg = Path(__file__).parents[1] / "config" / "campaigns" / "materials.yaml"
    specs = yaml.safe_load(cfg.read_text())["bases"]
    if not all(B.family_available(s["family"])[0] for s in specs.values()):
        print("meta overhead: skipped (a pretrained family is not installed)")
        return
    pots = [B.get_family(s["family"]).potential(n, s["params"]) for n, s in specs.items()]
    f = cells(n_atoms, frames)
    e, forces = pots[0].predict(f)  # labels only feed the metas' normalisation
    f.energy, f.forces = e, forces
    bench(f"silicon ({cfg.name} bases)", f, pots)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak resident memory of this process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
