"""Cost of an ensemble's MD step against its bases' own steps, on this machine.

For a methane molecule and (where ``../shared`` has it) the methanol/Cu(100) slab, with the
eight bases of config/config.yaml, each model runs velocity-Verlet MD through the campaign's
ASE calculator (:class:`elmlff.calculator.EnsembleCalculator`, the MD stage's own):

* every base alone, as the MD stage runs a single base; their sum is the ensemble's floor;
* the plain mean, Ensemble-direct and Ensemble-conserv over all eight, the latter as Eq. 6
  (θ reads the base forces) and as Eq. 7 (energies only).

It prints each ensemble's step time over the summed single-base step times (target: at most
1.1x for the mean, Ensemble-direct and Eq. 7, whose forces take one backward pass per base by
the chain rule; Eq. 6 differentiates the base forces again, Hessian-vector products through
every base, so its target is meta_inference.py's < 3x) and Ensemble-direct's GAT timed alone
on one frame. The
bases come from a trained campaign (``results/{dataset}``) or are trained briefly into
``bench/.cache`` (timings do not depend on the weights; the metas are untrained). A benchmark
that prints ratios measured in one run, not a test: ``python bench/md_steps.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from meta_inference import bases_for, data_sets  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Mean wall time of ``fn`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def steps_per_second(ensemble, atoms, steps: int, warmup: int = 3) -> float:
    """Velocity-Verlet steps per second of ``ensemble`` (0.5 fs) from ``atoms``."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from elmlff.calculator import EnsembleCalculator

    a = atoms.copy()
    a.calc = EnsembleCalculator(ensemble)
    MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(a, 0.5 * units.fs)
    dyn.run(warmup)
    t0 = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t0)


def bench(name: str, frames, pots, steps: int, device: str) -> None:
    from elmlff import meta
    from elmlff.baselines import LinearCombiner
    from elmlff.meta.data import Stats
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble, LinearEnsemble

    atoms = frames.subset([0]).to_atoms()[0]
    stats = Stats.fit(frames)
    names = [p.name for p in pots]
    one = {p.name: LinearEnsemble(LinearCombiner(p.name, [p.name], np.ones(1)), [p]) for p in pots}
    alone = {n: 1.0 / steps_per_second(e, atoms, steps) for n, e in one.items()}
    floor = sum(alone.values())
    mean = LinearEnsemble(LinearCombiner("mean", names, np.full(len(pots), 1 / len(pots))), pots)
    direct = DirectEnsemble(
        meta.build("direct", len(pots), frames.species, stats, {}).to(device), pots
    )
    conserv = ConservEnsemble(
        meta.build("conserv", len(pots), frames.species, stats, {}).to(device), pots
    )
    energy_only = ConservEnsemble(
        meta.build("conserv", len(pots), frames.species, stats, {"use_forces": False}).to(device),
        pots,
    )
    sec = {
        "mean": 1.0 / steps_per_second(mean, atoms, steps),
        "ensemble_direct": 1.0 / steps_per_second(direct, atoms, steps),
        "conserv_eq7": 1.0 / steps_per_second(energy_only, atoms, steps),
        "conserv_eq6": 1.0 / steps_per_second(conserv, atoms, max(steps // 4, 5)),
    }
    print(f"\n{name}: {len(atoms)} atoms, {len(pots)} bases, {steps} MD steps each, {device}")
    for n, t in alone.items():
        print(f"  {n:>16s}  {1e3 * t:8.2f} ms/step alone")
    print(f"  {'sum of bases':>16s}  {1e3 * floor:8.2f} ms/step")
    for n, t in sec.items():
        target = "target <= 1.1x" if n != "conserv_eq6" else "HVPs through every base"
        ratio = f"ratio to the bases {t / floor:5.2f}x"
        print(f"  {n:>16s}  {1e3 * t:8.2f} ms/step  {ratio}  ({target})")
    one_frame = frames.subset([0])
    em, fm = (np.stack(x) for x in zip(*(p.predict(one_frame) for p in pots), strict=True))
    gat = timed(lambda: direct.forces_from(one_frame, em, fm), repeat=steps)
    print(
        f"  Ensemble-direct's GAT alone on one frame: {1e3 * gat:.2f} ms = "
        f"{100 * gat / floor:.1f} % of the summed bases' steps"
    )


def main() -> None:
    from elmlff.config import load_config
    from elmlff.data import read

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cpu", help="torch device of the bases and metas")
    ap.add_argument("--only", default=None, help="one data set: methane or methanol_cu")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cfg = load_config(ROOT / "config" / "config.yaml")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    for name, path in data_sets():
        if a.only and name != a.only:
            continue
        frames = read("deepmd", path, energy_unit="eV", length_unit="angstrom")
        pots = bases_for(name, frames.subset(range(16)), cfg, a.cache, a.device)
        bench(name, frames.subset(range(16)), pots, a.steps, a.device)


if __name__ == "__main__":
    main()
