"""The workflow's stages as plain functions (data, bases, store, evaluation, meta-models);
``elmlff.cli`` exposes each to a Snakemake rule. Helpers live with what they serve: leak guards
in :mod:`elmlff.guards`, the store's blocks in :mod:`elmlff.store`, baselines in
:mod:`elmlff.baselines`, meta-training jobs in :mod:`elmlff.meta.jobs`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff import bases as B
from elmlff import store
from elmlff.baselines import fit_baselines
from elmlff.data import Frames, Split, make_split, read
from elmlff.data.split import ROLES
from elmlff.errors import ElmlffError
from elmlff.guards import check_no_leak
from elmlff.io import atomic_path, atomic_write_text
from elmlff.log import log
from elmlff.meta.params import MetaSpec
from elmlff.metrics import UNITS, metrics, per_frame


# -- data ---------------------------------------------------------------------------------
def load_dataset(name: str, spec: Mapping[str, Any]) -> tuple[Frames, np.ndarray]:
    """All frames of a data set's parts, and each frame's part role (pool or a fixed role)."""
    root = Path(spec["path"])
    if not root.exists():
        raise ElmlffError(
            f"data set '{name}': path {root} not found",
            f"fix `datasets.{name}.path` in the config (relative to the "
            "directory snakemake runs in)",
        )
    parts, roles = [], []
    for part, role in spec["parts"].items():
        path = root if part == "." else root / part
        if not path.exists():
            raise ElmlffError(
                f"data set '{name}': part {path} not found",
                f"fix `datasets.{name}.parts` (sub-folders or files under {root})",
            )
        f = read(
            spec["format"],
            path,
            energy_unit=spec["units"]["energy"],
            length_unit=spec["units"]["length"],
            pbc=spec.get("pbc", "auto"),
            part=part,
        )
        log(f"read {len(f)} frames from {path} ({spec['format']}, role {role})")
        parts.append(f)
        roles += [role] * len(f)
    return Frames.concatenate(parts, name=name), np.array(roles)


def prepare(
    name: str,
    spec: Mapping[str, Any],
    store_out: Path,
    split_out: Path,
    cfg_for_hash: Mapping[str, Any] | None = None,
) -> None:
    """Read a data set, draw the split, and write the reference store and split manifest
    (only the frames that have a role are kept; indices refer to the store's frame axis)."""
    frames, part_roles = load_dataset(name, spec)
    full = make_split(part_roles, spec.get("split", {}))
    keep = full.all_frames()  # sorted: a frame's new index is its rank among the kept ones
    split = Split(
        {r: np.searchsorted(keep, v) for r, v in full.roles.items()},
        [np.searchsorted(keep, f) for f in full.folds],
        full.seed,
        full.method,
        extra={
            "dataset": name,
            "n_frames_read": len(frames),
            "source": [
                [str(p), int(i)]
                for p, i in zip(frames.source_part[keep], frames.source_index[keep], strict=True)
            ],
        },
    )
    ref = frames.subset(keep)
    attrs = {
        "dataset": name,
        "source_path": str(spec["path"]),
        "source_format": spec["format"],
        "source_units": json.dumps(spec["units"]),
        **store.provenance(cfg_for_hash or spec),
    }
    ds = store.reference_dataset(ref, split, attrs)
    store.write(ds, store_out)
    split.save(split_out)
    sizes = ", ".join(f"{r} {len(v)}" for r, v in split.roles.items())
    log(
        f"{name}: kept {len(ref)} of {len(frames)} frames ({sizes}; K-fold {split.kfold}); "
        f"elements Z={ref.species}, pbc={bool(ref.pbc.any())}"
    )


# -- bases --------------------------------------------------------------------------------
def train_base(
    spec: B.BaseSpec, store_path: Path, split_path: Path, fit: str, outdir: Path, dataset: str = ""
) -> None:
    """Train one base fit on its training frames; validation frames only for early stopping."""
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ds)
    tr, va = split.fit_train(fit), split.roles["val"]
    log(
        f"training base '{spec.name}' ({spec.family}) fit {fit}: {len(tr)} train frames, "
        f"{len(va)} val frames"
    )
    family = B.get_family(spec.family)
    with atomic_path(outdir) as tmp:
        info = family.train(spec, frames.subset(tr), frames.subset(va), tmp)
        B.write_info(
            tmp,
            {
                "name": spec.name,
                "family": spec.family,
                "fit": fit,
                "dataset": dataset,
                "trained_on": tr.tolist(),
                "validated_on": va.tolist(),
                **info,
            },
        )
    log(f"base '{spec.name}' fit {fit} done in {info.get('train_seconds', 0):.0f} s")


def predict_base(
    basedir: Path,
    store_path: Path,
    split_path: Path,
    fit: str,
    out: Path,
    device: str = "cpu",
    batch_size: int = 128,
    hvp_seed: int | None = None,
) -> None:
    """Predict every frame this fit must cover (all frames; or held-out fold + val + test).

    With ``hvp_seed``, also the Hessian-vector product along the seeded direction of
    :func:`elmlff.bases.hvp_directions` (the same directions for every base)."""
    pot = B.load(basedir, device=device)
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    idx = split.fit_predict(fit)
    frames = store.frames_from_dataset(ds, idx)
    t0 = time.perf_counter()
    e, f = pot.predict(frames, batch_size=batch_size)
    sec = time.perf_counter() - t0
    if e.shape != (len(frames),) or f.shape != frames.forces.shape:
        raise ElmlffError(
            f"base '{pot.name}' returned energy {e.shape} / forces {f.shape} for "
            f"{len(frames)} frames with {len(frames.forces)} atoms",
            "fix the family's predict()",
        )
    extra = {}
    if hvp_seed is not None:
        ref = store.frames_from_dataset(ds)
        v = B.hvp_directions(ref.n_atoms, hvp_seed)[ref.atom_index(idx)]
        hv = np.zeros_like(f)
        for s in range(0, len(frames), batch_size):
            b = np.arange(s, min(s + batch_size, len(frames)))
            a = frames.atom_index(b)
            hv[a] = B.hvp(pot, frames.subset(b), v[a])
        extra = {"hvp": hv, "hvp_seed": hvp_seed}
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, frames=idx, energy=e, forces=f, seconds=sec, **extra)
    log(
        f"base '{pot.name}' fit {fit}: predicted {len(frames)} frames in {sec:.2f} s "
        f"({1e3 * sec / len(frames):.2f} ms/structure)"
    )


def merge(
    ref_path: Path,
    split_path: Path,
    predictions: Mapping[str, Mapping[str, Path]],
    basedirs: Mapping[str, Mapping[str, Path]],
    out: Path,
    cfg_for_hash: Mapping[str, Any] | None = None,
) -> None:
    """Build ``predictions.zarr``: the reference plus every base's energies and forces.

    Without K-fold, one fit per base predicts every frame. With K-fold, each frame of train +
    meta takes the prediction of the fit that held it out; val and test take the mean of the
    K fits. ``base_in_sample`` records where the predicting base trained on the frame.
    """
    ref = store.open_store(ref_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ref)
    nf, na = len(frames), len(frames.forces)
    models = list(predictions)
    files = {(m, fit): dict(np.load(p)) for m in models for fit, p in predictions[m].items()}
    # per-atom outputs: forces, and Hessian-vector products where every base has them
    atom_keys = ["forces"] + (["hvp"] if all("hvp" in z for z in files.values()) else [])
    E = np.full((len(models), nf), np.nan)
    P = {k: np.full((len(models), na, 3), np.nan) for k in atom_keys}
    S = np.zeros((len(models), nf), dtype=bool)
    info: dict[str, Any] = {}
    shared = np.concatenate([split.roles["val"], split.roles["test"]])
    shared_atoms = frames.atom_index(shared)
    for m, model in enumerate(models):
        sum_e = np.zeros(len(shared))
        sum_p = {k: np.zeros((len(shared_atoms), 3)) for k in atom_keys}
        per_fit = {}
        for fit in predictions[model]:
            z = files[model, fit]
            idx, atoms = z["frames"], frames.atom_index(z["frames"])
            e_fit = np.full(nf, np.nan)
            e_fit[idx] = z["energy"]
            p_fit = {k: np.full((na, 3), np.nan) for k in atom_keys}
            for k in atom_keys:
                p_fit[k][atoms] = z[k]
            per_fit[fit] = float(z["seconds"]) / max(len(idx), 1)
            trained = np.zeros(nf, dtype=bool)
            trained[np.asarray(B.read_info(basedirs[model][fit])["trained_on"], np.int64)] = True
            if fit == "full":
                E[m], S[m] = e_fit, trained
                for k in atom_keys:
                    P[k][m] = p_fit[k]
                continue
            own = split.folds[int(fit[2:])]
            if trained[own].any():
                raise ElmlffError(
                    f"base '{model}' fit {fit} trained on frames of its own fold",
                    "rebuild the split and retrain",
                )
            own_atoms = frames.atom_index(own)
            E[m, own] = e_fit[own]
            sum_e += e_fit[shared]
            for k in atom_keys:
                P[k][m, own_atoms] = p_fit[k][own_atoms]
                sum_p[k] += p_fit[k][shared_atoms]
        if split.kfold:  # val and test: the mean of the K fits
            E[m, shared] = sum_e / split.kfold
            for k in atom_keys:
                P[k][m, shared_atoms] = sum_p[k] / split.kfold
        missing = np.flatnonzero(np.isnan(E[m]))
        if len(missing):
            raise ElmlffError(
                f"base '{model}' has no prediction for {len(missing)} frames "
                f"(first {missing[:5].tolist()})",
                "rerun its predict rule(s) so every fit's frames are covered",
            )
        first = B.read_info(next(iter(basedirs[model].values())))
        info[model] = {
            "family": first["family"],
            "params": first.get("params", {}),
            "train_seconds": sum(
                B.read_info(d).get("train_seconds", 0.0) for d in basedirs[model].values()
            ),
            "predict_seconds_per_structure": float(np.mean(list(per_fit.values()))),
            "fits": list(predictions[model]),
        }
    ds = store.with_bases(ref, models, E, P["forces"], S, info)
    if "hvp" in P:
        seed = int(next(iter(files.values()))["hvp_seed"])
        ds = store.with_hvp(ds, P["hvp"], B.hvp_directions(frames.n_atoms, seed), seed)
    ds.attrs.update(store.provenance(cfg_for_hash))
    store.write(ds, out)
    log(f"store {out}: {len(models)} bases x {nf} frames ({na} atoms)")


# -- evaluation ---------------------------------------------------------------------------
def evaluate(
    store_path: Path,
    split_path: Path,
    metrics_out: Path,
    baselines_out: Path,
    dataset: str,
    bootstrap: int = 1000,
    seed: int = 0,
    metas: Mapping[str, Path] | None = None,
) -> pd.DataFrame:
    """Fit the four baselines on out-of-sample (meta) predictions and write tidy metrics for
    every base, baseline and meta-model (``metas``: name -> val/test predictions) on every
    split they cover (test holds the final numbers)."""
    from elmlff.meta import read_predictions

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    check_no_leak(ds, split)
    frames = store.frames_from_dataset(ds)
    models = ds["model"].values.astype(str).tolist()
    fit_idx, val_idx = split.meta_fit(), split.roles["val"]
    combiners = fit_baselines(ds, split, models)
    meta_preds = {name: read_predictions(name, p, frames) for name, p in (metas or {}).items()}
    rows = []
    for role in ROLES:
        idx = split.roles[role]
        if len(idx) == 0:
            continue
        blk = store.block(ds, frames, idx)
        preds: list[tuple[str, str, np.ndarray, np.ndarray]] = [
            (m, "base", blk["energy"][i], blk["forces"][i]) for i, m in enumerate(models)
        ]
        preds += [
            (c.name, "baseline", *c.apply(blk["energy"], blk["forces"], blk["n_atoms"]))
            for c in combiners
        ]
        for name, (e_all, f_all) in meta_preds.items():
            if np.isnan(f_all[frames.atom_index(idx)]).any():
                continue  # this meta did not predict this split
            preds.append((name, "meta", e_all[idx], f_all[frames.atom_index(idx)]))
        for model, kind, e, f in preds:
            p = per_frame(e, f, blk["ref_energy"], blk["ref_forces"], blk["n_atoms"])
            for metric, (v, lo, hi) in metrics(p, bootstrap if role == "test" else 0, seed).items():
                if metric.startswith("energy") and np.isnan(e).all():
                    continue  # a forces-only model (Ensemble-direct) has no energy
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "split": role,
                        "metric": metric,
                        "value": v,
                        "ci_low": lo,
                        "ci_high": hi,
                        "unit": UNITS[metric],
                        "kind": kind,
                        "n_frames": len(idx),
                    }
                )
    df = pd.DataFrame(rows)
    with atomic_path(metrics_out) as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(
        baselines_out,
        json.dumps(
            {
                "dataset": dataset,
                "fit_on": "out-of-fold (K-fold)" if split.kfold else "meta",
                "n_fit_frames": len(fit_idx),
                "n_val_frames": len(val_idx),
                "baselines": {c.name: c.to_json() for c in combiners},
            },
            indent=1,
        )
        + "\n",
    )
    test = df[(df.split == "test") & (df.metric == "force_rmse_framemean")]
    for _, r in test.sort_values("value").iterrows():
        log(
            f"{dataset} test force RMSE (frame mean) {r.model:>16s}: {1e3 * r.value:7.2f} meV/Å "
            f"[{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}]"
        )
    return df


# -- meta-models --------------------------------------------------------------------------
def train_meta(
    spec: MetaSpec,
    store_path: Path,
    split_path: Path,
    subset: str,
    ensemble: Sequence[str],
    basedirs: Mapping[str, Mapping[str, Path]],
    out: Path,
    dataset: str = "",
) -> None:
    """Train one meta-model on a subset of bases (``all``: the whole ensemble): the subset
    study's job with one subset, saved as ``meta.pt`` + ``meta.json``."""
    from elmlff import meta
    from elmlff.meta import jobs

    job = jobs.prepare(spec, store_path, split_path, [subset], ensemble, basedirs)
    (model,), (info,) = jobs.train(job)
    models = job.subsets[0]
    with atomic_path(out) as tmp:
        meta.save(
            model,
            models,
            tmp,
            {
                "name": spec.name,
                "kind": spec.kind,
                "dataset": dataset,
                "subset": job.names[0],
                "models": models,
                "fit_on": spec.fit_on,
                "package": store.package_version(spec.package),
                "params": model.params,
                "trained_on": job.fit_idx.tolist(),
                "validated_on": job.val_idx.tolist(),
                **info,
            },
        )
    log(
        f"meta '{spec.name}' done: best val force RMSE {1e3 * info['best_val_force_rmse']:.2f} "
        f"meV/Å at epoch {info['best_epoch']} ({info['train_seconds']:.0f} s)"
    )


def predict_meta(
    model_dir: Path,
    store_path: Path,
    split_path: Path,
    basedirs: Mapping[str, Mapping[str, Path]],
    out: Path,
    batch_size: int = 64,
) -> None:
    """Val + test predictions of a meta-model. Ensemble-direct combines the stored base
    predictions (the bases' own inference outputs); Ensemble-conserv runs the live bases, so its
    forces are the exact -dE/dx of the whole ensemble."""
    from elmlff import meta
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble
    from elmlff.meta.live import load_bases

    model, models = meta.load_model(model_dir)
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    idx = np.sort(np.concatenate([split.roles["val"], split.roles["test"]]))
    everything = store.frames_from_dataset(ds)
    frames = everything.subset(idx)
    t0 = time.perf_counter()
    if model.kind == "direct":
        blk = store.block(ds, everything, idx, models)
        em, fm = blk["energy"], blk["forces"]
        e = np.full(len(idx), np.nan)
        f = DirectEnsemble(model, []).forces_from(frames, em, fm)
    else:
        p = ConservEnsemble(model, load_bases(basedirs, models)).predict_all(frames, batch_size)
        e, f = p.energy, p.forces
    sec = time.perf_counter() - t0
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, frames=idx, energy=e, forces=f, seconds=sec)
    log(f"meta {model_dir}: predicted {len(idx)} val+test frames in {sec:.2f} s")
