"""Cost of the subset study (every k-subset of the eight bases) relative to one meta training.

Trains the default campaign's Ensemble-direct (config/config.yaml) on the methane frames
1. on all eight bases, alone, as the ``train_meta`` rule does, and
2. on all 255 non-empty subsets, grouped by size k as the ``train_subsets`` rule does
   (graphs and batches shared; one vmapped group per k where that pays, otherwise one model
   after another: :func:`elmlff.meta.group.fit_direct_models`),
both for the same fixed number of epochs (no early stopping, so both do the same work per
model), and prints the wall-time ratio (issue target: < 10) and the naive ratio (255 separate
trainings, each building its own graphs, estimated from one).

The amortized method (the default campaign's) is timed as the campaign runs it, with the
config's epochs and early stopping: one model trained over random subsets, then every one of
the 255 subsets predicted on the val + test frames (on a CPU, subsets side by side on as many
worker threads as torch has threads), against one eight-base training with the same settings
(target <= 3x).

On a CPU it then prints the floor this machine sets on that ratio: the matrix-product FLOPs of
one model-epoch (counted with ``torch.utils.flop_counter``) times 255, at the rate the CPU reaches
on the GAT's node-update shapes and at its large-matrix peak, against one training's epoch. The
grouped models are independent (no work is shared but the inputs), so no grouping beats that
floor; the gather, scatter and elementwise work of the attention comes on top.

Base predictions come from ``results/methane/predictions.zarr`` when a campaign made it;
otherwise they are synthetic (the reference forces plus per-base noise and bias): the cost does
not depend on how good the bases are. Another campaign's data set (its first ``run`` entry),
from a campaign's store, with ``--config``: the methanol/Cu slab's amortized study is
``--config config/campaigns/methanol_cu.yaml --results <its results/> --method amortized``.
A benchmark printing ratios measured in one run, not a test:
``python bench/subsets.py [--epochs N] [--sizes 1 2 ...] [--device cuda] [--config F]``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def metadata(cfg: dict, cutoff: float, dataset: str, results: Path):
    """(MetaData of the data set's frames, fit frames, val frames, ensemble, predicted
    frames)."""
    from elmlff import store
    from elmlff.config import ensemble
    from elmlff.data.split import Split
    from elmlff.meta.data import MetaData
    from elmlff.pipeline import load_dataset

    models = ensemble(cfg, dataset)
    res = results / dataset
    if (res / "predictions.zarr").exists() and (res / "split.json").exists():
        split = Split.load(res / "split.json")
        data = MetaData.from_store(store.open_store(res / "predictions.zarr"), cutoff, models)
        print(f"base predictions: {res / 'predictions.zarr'}")
        pred = np.sort(np.concatenate([split.roles["val"], split.roles["test"]]))
        return data, split.meta_fit(), split.roles["val"], models, pred
    if dataset != "methane":
        raise SystemExit(f"no campaign store at {res}: run the campaign, or give --results")
    frames, _ = load_dataset("methane", cfg["datasets"]["methane"])
    sizes = cfg["datasets"]["methane"]["split"]["sizes"]
    n_fit, n_val = sizes["meta"], sizes["val"]
    frames = frames.subset(np.arange(n_fit + n_val))
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.9, 1.1, size=len(models))
    bf = np.stack(
        [s * frames.forces + rng.normal(scale=0.02, size=frames.forces.shape) for s in scale]
    )
    be = np.stack([frames.energy + rng.normal(scale=0.01, size=len(frames)) for _ in models])
    print("base predictions: synthetic (no campaign store found)")
    return (
        MetaData(frames, models, be, bf, cutoff),
        np.arange(n_fit),
        np.arange(n_fit, n_fit + n_val),
        models,
        np.arange(n_fit, n_fit + n_val),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="k to run (default all)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--method", choices=["dedicated", "amortized", "both"], default="both")
    ap.add_argument("--config", type=Path, default=None, help="a campaign over config.yaml")
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="a campaign's results")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    from elmlff import meta
    from elmlff.config import load_config, meta_spec
    from elmlff.meta.data import MetaData, Stats
    from elmlff.meta.group import fit_direct_models, vmap_pays
    from elmlff.subsets import choose, resolve
    from elmlff.subsets import seed as subset_seed

    cfg = load_config(ROOT / "config" / "config.yaml", *([a.config] if a.config else []))
    dataset = cfg["run"][0]
    spec = meta_spec(cfg, "ensemble_direct")
    params = spec.params
    settings = replace(spec.settings, max_epochs=a.epochs, patience=a.epochs + 1)
    t0 = time.perf_counter()
    data, fit_idx, val_idx, ens, pred_idx = metadata(cfg, spec.cutoff, dataset, a.results)
    t_setup = time.perf_counter() - t0
    stats = Stats.fit(data.frames.subset(fit_idx))
    quiet = lambda m: None  # noqa: E731

    def train(names: list[str]) -> float:
        subsets = [resolve(n, ens) for n in names]
        models = [
            meta.build("direct", len(c), data.frames.species, stats, params, subset_seed(0, n)).to(
                a.device
            )
            for c, n in zip(subsets, names, strict=True)
        ]
        _sync(a.device)
        t = time.perf_counter()
        fit_direct_models(models, subsets, data, fit_idx, val_idx, settings, log=quiet)
        _sync(a.device)
        return time.perf_counter() - t

    print(
        f"{dataset}: {len(fit_idx)} fit + {len(val_idx)} val frames, {len(ens)} bases, "
        f"{settings.max_epochs} epochs each; data + graphs {t_setup:.1f} s; "
        f"{torch.get_num_threads()} threads"
    )
    t_graph = time.perf_counter()
    MetaData(data.frames, data.models, data.base_energy, data.base_forces, data.cutoff)
    t_graph = time.perf_counter() - t_graph
    train(["all"])  # warm-up: the first training pays for lazy initialisation
    one = float(np.median([train(["all"]) for _ in range(3)]))
    print(f"one eight-base training: {one:.2f} s, median of 3 (+ {t_graph:.2f} s graph build)")
    groups = choose("all", ens)
    if a.method in ("amortized", "both"):
        amortized(
            data,
            fit_idx,
            val_idx,
            pred_idx,
            stats,
            params,
            spec,
            a.device,
            groups,
            cfg["subsets"].get("amortized_training", {}),
        )
    if a.method == "amortized":
        return
    sizes = a.sizes or list(groups)
    total, count = 0.0, 0
    for k in sizes:
        t = train(groups[k])
        total, count = total + t, count + len(groups[k])
        grouped = vmap_pays(len(groups[k]), data, settings, a.device)
        how = "in one group" if grouped else "one by one"
        print(
            f"  k={k}: {len(groups[k]):3d} subsets {how:>12s} {t:7.1f} s "
            f"({1e3 * t / len(groups[k]) / settings.max_epochs:.0f} ms per model-epoch)"
        )
    n_all = sum(len(g) for g in groups.values())  # 2^M - 1: 255 for the eight bases
    if count != n_all:
        print(f"(sizes {sizes} only: {count} subsets; scaled to {n_all} by model count)")
        total *= n_all / count
    naive = n_all * (one + t_graph + t_setup)
    print(
        f"all {n_all} subsets grouped: {total:.1f} s = {total / (one + t_graph):.1f}x one "
        f"training (target < 10x); {n_all} separate trainings: {n_all}x, or "
        f"{naive / (one + t_graph):.0f}x with "
        f"each loading the store and building graphs ({t_setup:.1f} s; the process start comes "
        "on top)"
    )
    if a.device == "cpu":
        floor(data, fit_idx, val_idx, stats, params, settings, one, n_all)


def amortized(
    data, fit_idx, val_idx, pred_idx, stats, params, spec, device, groups, amortized_training
) -> None:
    """Time the amortized method against one eight-base training, both with the campaign's
    settings (early stopping on val; the amortized model's with ``subsets.amortized_training``
    over them): one model over random subsets, then all subsets predicted."""
    from elmlff import meta
    from elmlff.meta.amortized import fit_amortized, predict_subsets
    from elmlff.meta.group import fit_direct_group
    from elmlff.subsets import resolve

    settings, quiet = spec.settings, lambda m: None
    am_settings = replace(settings, **amortized_training)
    names = [n for g in groups.values() for n in g]
    subsets = [resolve(n, data.models) for n in names]
    full = meta.build("direct", len(data.models), data.frames.species, stats, params, 0)
    _sync(device)
    t = time.perf_counter()
    info = fit_direct_group(
        [full.to(device)], [data.models], data, fit_idx, val_idx, settings, log=quiet
    )[0]
    _sync(device)
    one = time.perf_counter() - t
    model = meta.build(
        "direct", len(data.models), data.frames.species, stats, {**params, "amortized": True}, 0
    ).to(device)
    _sync(device)
    t = time.perf_counter()
    am = fit_amortized(model, data, fit_idx, val_idx, am_settings, log=quiet)
    _sync(device)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    predict_subsets(model, data, np.asarray(pred_idx), subsets)
    _sync(device)
    t_pred = time.perf_counter() - t
    total = t_train + t_pred
    print(
        f"campaign settings (max {settings.max_epochs} epochs, patience {settings.patience}): one "
        f"eight-base training {one:.1f} s ({info['epochs_run']} epochs); amortized (max "
        f"{am_settings.max_epochs}, patience {am_settings.patience}): one model over random "
        f"subsets {t_train:.1f} s ({am['epochs_run']} epochs) + all {len(names)} "
        f"subsets predicted on {len(pred_idx)} val/test frames {t_pred:.1f} s = {total:.1f} s = "
        f"{total / one:.2f}x one eight-base training (target <= 3x); the prediction alone "
        f"{t_pred / one:.2f}x ({len(names)} x {len(pred_idx)} frames forward, against "
        f"{info['epochs_run']} epochs of {len(fit_idx)} frames forward and backward + "
        f"{len(val_idx)} forward)"
    )


def floor(data, fit_idx, val_idx, stats, params: dict, settings, one: float, n_all: int) -> None:
    """Print the lowest ratio this machine allows: the matrix-multiply FLOPs of n_all trainings
    at the rate its CPU reaches on the model's matrix shapes and at its large-matrix peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from elmlff import meta

    model = meta.build("direct", len(data.models), data.frames.species, stats, params, 0)
    b = data.batch(fit_idx[: settings.batch_size]).to("cpu", torch.float32)
    with FlopCounterMode(display=False) as fc:
        ((model(b) - b.ref_forces) ** 2).mean().backward()
    step = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(b)
    n_fit = -(-len(fit_idx) // settings.batch_size)
    n_val = -(-len(val_idx) // settings.batch_size)
    per_epoch = n_fit * step + n_val * fc.get_total_flops()  # one model, one epoch
    hidden = int(params.get("hidden", 64))
    rates = {
        "70 x the GAT node update": _gflops((70, b.positions.shape[0], hidden, hidden)),
        "a 2048^3 product, the CPU's peak": _gflops((1, 2048, 2048, 2048)),
    }
    t_one = one / settings.max_epochs
    print(
        f"compute floor: {per_epoch / 1e9:.2f} GFLOP of matrix products per model-epoch "
        f"(one eight-base epoch takes {1e3 * t_one:.0f} ms)"
    )
    for what, rate in rates.items():
        t = n_all * per_epoch / (rate * 1e9)
        print(
            f"  at {rate:.0f} GFLOP/s ({what}): {n_all} models need >= {1e3 * t:.0f} ms per epoch "
            f"= {t / t_one:.1f}x one training, before any memory-bound (gather, scatter, "
            "elementwise) work"
        )


def _gflops(shape: tuple[int, int, int, int]) -> float:
    """GFLOP/s of torch.bmm on (B, N, K) x (B, K, M) float32 matrices on this CPU."""
    nb, n, k, m = shape
    x, w = torch.randn(nb, n, k), torch.randn(nb, k, m)
    torch.bmm(x, w)
    reps = max(3, int(2e9 / (2 * nb * n * k * m)))
    t = time.perf_counter()
    for _ in range(reps):
        torch.bmm(x, w)
    return 2 * nb * n * k * m * reps / (time.perf_counter() - t) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
