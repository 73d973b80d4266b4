"""Training loops of the meta-models: Adam, early stopping and checkpoint choice on the
validation frames only (never the test frames), progress per epoch on stdout (the rule's log).

* Ensemble-direct learns from the stored base predictions alone (the bases never run), through
  :func:`elmlff.meta.group.fit_direct_group` (a group of one model).
* Ensemble-conserv with base forces as inputs (Eq. 6) runs the live bases so that its forces
  include the Hessian-vector products through them: on small frames through their energies,
  forces and force Jacobians at the frames, computed once (:class:`~elmlff.meta.live.LocalBases`:
  the same loss and gradients, each step runs θ alone), otherwise through the bases at every
  step. The energy-only variant (Eq. 7) needs only
  E_m and F_m = -dE_m/dx at the data points, so it trains from the store exactly: E_m(x) is
  replaced by its first-order expansion E_m0 - F_m0·(x - x0), whose value and gradient at x0
  are the base's own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch

from elmlff import bases as B
from elmlff.errors import ElmlffError
from elmlff.log import log
from elmlff.meta.data import MetaBatch, MetaData
from elmlff.meta.group import fit_direct_group, fold_batches
from elmlff.meta.live import LocalBases, base_outputs, expand_energy
from elmlff.meta.params import TrainSettings

#: atoms × rows of the force Jacobians computed in one vmapped backward pass (methane's 5 atoms
#: give chunks of 218 frames, aspirin's 21 atoms chunks of 12)
JACOBIAN_CHUNK_ROWS = 16384


class ConservStep:
    """Energy and forces of θ on a batch; the bases live (``pots``), from their cached
    Jacobians (``local``), or, without either, expanded to first order around the batch's
    positions from the stored predictions (Eq. 7)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(
        self,
        b: MetaBatch,
        create_graph: bool,
        pots: Sequence[B.Potential] | None = None,
        local: LocalBases | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = b.positions.clone().requires_grad_(True)
        if local is not None:
            em, fm = local.outputs(b, pos)
        elif pots is not None:
            em, fm = base_outputs(pots, pos, b.numbers, b.n_atoms, b.cell, b.pbc, True)
        else:
            em = expand_energy(b.base_energy, b.base_forces, pos - b.positions, b.batch)
            fm = b.base_forces
        e = self.model(b, pos, em, fm)
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=create_graph)
        return e, -g


def fit(
    model,
    data: MetaData,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    models: Sequence[str],
    settings: TrainSettings,
    live_fit: Mapping[int, Sequence[B.Potential]] | None = None,
    live_val: Sequence[B.Potential] | None = None,
    fold_of: np.ndarray | None = None,
    log: Callable[[str], None] = log,
) -> dict:
    """Train ``model`` on frames ``fit_idx``; keep the state with the lowest validation force
    RMSE. ``live_fit`` maps a fold (-1 without K-fold) to the bases that never saw its frames
    (None: Ensemble-conserv learns from the stored base predictions); ``fold_of`` gives each
    store frame's fold. Returns facts for ``meta.json``."""
    if model.kind == "direct":
        return fit_direct_group(
            [model], [list(models)], data, fit_idx, val_idx, settings, fold_of, log
        )[0]
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    s = model.stats
    w = next(model.parameters())
    dtype, device = w.dtype, w.device  # the model's; live bases were loaded on the same
    fold_of = np.full(len(data.frames), -1) if fold_of is None else np.asarray(fold_of)
    # the bases run live exactly when the job loaded them (MetaSpec.live_in_training)
    live = live_fit is not None
    if live and live_val is None:
        raise ElmlffError("Ensemble-conserv needs the live bases for validation", "pass them")
    if not live and model.params["use_forces"]:
        raise ElmlffError(
            "Ensemble-conserv with base forces as inputs cannot train from the store (its "
            "forces need Hessian-vector products through the bases)",
            "pass the live bases (MetaSpec.live_in_training decides)",
        )
    step = ConservStep(model)
    fr, m = data.frames.subset(fit_idx), data.model_index(list(models))
    blend = model.blend.detach().cpu().numpy() @ data.base_energy[m][:, fit_idx]
    model.init_atom_shift(fr.numbers, fr.n_atoms, fr.energy - blend)

    def batches(idx, shuffle: bool):
        return fold_batches(idx, fold_of, settings.batch_size, rng, shuffle)

    local = None  # the bases' Jacobians at the fit and val frames, where they pay
    n_atoms = data.frames.n_atoms[np.concatenate([fit_idx, val_idx])]
    if live and settings.bases == "auto" and LocalBases.pays(live_val, n_atoms):
        local = local_bases(
            data, fit_idx, val_idx, models, live_fit, live_val, fold_of, device, dtype, log
        )

    def run(b: MetaBatch, train: bool, pots=None):
        """(predicted forces, reference forces, energy error per atom)."""
        b = b.to(device, dtype)
        e, f = step(b, create_graph=train, pots=pots if live else None, local=local)
        return f, b.ref_forces, (e - b.ref_energy) / b.n_atoms

    def loss_of(f, ref, e_err):
        return (
            settings.force_weight * ((f - ref) ** 2).mean() / s.force_rms**2
            + settings.energy_weight * (e_err**2).mean() / s.energy_sigma**2
        )

    val_batches = [data.batch(idx, list(models)) for idx in batches(val_idx, False)]

    def validate() -> float:
        sq, n = 0.0, 0
        model.eval()
        for b in val_batches:  # built once: the same frames every epoch
            f, ref, _ = run(b, False, live_val)
            sq += float(((f.detach() - ref) ** 2).sum())
            n += ref.numel()
        model.train()
        return float(np.sqrt(sq / n))

    def loss(idx: np.ndarray) -> torch.Tensor:
        pots = live_fit.get(int(fold_of[idx[0]])) if live_fit else None
        return loss_of(*run(data.batch(idx, list(models)), True, pots))

    def train_epoch(opt: torch.optim.Optimizer) -> float:
        return optimize(opt, (loss(idx) for idx in batches(fit_idx, True)))

    facts = run_epochs(model, settings, train_epoch, validate, log, "the plain mean of the bases")
    return {
        "settings": asdict(settings),
        "bases_in_training": "live" if live else "stored predictions",
        "base_jacobians": None if not live else "cached" if local else "every step",
        **facts,
    }


def local_bases(
    data: MetaData,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    models: Sequence[str],
    live_fit: Mapping[int, Sequence[B.Potential]],
    live_val: Sequence[B.Potential],
    fold_of: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    log: Callable[[str], None] = log,
) -> LocalBases:
    """:class:`LocalBases` at the fit frames (each through the bases that never saw its fold)
    and the val frames (the inference bases), in chunks of at most
    :data:`JACOBIAN_CHUNK_ROWS` atoms × rows (the vmapped backward pass's memory)."""
    t0 = time.perf_counter()
    rows = 3 * int(data.frames.n_atoms[np.concatenate([fit_idx, val_idx])].max())
    local = LocalBases(rows)
    chunk = max(1, JACOBIAN_CHUNK_ROWS // (rows * rows // 3))  # frames
    rng = np.random.default_rng(0)  # not drawn from: no shuffling
    for idx, val in [(fit_idx, False), (val_idx, True)]:
        for part in fold_batches(idx, fold_of, chunk, rng, False):
            pots = live_val if val else live_fit[int(fold_of[part[0]])]
            local.add(part, pots, data.batch(part, list(models)).to(device, dtype))
    log(
        f"bases: energies, forces and force Jacobians of {len(models)} base(s) at "
        f"{len(fit_idx) + len(val_idx)} fit+val frames computed once "
        f"({time.perf_counter() - t0:.0f} s); each step runs θ alone"
    )
    return local


def optimize(opt: torch.optim.Optimizer, losses: Iterable[torch.Tensor]) -> float:
    """One epoch: a step of ``opt`` on each loss of ``losses`` (a generator: each batch's loss
    is computed after the previous step); their mean."""
    total, nb = 0.0, 0
    for loss in losses:
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, nb = total + loss.item(), nb + 1
    return total / max(nb, 1)


def run_epochs(
    model: torch.nn.Module,
    settings: TrainSettings,
    train_epoch: Callable[[torch.optim.Optimizer], float],
    validate: Callable[[], float],
    log: Callable[[str], None],
    untrained: str,
    note: str = "",
) -> dict:
    """The epoch loop of a single meta-model: Adam at ``settings.lr``, the rate halved on a val
    plateau, early stopping after ``settings.patience`` epochs without a lower val force RMSE
    (``validate``), and the model left at its best state. ``train_epoch(opt)`` runs one epoch
    and returns its mean loss; ``untrained`` says what the model is before training."""
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(settings.patience // 3, 2)
    )
    t0 = time.perf_counter()
    v0 = validate()
    log(f"epoch 0 (untrained: {untrained}) val force RMSE {1e3 * v0:.2f} meV/Å{note}")
    best, best_state, best_epoch, wait, history = v0, copy.deepcopy(model.state_dict()), 0, 0, []
    diverged = None
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        loss = train_epoch(opt)
        v = validate()
        if not (np.isfinite(loss) and np.isfinite(v)):
            diverged = epoch
            log(
                f"epoch {epoch}/{settings.max_epochs}: DIVERGED (non-finite training loss or val "
                f"error); stopped, the model stays at its best val state (epoch {best_epoch})"
            )
            break
        sched.step(v)
        history.append({"epoch": epoch, "train_loss": loss, "val_force_rmse": v})
        better = v < best
        if better:
            best, best_state, best_epoch, wait = v, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            wait += 1
        log(
            f"epoch {epoch}/{settings.max_epochs} loss {loss:.4f} val force RMSE "
            f"{1e3 * v:.2f} meV/Å{note}{' *' if better else ''} ({time.perf_counter() - t0:.0f} s)"
        )
        if wait >= settings.patience:
            log(f"early stop: no val improvement for {settings.patience} epochs")
            break
    model.load_state_dict(best_state)
    model.eval()
    return {
        "best_epoch": best_epoch,
        "best_val_force_rmse": best,
        "untrained_val_force_rmse": v0,
        "epochs_run": len(history),
        "diverged_epoch": diverged,
        "train_seconds": time.perf_counter() - t0,
        "history": history,
    }
