"""One meta-training job: a meta-model (:class:`~elmlff.meta.params.MetaSpec`) trained on one
or many subsets of the bases, with everything they share prepared once.

:func:`prepare` reads the store and split, picks the frames the meta learns from, runs the leak
guards, builds the graphs and scales and loads the live bases where the spec needs them;
:func:`train` then trains one model per subset (Ensemble-direct's subsets together in one
vmapped group where that pays, Ensemble-conserv's one after another through the shared live
bases). The ``train_meta`` stage is a job with one subset, the subset study a job per size k,
so both give the same model for the same subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmlff import bases as B
from elmlff import store
from elmlff import subsets as S
from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.guards import check_meta_split
from elmlff.log import log
from elmlff.meta.data import MetaData, Stats
from elmlff.meta.params import MetaSpec


def meta_frames(split: Split, spec: MetaSpec) -> tuple[np.ndarray, np.ndarray]:
    """(frames a meta-model learns from, frames it early-stops and picks its checkpoint on).

    * ``out_of_sample``: the meta split (or out-of-fold predictions), early stopping on val;
    * ``in_sample`` (ablation): as many of the bases' own training frames as the meta split
      has (seeded draw), early stopping on val, so that only where the predictions come from
      differs;
    * ``in_sample_reference`` (ablation): the EL-MLFFs reference code's shortcut - every
      training frame of the bases but a seeded tenth, on which (in-sample too) it early-stops.
    """
    oos, val = split.meta_fit(), split.roles["val"]
    if spec.out_of_sample:
        return oos, val
    if split.kfold:
        raise ElmlffError(
            f"meta '{spec.name}': the in-sample ablations need one full fit per base (kfold 0)",
            "drop it from `run_metas` or set the data set's `split.kfold: 0`",
        )
    train = split.roles["train"]
    rng = np.random.default_rng(split.seed)
    if spec.fit_on == "in_sample":
        return np.sort(rng.choice(train, size=min(len(train), len(oos)), replace=False)), val
    perm = rng.permutation(train)
    n_stop = max(1, len(train) // 10)
    return np.sort(perm[n_stop:]), np.sort(perm[:n_stop])


@dataclass
class MetaJob:
    """What every subset of one job shares."""

    spec: MetaSpec
    split: Split
    data: MetaData  # store frames, the bases of every subset, graphs
    fit_idx: np.ndarray
    val_idx: np.ndarray
    subsets: list[list[str]]  # each subset's bases, in ensemble order
    names: list[str]  # each subset's name (elmlff.subsets)
    stats: Stats
    live_fit: dict[int, list[B.Potential]] | None = None  # fold (-1: no K-fold) -> bases
    live_val: list[B.Potential] | None = None  # the bases at inference (K-fold: mean of fits)
    fold_of: np.ndarray | None = None  # each store frame's fold (K-fold, live bases only)

    @property
    def used(self) -> list[str]:
        return list(self.data.models)

    def live(self, pots: Sequence[B.Potential], subset: Sequence[str]) -> list[B.Potential]:
        """The live bases of ``subset`` from the job's loaded bases ``pots``."""
        return [pots[self.used.index(m)] for m in subset]


def prepare(
    spec: MetaSpec,
    store_path: Path,
    split_path: Path,
    subsets: Sequence[str],
    ensemble: Sequence[str],
    basedirs: Mapping[str, Mapping[str, Path]],
    device: str = "cpu",
) -> MetaJob:
    """Everything the subsets ``subsets`` (names or ``all``) of ``ensemble`` share; live bases
    are loaded on ``device``."""
    from elmlff.meta.live import load_bases, load_fit

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    chosen = [S.resolve(s, ensemble) for s in subsets]
    sizes = sorted({len(m) for m in chosen})
    if len(sizes) != 1:
        raise ElmlffError(f"subsets of sizes {sizes} in one job", "pass subsets of one size k")
    used = [m for m in ensemble if any(m in c for c in chosen)]
    fit_idx, val_idx = meta_frames(split, spec)
    live = spec.live_in_training
    check_meta_split(ds, split, used, fit_idx, spec.fit_on, basedirs if live else None)
    data = MetaData.from_store(ds, spec.cutoff, used)
    job = MetaJob(
        spec,
        split,
        data,
        fit_idx,
        val_idx,
        chosen,
        [S.name(m, ensemble) for m in chosen],
        Stats.fit(data.frames.subset(fit_idx)),
    )
    offsets = store.energy_offsets(ds)  # live bases agree with the store's energies
    if live:
        if split.kfold:
            job.live_fit = {
                k: load_fit(basedirs, used, f"cv{k}", device, offsets) for k in range(split.kfold)
            }
            job.fold_of = split.fold_of(len(data.frames))
        else:
            job.live_fit = {-1: load_fit(basedirs, used, "full", device, offsets)}
    if spec.live_at_inference and basedirs:  # for validation, or for predicting afterwards
        if job.live_fit is not None and not split.kfold:  # the same full fits: loaded once
            job.live_val = job.live_fit[-1]
        else:
            job.live_val = load_bases(basedirs, used, device, offsets)
    log(
        f"meta '{spec.name}' ({spec.kind}), k={sizes[0]}: {len(chosen)} subset(s) of {used}; "
        f"{len(fit_idx)} {spec.fit_on} training frames, {len(val_idx)} val frames, "
        f"{len(data.graph)} edges; bases {'live' if live else 'from the store'}"
    )
    return job


def train(job: MetaJob, device: str = "cpu") -> tuple[list, list[dict]]:
    """(models, training facts) of every subset of ``job``: fresh models seeded by the subset's
    name, trained on ``device`` (the live bases' device: :func:`prepare`'s) with early stopping
    and the checkpoint chosen on val; returned on the CPU."""
    from elmlff import meta
    from elmlff.meta.group import fit_direct_models
    from elmlff.meta.train import fit

    spec, settings = job.spec, job.spec.settings
    models = [
        meta.build(
            spec.kind,
            len(c),
            job.data.frames.species,
            job.stats,
            spec.params,
            seed=S.seed(settings.seed, n),
        )
        for c, n in zip(job.subsets, job.names, strict=True)
    ]
    if spec.kind == "direct":
        group = [m.to(device) for m in models]
        infos = fit_direct_models(group, job.subsets, job.data, job.fit_idx, job.val_idx, settings)
        return [m.cpu() for m in group], infos
    infos = []
    for i, (model, c) in enumerate(zip(models, job.subsets, strict=True)):
        if len(models) > 1:
            log(f"subset {i + 1}/{len(models)}: {job.names[i]}")
        live_fit = live_val = None
        if job.live_fit is not None and job.live_val is not None:  # trains through the bases
            live_fit = {k: job.live(v, c) for k, v in job.live_fit.items()}
            live_val = job.live(job.live_val, c)
        model.to(device)
        infos.append(
            fit(
                model,
                job.data,
                job.fit_idx,
                job.val_idx,
                c,
                settings,
                live_fit,
                live_val,
                job.fold_of,
            )
        )
        model.cpu()
    return models, infos
