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
every base, so its target is meta_inference.py's < 3x), Ensemble-direct's GAT timed alone on
one frame, and Eq. 7's θ alone, fused (as it runs) and through the e3nn modules one by one.
Every model runs once per round, ``--repeats`` rounds, and its median is taken, so a drift in
the machine's speed reaches the bases and the ensembles alike. The bases come from a trained
campaign (``results/{dataset}``) or are trained briefly into ``bench/.cache`` (timings do not
depend on the weights; the metas are untrained). A benchmark that prints ratios measured in
one run, not a test: ``python bench/md_steps.py [--device cuda] [--repeats N]``.
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


def bench(name: str, frames, pots, steps: int, device: str, repeats: int) -> None:
    from elmlff import meta
    from elmlff.baselines import LinearCombiner
    from elmlff.meta.data import Stats
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble, LinearEnsemble

    atoms = frames.subset([0]).to_atoms()[0]
    stats = Stats.fit(frames)
    names = [p.name for p in pots]
    one = {p.name: LinearEnsemble(LinearCombiner(p.name, [p.name], np.ones(1)), [p]) for p in pots}
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
    ensembles = {
        "mean": (mean, steps),
        "ensemble_direct": (direct, steps),
        "conserv_eq7": (energy_only, steps),
        "conserv_eq6": (conserv, max(steps // 4, 5)),
    }
    runs = {n: (e, steps) for n, e in one.items()} | ensembles
    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(repeats):  # every model once per round: drifts hit all of them alike
        for n, (e, k) in runs.items():
            times[n].append(1.0 / steps_per_second(e, atoms, k))
    sec = {n: float(np.median(t)) for n, t in times.items()}
    alone = {n: sec[n] for n in one}
    floor = sum(alone.values())
    print(
        f"\n{name}: {len(atoms)} atoms, {len(pots)} bases, {steps} MD steps each "
        f"(Eq. 6: {ensembles['conserv_eq6'][1]}), median of {repeats} rounds, {device}"
    )
    for n, t in alone.items():
        print(f"  {n:>16s}  {1e3 * t:8.2f} ms/step alone")
    print(f"  {'sum of bases':>16s}  {1e3 * floor:8.2f} ms/step")
    for n in ensembles:
        t = sec[n]
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
    theta = {f: timed(theta_step(energy_only, one_frame, f), repeat=steps) for f in (True, False)}
    print(
        f"  Eq. 7's θ alone on one frame (forward + gradient): {1e3 * theta[True]:.2f} ms fused, "
        f"{1e3 * theta[False]:.2f} ms through the e3nn modules one by one"
    )


def theta_step(ens, frames, fused: bool):
    """One Eq. 7 θ evaluation and its gradient in the positions and base energies, as the
    chain rule's MD step does it (base outputs fixed)."""
    from elmlff import bases as B

    dev = next(ens.theta.parameters()).device
    pos = torch.as_tensor(frames.positions, dtype=torch.float64, device=dev)
    rest = [t.to(dev) for t in B.frame_tensors(frames)]
    b = ens._structure(pos, *rest)
    em = torch.zeros(1, len(ens.bases), dtype=torch.float64, device=dev, requires_grad=True)
    fm = torch.zeros(len(pos), len(ens.bases), 3, dtype=torch.float64, device=dev)
    x = pos.clone().requires_grad_(True)

    def step():
        with ens.theta.frozen():
            e = ens.theta(b, x, em, fm, fused=fused)
            return torch.autograd.grad(e.sum(), (x, em))

    return step


def main() -> None:
    from elmlff.config import load_config
    from elmlff.data import read

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all models (median)")
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
        bench(name, frames.subset(range(16)), pots, a.steps, a.device, a.repeats)


if __name__ == "__main__":
    main()
