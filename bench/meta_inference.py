"""Inference cost of the meta-models relative to their bases, on this machine.

For a methane batch and a methanol/Cu(100) batch, with the eight bases of config/config.yaml:

* Ensemble-direct: time of its inference on the bases' predictions (cutoff graph, edge
  features, GAT) / summed base inference time (target < 1 %), on calls of the campaign's
  prediction batch (``evaluation.predict_batch_size``) for methane and of 32 slab frames, and
  on smaller calls, where its fixed cost per call weighs more;
* Ensemble-conserv: time of its forces (every base live with create_graph, θ, and the
  backward pass through θ and the bases) / summed base inference time (target < 3x);
* Ensemble-direct's forward on a large batch of the largest system, and one training step on a
  training batch of it, through torch-geometric's edge list (as a vmapped group of models
  trains) and through the fused CSR path (as everything else runs): the time of each.

Base inference = each base's own energy + forces (``predict``). Bases come from
``results/{dataset}/bases`` when a campaign has trained them; otherwise each architecture is
trained for one epoch on a few frames into ``bench/.cache`` (timings do not depend on how well
a model is trained, nor do the metas' untrained weights). A benchmark that prints ratios measured
in one run, not a test: ``make bench`` (or ``python bench/meta_inference.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def bases_for(dataset: str, frames, cfg: dict, cache: Path, device: str = "cpu") -> list:
    """The campaign's trained bases, or each architecture trained briefly into ``cache``, loaded
    on ``device``."""
    from elmlff import bases as B
    from elmlff.config import base_spec, ensemble

    models = ensemble(cfg, "methane")
    trained = ROOT / "results" / dataset / "bases"
    out = []
    for m in models:
        d = trained / m / "full" / "model"
        if not (d / B.INFO_FILE).exists():
            d = cache / dataset / m
            if not (d / B.INFO_FILE).exists():
                spec = base_spec(cfg, m)
                spec.training.update(max_epochs=1, batch_size=4)
                print(f"  training {m} briefly for the benchmark ({dataset}) ...", flush=True)
                info = B.get_family(spec.family).train(
                    spec, frames.subset(range(12)), frames.subset(range(12, 16)), d
                )
                B.write_info(d, {"name": m, "family": spec.family, "fit": "full", **info})
        out.append(B.load(d, device))
    return out


def data_sets() -> list[tuple[str, Path]]:
    """(name, DeePMD folder) of the benchmark's systems: methane, and the methanol/Cu(100) slab
    where ``../shared`` has it."""
    cases = [("methane", ROOT / "data" / "methane" / "training_data")]
    slab = SHARED / "el-mlffs" / "methanol_cu" / "train"
    if slab.exists():
        cases.append(("methanol_cu", slab))
    else:
        print(f"({slab} not found: methanol/Cu skipped)")
    return cases


REPEAT = 10  # timed calls per measurement (--repeat)


def timed(fn, repeat: int | None = None) -> float:
    """Best of ``repeat`` (default ``REPEAT``) wall times, after one warm-up call: the same
    statistic for the bases and the metas, robust to this machine's bursts of noise."""
    fn()
    best = np.inf
    for _ in range(REPEAT if repeat is None else repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, frames, pots, device: str = "cpu") -> None:
    from elmlff import meta
    from elmlff.meta.data import Stats
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble

    stats = Stats.fit(frames)
    per_base = [timed(lambda p=p: p.predict(frames, batch_size=len(frames))) for p in pots]
    base_total = float(np.sum(per_base))
    preds = [p.predict(frames, batch_size=len(frames)) for p in pots]
    em, fm = np.stack([e for e, _ in preds]), np.stack([f for _, f in preds])
    direct = DirectEnsemble(
        meta.build("direct", len(pots), frames.species, stats, {}).to(device), pots
    )
    t_direct = timed(lambda: direct.forces_from(frames, em, fm))
    conserv = ConservEnsemble(
        meta.build("conserv", len(pots), frames.species, stats, {}).to(device), pots
    )
    t_conserv = timed(lambda: conserv.predict_all(frames, batch_size=len(frames)))
    energy = ConservEnsemble(
        meta.build("conserv", len(pots), frames.species, stats, {"use_forces": False}).to(device),
        pots,
    )
    t_energy = timed(lambda: energy.predict_all(frames, batch_size=len(frames)))
    n = len(frames)
    print(f"\n{name}: {n} frames x {frames.n_atoms[0]} atoms, {len(pots)} bases, {device}")
    for p, t in zip(pots, per_base, strict=True):
        print(f"  {p.name:>14s}  {1e3 * t / n:8.3f} ms/structure")
    print(f"  {'sum of bases':>14s}  {1e3 * base_total / n:8.3f} ms/structure")
    print(
        f"  Ensemble-direct           {1e3 * t_direct / n:8.3f} ms/structure  "
        f"ratio to bases {100 * t_direct / base_total:6.2f} %  (target < 1 %)"
    )
    print(
        f"  Ensemble-conserv (Eq. 6)  {1e3 * t_conserv / n:8.3f} ms/structure  "
        f"ratio to bases {t_conserv / base_total:6.2f}x  (target < 3x; bases included)"
    )
    print(
        f"  Ensemble-conserv (Eq. 7)  {1e3 * t_energy / n:8.3f} ms/structure  "
        f"ratio to bases {t_energy / base_total:6.2f}x"
    )
    smaller = [k for k in (1, 8, 32) if k < n]
    if smaller:
        print("  Ensemble-direct on smaller calls (its fixed cost per call weighs more):")
    for k in smaller:
        few = frames.subset(range(k))
        e_k, f_k = em[:, :k], fm[:, : len(few.numbers)]
        bases_k = sum(timed(lambda p=p, x=few: p.predict(x, batch_size=len(x))) for p in pots)
        t_k = timed(lambda x=few, e=e_k, f=f_k: direct.forces_from(x, e, f))
        print(
            f"  {k:4d} frames: bases {1e3 * bases_k / k:8.3f}, Ensemble-direct "
            f"{1e3 * t_k / k:7.3f} ms/structure  ratio {100 * t_k / bases_k:6.2f} %"
        )


def aggregation(name: str, frames, device: str = "cpu", train_frames: int = 32) -> None:
    """Ensemble-direct's forward (graph and edge features prebuilt, as the amortized study
    predicts its subsets) through torch-geometric's edge list and through the fused CSR path
    (edge logits cached with the graph), and one training step (forward and backward, graph
    built inside, ``train_frames`` frames as a training batch) through each; random weights
    and base forces (the cost depends on neither)."""
    from elmlff import meta
    from elmlff.meta.data import Stats, batch_from_frames

    rng = np.random.default_rng(0)
    m = 8
    em = frames.energy[None] + rng.normal(size=(m, len(frames)))
    fm = frames.forces[None] + 0.1 * rng.normal(size=(m, len(frames.numbers), 3))
    torch.manual_seed(0)
    model = meta.build("direct", m, frames.species, Stats.fit(frames), {}).to(device).eval()
    paths = (("edge list", False), ("fused CSR", True))
    with torch.no_grad():
        model.head[-1].weight.normal_(0.0, 0.1)  # a correction that is not zero
        b = batch_from_frames(frames, em, fm, model.params["cutoff"]).to(device, torch.float32)
        out, sec = {}, {}
        for path, sparse in paths:
            b.extra["edges"] = model.edges(b, sparse=sparse)
            out[path] = model(b).cpu().numpy()
            sec[path] = timed(lambda b=b: (model(b), _sync(device)))
    n_edges = len(b.src) + len(b.numbers)
    diff = np.abs(out["edge list"] - out["fused CSR"]).max()
    head = f"{name}: Ensemble-direct's forward on {len(frames)} frames ({n_edges} edges)"
    print(f"\n{head}, {device}")
    for path, t in sec.items():
        print(f"  {path:>10s}  {1e3 * t:8.1f} ms")
    print(
        f"  edge list / fused: {sec['edge list'] / sec['fused CSR']:.2f}x; "
        f"largest force difference {diff:.1e} eV/Å (float32)"
    )
    few = frames.subset(range(train_frames))
    tb = batch_from_frames(
        few, em[:, :train_frames], fm[:, : len(few.numbers)], model.params["cutoff"]
    ).to(device, torch.float32)
    model.train()

    def step(sparse: bool) -> None:
        c = copy.copy(tb)
        c.extra = {"edges": model.edges(c, sparse=sparse)}
        model.zero_grad()
        ((model(c) - c.ref_forces) ** 2).mean().backward()
        _sync(device)

    train = {path: timed(lambda s=sparse: step(s)) for path, sparse in paths}
    print(f"  training step on {train_frames} frames (forward + backward, graph built):")
    for path, t in train.items():
        print(f"  {path:>10s}  {1e3 * t:8.1f} ms")
    print(f"  edge list / fused: {train['edge list'] / train['fused CSR']:.2f}x")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    global REPEAT
    from elmlff.config import load_config
    from elmlff.data import read

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    cfg = load_config(ROOT / "config" / "config.yaml")
    batch = cfg["evaluation"]["predict_batch_size"]
    ap.add_argument(
        "--methane-frames", type=int, default=batch, help="per call (the campaign's batch)"
    )
    ap.add_argument(
        "--slab-frames", type=int, default=32, help="per call (Eq. 6 is slow on the slab)"
    )
    ap.add_argument("--aggregation-frames", type=int, default=256, help="of the largest system")
    ap.add_argument("--device", default="cpu", help="torch device of the bases and metas")
    ap.add_argument("--repeat", type=int, default=REPEAT, help="timed calls (best is shown)")
    a = ap.parse_args()
    REPEAT = a.repeat
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}, "
        f"best of {REPEAT} calls after a warm-up"
    )
    frames_of = {"methane": a.methane_frames, "methanol_cu": a.slab_frames}
    for name, path in data_sets():
        n = frames_of[name]
        frames = read("deepmd", path, energy_unit="eV", length_unit="angstrom")
        pots = bases_for(name, frames.subset(range(16)), cfg, a.cache, a.device)
        bench(name, frames.subset(range(n)), pots, a.device)
    aggregation(name, frames.subset(range(a.aggregation_frames)), a.device)


if __name__ == "__main__":
    main()
