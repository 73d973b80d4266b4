"""One epoch loop for the families trained here in plain torch (DimeNet, the direct-force
base): a learning-rate plateau schedule and early stopping on the validation loss, the state of
the lowest validation loss kept, one log line and one ``history`` entry per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EpochFit:
    """What :func:`fit_epochs` leaves: the history, the kept state and its epoch and loss."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    best_loss: float = float("inf")
    seconds: float = 0.0


def fit_epochs(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    train_epoch: Callable[[int], float],
    validate: Callable[[], Mapping[str, float]],
    max_epochs: int,
    patience: int,
    tag: str,
    note: str = "",
) -> EpochFit:
    """Run ``train_epoch(epoch)`` (returns the mean training loss) and ``validate()`` (returns
    ``loss``, ``force_mae`` in eV/Å and any other ``val_*`` values) for up to ``max_epochs``;
    ReduceLROnPlateau halves the rate after ``max(2, patience // 3)`` epochs without a better
    val loss and training stops after ``patience``. A NaN val loss never becomes the best."""
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(2, patience // 3)
    )
    fit, t0 = EpochFit(), time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        train_loss = train_epoch(epoch)
        model.eval()
        v = dict(validate())
        sched.step(v["loss"])
        fit.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"val_{k}": x for k, x in v.items()},
                "lr": opt.param_groups[0]["lr"],
            }
        )
        print(
            f"{tag} epoch {epoch}/{max_epochs} train_loss={train_loss:.5f} "
            f"val_loss={v['loss']:.5f} val_force_MAE={v['force_mae']:.4f} eV/Å{note} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        if v["loss"] < fit.best_loss:
            state = {k: x.detach().cpu().clone() for k, x in model.state_dict().items()}
            fit.best_state, fit.best_epoch, fit.best_loss = state, epoch, v["loss"]
        if epoch - fit.best_epoch >= patience:
            print(f"{tag} early stop: no better val loss in {patience} epochs", flush=True)
            break
    fit.seconds = time.perf_counter() - t0
    return fit


def epoch_info(fit: EpochFit) -> dict[str, Any]:
    """The base.json facts of an :class:`EpochFit`."""
    return {
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best_loss,
        "history": fit.history,
        "train_seconds": fit.seconds,
    }
