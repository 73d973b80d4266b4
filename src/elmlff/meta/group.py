"""Many Ensemble-direct models trained at once: one per subset of bases, sharing everything but
their weights.

A subset study trains a meta-model on every k-subset of the bases. Done naively that is one
process per subset, each loading the store and building the same graphs. Here the models of
one subset size k (same input width) are stacked along a leading axis
(``torch.func.stack_module_state``) and evaluated with ``torch.func.vmap`` over the
torch-geometric ``GATConv`` model of :mod:`elmlff.meta.direct`. Every training step then cuts
one batch (graph, rotation, labels) and feeds each model its own subset's base predictions. The
models stay independent:

* each model's loss depends on its own weights only, and the losses are summed, so every model
  gets exactly its own gradient;
* :class:`StackedAdam` is ``torch.optim.Adam``'s update with one learning rate per model, and
  :class:`StackedPlateau` is ``ReduceLROnPlateau`` per model;
* early stopping and the choice of checkpoint are per model (a stopped model is frozen and
  leaves the forward pass).

Where a group would be slower than its models one after another (few models, or large graphs,
on a CPU), :func:`fit_direct_models` trains them one by one through this same code.

One model trained alone goes through this same code (``S = 1``, no vmap), and batches,
rotations and each model's initial weights do not depend on which models share the group. So a
subset gives the same model whether it is trained in a group or on its own
(``tests/test_meta.py`` checks this).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch

from elmlff.errors import ElmlffError
from elmlff.log import log
from elmlff.meta.data import MetaBatch, MetaData
from elmlff.meta.params import TrainSettings


class StackedAdam:
    """``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8) over parameters whose first axis is the
    model, with one learning rate per model (``lr`` (S,); 0 freezes a model)."""

    def __init__(self, params: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        self.params, self.lr = params, lr
        self.b1, self.b2, self.eps, self.t = 0.9, 0.999, 1e-8, 0
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for k, p in self.params.items():
            if p.grad is None:
                continue
            m, v = self.m[k], self.v[k]
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            denom = (v.sqrt() / bc2**0.5).add_(self.eps)
            lr = self.lr.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr / bc1 * m / denom)


class StackedPlateau:
    """``ReduceLROnPlateau`` (mode min, relative threshold 1e-4) for each model's learning rate."""

    def __init__(self, lr: torch.Tensor, factor: float = 0.5, patience: int = 2) -> None:
        self.lr, self.factor, self.patience = lr, factor, patience
        self.best = np.full(len(lr), np.inf)
        self.bad = np.zeros(len(lr), dtype=int)

    def step(self, metric: np.ndarray) -> None:
        better = metric < self.best * (1 - 1e-4)
        self.best[better] = metric[better]
        self.bad[better] = 0
        self.bad[~better] += 1
        cut = self.bad > self.patience
        if cut.any():
            idx = torch.as_tensor(np.flatnonzero(cut))
            self.lr[idx] = self.lr[idx] * self.factor
            self.bad[cut] = 0


def rotation(rng: np.random.Generator) -> torch.Tensor:
    """A uniformly random proper rotation matrix (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.as_tensor(q)


def rotate(b: MetaBatch, rot: torch.Tensor) -> MetaBatch:
    """The batch with every Cartesian quantity rotated (x -> R x); a prebuilt graph (its edge
    features hold unit vectors) is dropped, not rotated."""
    r = rot.to(b.positions.device, b.positions.dtype).T
    out = copy.copy(b)
    out.extra = {k: v for k, v in b.extra.items() if k != "edges"}
    out.positions, out.shift, out.cell = b.positions @ r, b.shift @ r, b.cell @ r
    out.base_forces, out.ref_forces = b.base_forces @ r, b.ref_forces @ r
    return out


def fold_batches(
    idx: np.ndarray, fold_of: np.ndarray, size: int, rng: np.random.Generator, shuffle: bool
) -> list[np.ndarray]:
    """Batches of frames ``idx``, each within one fold (a fold's frames share the bases that left
    it out), shuffled with ``rng`` when ``shuffle``."""
    out = []
    for k in np.unique(fold_of[idx]):
        g = idx[fold_of[idx] == k]
        order = rng.permutation(g) if shuffle else g
        out += [order[i : i + size] for i in range(0, len(g), size)]
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


#: On a CPU a vmapped group beats training its models one after another (each through the
#: fused CSR path) on small graphs, however few the models, and loses on large ones. Measured
#: on 2 cores at 214172c, 32-frame batches, both paths warmed up and each timed twice in
#: alternating order, seconds per epoch per model: methane (~640 edges a batch) 3 models
#: 0.10-0.13 vmapped against 0.22-0.24 one after another, 28 models 0.07 against 0.18;
#: methanol/Cu (~47,000 edges a batch) 3 models 2.8 against 0.9. (An earlier measurement that
#: timed the vmapped group first, cold, over two epochs wrongly found it slower for a few
#: methane models.) On a GPU one model's step is launch-bound, so a group costs about what one
#: model does (bench/measured/subsets_cuda_h200.md).
VMAP_MAX_BATCH_EDGES = 4096


def vmap_pays(n_models: int, data: MetaData, settings: TrainSettings, device) -> bool:
    """Whether ``n_models`` models on ``data`` train faster as one vmapped group than one after
    another (see :data:`VMAP_MAX_BATCH_EDGES`)."""
    if n_models < 2:
        return False
    if torch.device(device).type == "cuda":
        return True
    batch_edges = len(data.graph) / max(len(data.frames), 1) * settings.batch_size
    return batch_edges <= VMAP_MAX_BATCH_EDGES


def fit_direct_models(
    models: Sequence[torch.nn.Module],
    subsets: Sequence[Sequence[str]],
    data: MetaData,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainSettings,
    fold_of: np.ndarray | None = None,
    log: Callable[[str], None] = log,
) -> list[dict]:
    """:func:`fit_direct_group` on all ``models`` at once where a vmapped group pays
    (:func:`vmap_pays`), otherwise on each model alone, one after another. Batches, rotations
    and initial weights do not depend on the group, so both give the same models (to float
    rounding: the two paths sum in different orders)."""
    device = next(models[0].parameters()).device if models else "cpu"
    if len(models) < 2 or vmap_pays(len(models), data, settings, device):
        return fit_direct_group(models, subsets, data, fit_idx, val_idx, settings, fold_of, log)
    log(f"{len(models)} models one after another (faster here than one vmapped group)")
    out = []
    for i, (model, c) in enumerate(zip(models, subsets, strict=True)):
        log(f"model {i + 1}/{len(models)}: bases {list(c)}")
        out += fit_direct_group([model], [c], data, fit_idx, val_idx, settings, fold_of, log)
    return out


def fit_direct_group(
    models: Sequence[torch.nn.Module],
    subsets: Sequence[Sequence[str]],
    data: MetaData,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainSettings,
    fold_of: np.ndarray | None = None,
    log: Callable[[str], None] = log,
) -> list[dict]:
    """Train Ensemble-direct ``models[s]`` on the bases ``subsets[s]`` (all of one size) from
    the stored predictions in ``data``, on the models' device; each ends at its own best
    validation state. Returns one ``meta.json`` fact dict per model."""
    from torch.func import functional_call, stack_module_state, vmap

    if not models or len(models) != len(subsets):
        raise ElmlffError(f"{len(models)} models for {len(subsets)} subsets", "pass one per subset")
    sizes = {len(s) for s in subsets} | {m.n_models for m in models}
    if len(sizes) != 1:
        raise ElmlffError(
            f"a group mixes subset sizes {sorted(sizes)}", "group subsets of one size k"
        )
    n = len(models)
    rng = np.random.default_rng(settings.seed)
    stats = models[0].stats
    dtype = next(models[0].parameters()).dtype
    device = next(models[0].parameters()).device
    fold_of = np.full(len(data.frames), -1) if fold_of is None else np.asarray(fold_of)
    sel = torch.as_tensor([data.model_index(list(s)) for s in subsets], device=device)  # (S, k)
    params, buffers = stack_module_state(list(models))
    skeleton = copy.deepcopy(models[0]).to("meta")

    def call(p, bu, be, bf, b):
        c = copy.copy(b)
        c.base_energy, c.base_forces = be, bf
        return functional_call(skeleton, (p, bu), (c,))

    def forward(b: MetaBatch, act: torch.Tensor) -> torch.Tensor:
        """Forces (S_act, A, 3) of the active models on batch ``b`` (every base of ``data``)."""
        s = sel[act]
        be = b.base_energy[:, s].permute(1, 0, 2)
        bf = b.base_forces[:, s].permute(1, 0, 2, 3)
        if len(act) == 1:
            a = int(act[0])
            p = {k: v[a] for k, v in params.items()}
            bu = {k: v[a] for k, v in buffers.items()}
            return call(p, bu, be[0], bf[0], b)[None]
        p = {k: v[act] for k, v in params.items()}
        bu = {k: v[act] for k, v in buffers.items()}
        return vmap(lambda p_, bu_, e_, f_: call(p_, bu_, e_, f_, b))(p, bu, be, bf)

    val_batches = [
        data.batch(i).to(device, dtype)
        for i in fold_batches(val_idx, fold_of, settings.batch_size, rng, False)
    ]
    for b in val_batches:  # built once; a group's in edge-list form, which vmap can batch
        b.extra["edges"] = models[0].edges(b, sparse=n == 1)

    @torch.no_grad()
    def validate(act: torch.Tensor) -> np.ndarray:
        """Val force RMSE of the models ``act`` (NaN for the others: stopped, not evaluated)."""
        sq = torch.zeros(len(act), dtype=torch.float64)
        count = 0
        for b in val_batches:
            f = forward(b, act)
            sq += ((f - b.ref_forces) ** 2).sum(dim=(1, 2)).double().cpu()
            count += b.ref_forces.numel()
        out = np.full(n, np.nan)
        out[act.numpy()] = np.sqrt(sq.numpy() / count)
        return out

    lr = torch.full((n,), settings.lr, dtype=torch.float64)
    opt = StackedAdam(params, lr)
    sched = StackedPlateau(lr, factor=0.5, patience=max(settings.patience // 3, 2))
    t0 = time.perf_counter()
    v0 = validate(torch.arange(n))
    best = v0.copy()
    best_state = {k: v.detach().clone() for k, v in params.items()}
    best_epoch, wait = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    active, epochs_run = np.ones(n, dtype=bool), np.zeros(n, dtype=int)
    diverged = np.zeros(n, dtype=int)  # the epoch a model's loss went non-finite (0: never)
    history: list[list[dict]] = [[] for _ in range(n)]
    log(
        f"epoch 0 (untrained: the plain mean of the bases) val force RMSE "
        f"{_spread(v0)} meV/Å over {n} model(s)"
    )
    for epoch in range(1, settings.max_epochs + 1):
        act = torch.as_tensor(np.flatnonzero(active))
        total, nb = np.zeros(n), 0
        for idx in fold_batches(fit_idx, fold_of, settings.batch_size, rng, True):
            b = data.batch(idx).to(device, dtype)
            if settings.augment_rotations:
                b = rotate(b, rotation(rng))
            b.extra["edges"] = models[0].edges(b, sparse=len(act) == 1)  # vmap: edge list
            f = forward(b, act)
            per_model = ((f - b.ref_forces) ** 2).mean(dim=(1, 2)) / stats.force_rms**2
            loss = settings.force_weight * per_model
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            total[act.numpy()] += loss.detach().double().cpu().numpy()
            nb += 1
        v = validate(act)
        bad = active & ~(np.isfinite(total) & np.isfinite(v))
        if bad.any():  # stopped at once, kept at their best val state
            log(
                f"epoch {epoch}: {bad.sum()} model(s) DIVERGED (non-finite training loss or val "
                "error); stopped, each stays at its best val state"
            )
            diverged[bad], active = epoch, active & ~bad
            lr[torch.as_tensor(np.flatnonzero(bad))] = 0.0
            v = np.where(bad, np.nan, v)
        sched.step(np.where(active, v, np.inf))  # a stopped model's rate is 0 already
        better = active & (np.nan_to_num(v, nan=np.inf) < best)
        if better.any():
            rows = torch.as_tensor(np.flatnonzero(better))
            for k, p in params.items():
                best_state[k][rows] = p.detach()[rows]
        best[better], best_epoch[better], wait[better] = v[better], epoch, 0
        wait[active & ~better] += 1
        for s in np.flatnonzero(active):
            history[s].append(
                {"epoch": epoch, "train_loss": total[s] / max(nb, 1), "val_force_rmse": float(v[s])}
            )
        epochs_run[active] = epoch
        elapsed = time.perf_counter() - t0
        if n == 1:
            log(
                f"epoch {epoch}/{settings.max_epochs} loss {total[0] / max(nb, 1):.4f} val force "
                f"RMSE {1e3 * v[0]:.2f} meV/Å{' *' if better[0] else ''} ({elapsed:.0f} s)"
            )
        else:
            log(
                f"epoch {epoch}/{settings.max_epochs}: {active.sum()}/{n} models training, val "
                f"force RMSE {_spread(v[active])} meV/Å, {better.sum()} improved ({elapsed:.0f} s)"
            )
        stop = active & (wait >= settings.patience)
        if stop.any():
            log(f"early stop of {stop.sum()} model(s): no val improvement for {settings.patience}")
            active &= ~stop
            lr[torch.as_tensor(np.flatnonzero(stop))] = 0.0  # frozen from now on
        if not active.any():
            break
    seconds = time.perf_counter() - t0
    out = []
    for s, model in enumerate(models):
        state = {k: v[s] for k, v in best_state.items()}
        state.update({k: v[s] for k, v in buffers.items()})
        model.load_state_dict(state)
        model.eval()
        out.append(
            {
                "settings": asdict(settings),
                "bases_in_training": "stored predictions",
                "best_epoch": int(best_epoch[s]),
                "best_val_force_rmse": float(best[s]),
                "untrained_val_force_rmse": float(v0[s]),
                "epochs_run": int(epochs_run[s]),
                "diverged_epoch": int(diverged[s]) or None,
                "train_seconds": seconds / n,
                "trained_with": n,
                "group_train_seconds": seconds,
                "history": history[s],
            }
        )
    return out


def _spread(v: np.ndarray) -> str:
    """'x' for one value, 'median x [min, max]' for several (meV)."""
    v = 1e3 * np.asarray(v)
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"median {np.median(v):.2f} [{v.min():.2f}, {v.max():.2f}]"
