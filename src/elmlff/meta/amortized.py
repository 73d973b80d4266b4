"""The subset study's amortized method: one Ensemble-direct model (``amortized=True``) trained
over random subsets of the bases, then evaluated on every chosen subset.

Each training frame gets its own subset: a size k uniform on 1..M, then a subset uniform among
those of size k (so small and large subsets are seen as often, not in proportion to their
number). The model sees which bases are present (:class:`~elmlff.meta.direct.EnsembleDirect`);
early stopping and the checkpoint are chosen on the val frames, each with a fixed random subset
drawn the same way, so the val error estimates the mean over k. It is a different estimator
from the paper's one model per subset: the campaign calibrates it against dedicated models of a
stratified sample of subsets (:func:`elmlff.study.calibration`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import torch

from elmlff import subsets as S
from elmlff.log import log
from elmlff.meta.data import MetaBatch, MetaData
from elmlff.meta.group import fold_batches, rotate, rotation
from elmlff.meta.params import TrainSettings
from elmlff.meta.train import optimize, run_epochs


def random_masks(n_frames: int, n_models: int, rng: np.random.Generator) -> np.ndarray:
    """(n_frames, n_models) bool: per frame a subset of size k ~ U{1..M}, then uniform among
    the subsets of that size (the first k of a random permutation)."""
    k = rng.integers(1, n_models + 1, size=n_frames)
    rank = np.argsort(rng.random((n_frames, n_models)), axis=1).argsort(axis=1)
    return rank < k[:, None]


def _with_mask(b: MetaBatch, mask: np.ndarray | torch.Tensor) -> MetaBatch:
    out = copy.copy(b)
    out.extra = {**b.extra, "mask": torch.as_tensor(mask, dtype=torch.bool)}
    return out


def fit_amortized(
    model: torch.nn.Module,
    data: MetaData,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainSettings,
    fold_of: np.ndarray | None = None,
    log: Callable[[str], None] = log,
) -> dict:
    """Train the amortized ``model`` (its inputs: every base of ``data``) on frames ``fit_idx``
    with a random subset per frame; keep the state of lowest val force RMSE. Returns facts for
    the study's ``info.json``."""
    rng = np.random.default_rng(settings.seed)
    val_rng = np.random.default_rng(settings.seed + 1)
    stats, m = model.stats, model.n_models
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    fold_of = np.full(len(data.frames), -1) if fold_of is None else np.asarray(fold_of)
    val_batches = [
        _with_mask(data.batch(i).to(device, dtype), random_masks(len(i), m, val_rng))
        for i in fold_batches(val_idx, fold_of, settings.batch_size, rng, False)
    ]
    for b in val_batches:  # built once (with their edge logits) for no-autograd validation
        b.extra["edges"] = model.edges(b, sparse=True)

    @torch.no_grad()
    def validate() -> float:
        model.eval()
        sq, count = 0.0, 0
        for b in val_batches:
            sq += float(((model(b) - b.ref_forces) ** 2).sum())
            count += b.ref_forces.numel()
        model.train()
        return float(np.sqrt(sq / count))

    def loss(idx: np.ndarray) -> torch.Tensor:
        b = data.batch(idx).to(device, dtype)
        if settings.augment_rotations:
            b = rotate(b, rotation(rng))
        b = _with_mask(b, random_masks(len(idx), m, rng))
        return settings.force_weight * ((model(b) - b.ref_forces) ** 2).mean() / stats.force_rms**2

    def train_epoch(opt: torch.optim.Optimizer) -> float:
        batches = fold_batches(fit_idx, fold_of, settings.batch_size, rng, True)
        return optimize(opt, (loss(idx) for idx in batches))

    facts = run_epochs(
        model,
        settings,
        train_epoch,
        validate,
        log,
        "the plain mean of the present bases",
        " over random subsets",
    )
    return {
        "settings": asdict(settings),
        "bases_in_training": "stored predictions",
        "subsets_in_training": "random per frame: k ~ U{1..M}, then uniform among size k",
        **facts,
    }


@torch.no_grad()
def predict_subsets(
    model: torch.nn.Module,
    data: MetaData,
    idx: np.ndarray,
    subsets: Sequence[Sequence[str]],
    batch_size: int = 1024,
) -> np.ndarray:
    """(S, A, 3) forces of frames ``idx`` for every subset (the graphs, their edge features,
    self-loops and edge logits are built once for all subsets). On a CPU with several torch
    threads, the subsets are shared among that many worker threads of one torch thread each:
    a forward pass's gathers and segment reductions use a second core poorly, whole subsets
    side by side use it well (the same numbers: each subset's pass is unchanged)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    batches = [
        data.batch(idx[s : s + batch_size]).to(device, dtype)
        for s in range(0, len(idx), batch_size)
    ]
    for b in batches:
        b.extra["edges"] = model.edges(b, sparse=True)
    n_atoms = int(data.frames.n_atoms[idx].sum())
    out = np.zeros((len(subsets), n_atoms, 3), dtype=np.float32)

    @torch.no_grad()  # grad mode is per thread
    def one(i: int) -> None:
        mask = S.mask(subsets[i], data.models)
        out[i] = np.concatenate([model(_with_mask(b, mask)).cpu().numpy() for b in batches])

    if len(subsets):
        one(0)  # alone: it fills the graphs' and layers' caches, which the workers then read
    threads = torch.get_num_threads()
    workers = min(threads, len(subsets) - 1) if device.type == "cpu" else 1
    if workers <= 1:
        for i in range(1, len(subsets)):
            one(i)
        return out
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(1, len(subsets))))
    finally:
        torch.set_num_threads(threads)
    return out
