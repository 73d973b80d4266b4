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
from elmlff import keys, store
from elmlff.baselines import fit_baselines, read_baselines, write_baselines
from elmlff.data import Frames, Split, make_split
from elmlff.data.source import load_dataset
from elmlff.data.split import ROLES
from elmlff.errors import ElmlffError
from elmlff.guards import check_no_leak
from elmlff.io import atomic_path
from elmlff.log import log, warn
from elmlff.meta.params import MetaSpec
from elmlff.metrics import UNITS, PerFrame, force_rmse, metrics, paired_differences, per_frame

#: what every meta-model is compared with (comparisons.csv)
REFERENCES = ("best_base", "linear_stacking", "mean")


# -- data ---------------------------------------------------------------------------------
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
    if len(tr) == 0 and not B.record(spec.family).pretrained:
        raise ElmlffError(
            f"base '{spec.name}' ({spec.family}) has no training frames (split.sizes.train: 0)",
            "give the data set training frames, or use only pretrained bases on it",
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
    extra: dict[str, Any] = {}
    if B.record(pot.family).stress and bool(frames.pbc.any()):  # one pass gives all three
        e, f, extra["stress"] = pot.predict_stress(frames, batch_size=batch_size)
    else:
        e, f = pot.predict(frames, batch_size=batch_size)
    sec = time.perf_counter() - t0
    if e.shape != (len(frames),) or f.shape != frames.forces.shape:
        raise ElmlffError(
            f"base '{pot.name}' returned energy {e.shape} / forces {f.shape} for "
            f"{len(frames)} frames with {len(frames.forces)} atoms",
            "fix the family's predict()",
        )
    if hvp_seed is not None:
        ref = store.frames_from_dataset(ds)
        v = B.hvp_directions(ref.n_atoms, hvp_seed)[ref.atom_index(idx)]
        hv = np.zeros_like(f)
        for s in range(0, len(frames), batch_size):
            b = np.arange(s, min(s + batch_size, len(frames)))
            a = frames.atom_index(b)
            hv[a] = B.hvp(pot, frames.subset(b), v[a])
        extra.update(hvp=hv, hvp_seed=hvp_seed)
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
    energy_alignment: str = "none",
) -> None:
    """Build ``predictions.zarr``: the reference plus every base's energies and forces (and
    stress, where every base predicts one).

    Without K-fold, one fit per base predicts every frame. With K-fold, each frame of train +
    meta takes the prediction of the fit that held it out; val and test take the mean of the
    K fits. ``base_in_sample`` records where the predicting base trained on the frame. With
    ``energy_alignment: per_element`` the base energies are aligned by per-element offsets
    fitted on the frames meta-models learn from (:mod:`elmlff.alignment`).
    """
    ref = store.open_store(ref_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ref)
    nf, na = len(frames), len(frames.forces)
    models = list(predictions)
    files = {(m, fit): dict(np.load(p)) for m in models for fit, p in predictions[m].items()}
    # per-atom outputs: forces, and Hessian-vector products where every base has them
    atom_keys = ["forces"] + (["hvp"] if all("hvp" in z for z in files.values()) else [])
    with_stress = all("stress" in z for z in files.values())
    St = np.full((len(models), nf, 3, 3), np.nan)
    E = np.full((len(models), nf), np.nan)
    P = {k: np.full((len(models), na, 3), np.nan) for k in atom_keys}
    S = np.zeros((len(models), nf), dtype=bool)
    V = np.zeros((len(models), nf), dtype=bool)  # frames any fit early-stopped on
    info: dict[str, Any] = {}
    val_atoms = frames.atom_index(split.roles["val"])
    shared = np.concatenate([split.roles["val"], split.roles["test"]])
    shared_atoms = frames.atom_index(shared)
    for m, model in enumerate(models):
        sum_e = np.zeros(len(shared))
        sum_p = {k: np.zeros((len(shared_atoms), 3)) for k in atom_keys}
        per_fit, fit_val_rmse = {}, []
        for fit in predictions[model]:
            z = files[model, fit]
            idx, atoms = z["frames"], frames.atom_index(z["frames"])
            e_fit = np.full(nf, np.nan)
            e_fit[idx] = z["energy"]
            p_fit = {k: np.full((na, 3), np.nan) for k in atom_keys}
            for k in atom_keys:
                p_fit[k][atoms] = z[k]
            per_fit[fit] = float(z["seconds"]) / max(len(idx), 1)
            fit_info = B.read_info(basedirs[model][fit])
            trained = np.zeros(nf, dtype=bool)
            trained[np.asarray(fit_info["trained_on"], np.int64)] = True
            V[m, np.asarray(fit_info.get("validated_on", []), np.int64)] = True
            if fit == "full":
                E[m], S[m] = e_fit, trained
                if with_stress:
                    St[m, idx] = z["stress"]
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
            fit_val_rmse.append(force_rmse(p_fit["forces"][val_atoms], frames.forces[val_atoms]))
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
        if split.kfold:  # metas learn from single fits, are judged on the mean of K fits
            info[model]["kfold_val_force_rmse"] = {
                "single_fits": fit_val_rmse,
                "mean_of_fits": force_rmse(P["forces"][m, val_atoms], frames.forces[val_atoms]),
            }
    ds = store.with_bases(ref, models, E, P["forces"], S, info, validated_on=V)
    if with_stress and not split.kfold:  # pretrained bases: one fit each
        ds = store.with_stress(ds, St)
    if energy_alignment != "none":
        from elmlff import alignment

        fit_on = split.meta_fit()
        counts = alignment.composition(frames.numbers, frames.n_atoms, frames.species)
        offsets = alignment.fit_offsets(frames.energy, E, counts, fit_on)
        ds = store.with_alignment(ds, energy_alignment, frames.species, offsets, counts)
        for model, row in zip(models, offsets, strict=True):
            log(
                f"base '{model}': energy offsets {np.round(row, 4).tolist()} eV/atom "
                f"(Z={frames.species}), fitted on {len(fit_on)} meta frames"
            )
    if "hvp" in P:
        seed = int(next(iter(files.values()))["hvp_seed"])
        ds = store.with_hvp(ds, P["hvp"], B.hvp_directions(frames.n_atoms, seed), seed)
    ds.attrs.update(store.provenance(cfg_for_hash))
    store.write(ds, out)
    log(f"store {out}: {len(models)} bases x {nf} frames ({na} atoms)")


# -- evaluation ---------------------------------------------------------------------------
def baselines_stage(store_path: Path, split_path: Path, out: Path, dataset: str) -> None:
    """Fit the four baselines on the store's out-of-sample (meta) predictions, the best base
    chosen on val, into ``baselines.json`` with every base's val force RMSE. It needs the bases
    only, so MD of the bases and baselines need not wait for the meta-models."""
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    check_no_leak(ds, split)
    combiners = fit_baselines(ds, split, ds["model"].values.astype(str).tolist())
    write_baselines(out, dataset, combiners, split)
    chosen = next(c for c in combiners if c.name == "best_base").info["chosen"]
    log(f"{dataset}: baselines fitted on {len(split.meta_fit())} frames; best base (val) {chosen}")


def evaluate(
    store_path: Path,
    split_path: Path,
    metrics_out: Path,
    baselines_path: Path,
    dataset: str,
    bootstrap: int = 1000,
    seed: int = 0,
    metas: Mapping[str, Path] | None = None,
    comparisons_out: Path | None = None,
    learned_ratio: float = 0.5,
    by_group_out: Path | None = None,
    stress_from: str = "best_base",
) -> pd.DataFrame:
    """Tidy metrics for every base, baseline (``baselines_path``: :func:`baselines_stage`'s
    ``baselines.json``) and meta-model (``metas``: name -> val/test predictions) on every
    split they cover (test holds the final numbers), and ``comparisons.csv``: every meta
    against the best base, linear stacking and the plain mean on the test frames, as paired
    bootstrap intervals of the difference (:func:`elmlff.metrics.paired_differences`).

    Where the store has every base's stress, bases are scored on it, the baselines' stress is
    the same weighted sum as their forces, and each meta takes the stress of ``stress_from``
    (a base, or ``best_base``: the base chosen on val). ``by_group_out`` gets the test metrics
    and paired comparisons (against the best base) per group of frames of the same elements
    (one group per element on elemental data sets)."""
    from elmlff.meta import read_predictions

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    check_no_leak(ds, split)
    frames = store.frames_from_dataset(ds)
    models = ds["model"].values.astype(str).tolist()
    combiners = read_baselines(baselines_path)
    stale = [c.name for c in combiners if c.models != models]
    if stale:
        raise ElmlffError(
            f"{baselines_path}: baselines {stale} are over other bases than the store's {models}",
            "rerun the baselines rule on this store",
        )
    meta_preds = {name: read_predictions(name, p, frames) for name, p in (metas or {}).items()}
    rows = []
    test_errors: dict[str, tuple[str, PerFrame, bool]] = {}  # model -> (kind, errors, energy?)
    has_stress = keys.BASE_STRESS in ds and frames.stress is not None
    stress = ds[keys.BASE_STRESS].values if has_stress else None
    if stress is not None:
        by_name = {c.name: c for c in combiners}
        source = by_name[stress_from].info["chosen"] if stress_from in by_name else stress_from
        if source not in models:
            raise ElmlffError(
                f"evaluation.stress_from: no base {stress_from!r}",
                f"name one of {models} or best_base",
            )
    for role in ROLES:
        idx = split.roles[role]
        if len(idx) == 0:
            continue
        blk = store.block(ds, frames, idx)
        s_base = stress[:, idx] if stress is not None else None
        preds: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray | None]] = [
            (m, "base", blk["energy"][i], blk["forces"][i], None if s_base is None else s_base[i])
            for i, m in enumerate(models)
        ]
        preds += [
            (
                c.name,
                "baseline",
                *c.apply(blk["energy"], blk["forces"], blk["n_atoms"], blk["numbers"]),
                None if s_base is None else np.tensordot(c.weights, s_base, axes=1),
            )
            for c in combiners
        ]
        for name, (e_all, f_all) in meta_preds.items():
            if np.isnan(f_all[frames.atom_index(idx)]).any():
                continue  # this meta did not predict this split
            s_meta = None if s_base is None else s_base[models.index(source)]
            preds.append((name, "meta", e_all[idx], f_all[frames.atom_index(idx)], s_meta))
        ref_s = None if frames.stress is None else frames.stress[idx]
        for model, kind, e, f, s in preds:
            p = per_frame(e, f, blk["ref_energy"], blk["ref_forces"], blk["n_atoms"], s, ref_s)
            if role == "test":
                test_errors[model] = (kind, p, not np.isnan(e).all())
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
    df = flag_unlearned(df, trivial_rmse(frames, split), learned_ratio)
    with atomic_path(metrics_out) as tmp:
        df.to_csv(tmp, index=False)
    if comparisons_out is not None:
        comp = paired_comparisons(test_errors, dataset, bootstrap, seed)
        with atomic_path(comparisons_out) as tmp:
            comp.to_csv(tmp, index=False)
    if by_group_out is not None:
        groups = by_group(test_errors, frames, split.roles["test"], dataset, bootstrap, seed)
        with atomic_path(by_group_out) as tmp:
            groups.to_csv(tmp, index=False)
    test = df[(df.split == "test") & (df.metric == "force_rmse_framemean")]
    for _, r in test.sort_values("value").iterrows():
        log(
            f"{dataset} test force RMSE (frame mean) {r.model:>16s}: {1e3 * r.value:7.2f} meV/Å "
            f"[{1e3 * r.ci_low:.2f}, {1e3 * r.ci_high:.2f}]"
        )
    for _, r in df[(df.flag != "") & (df.metric == "force_rmse") & (df.split == "test")].iterrows():
        warn(f"base '{r.model}' {r.flag}")
    return df


def frame_groups(frames: Frames) -> np.ndarray:
    """Each frame's group: its elements' symbols joined by ``-`` (``Si``; ``C-H-O``)."""
    from ase.data import chemical_symbols

    out = []
    for f in range(len(frames)):
        z = np.unique(frames.numbers[frames.atom_index([f])])
        out.append("-".join(chemical_symbols[int(x)] for x in z))
    return np.array(out)


def _subset(p: PerFrame, sel: np.ndarray) -> PerFrame:
    return PerFrame(
        p.abs_sum[sel],
        p.sq_sum[sel],
        p.n_comp[sel],
        p.e_err_per_atom[sel],
        None if p.stress_abs_mean is None else p.stress_abs_mean[sel],
    )


def by_group(
    errors: Mapping[str, tuple[str, PerFrame, bool]],
    frames: Frames,
    test: np.ndarray,
    dataset: str,
    bootstrap: int,
    seed: int,
) -> pd.DataFrame:
    """Tidy rows per group of test frames (:func:`frame_groups`) and model: each metric with
    its bootstrap interval, and (``reference: best_base``) its paired difference against the
    best base chosen on val."""
    groups = frame_groups(frames.subset(test))
    rows = []
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        for model, (kind, p, has_e) in errors.items():
            q = _subset(p, sel)
            base = {"dataset": dataset, "group": g, "model": model, "kind": kind}
            for metric, (v, lo, hi) in metrics(q, bootstrap, seed).items():
                if metric.startswith("energy") and not has_e:
                    continue
                rows.append(
                    {
                        **base,
                        "reference": "",
                        "metric": metric,
                        "value": v,
                        "ci_low": lo,
                        "ci_high": hi,
                        "unit": UNITS[metric],
                        "n_frames": int(sel.sum()),
                    }
                )
            if model == "best_base" or "best_base" not in errors:
                continue
            _, r, ref_e = errors["best_base"]
            diffs = paired_differences(q, _subset(r, sel), bootstrap, seed)
            for metric, (d, lo, hi) in diffs.items():
                if metric.startswith("energy") and not (has_e and ref_e):
                    continue
                rows.append(
                    {
                        **base,
                        "reference": "best_base",
                        "metric": metric,
                        "value": d,
                        "ci_low": lo,
                        "ci_high": hi,
                        "unit": UNITS[metric],
                        "n_frames": int(sel.sum()),
                    }
                )
    return pd.DataFrame(rows)


def trivial_rmse(frames: Frames, split: Split) -> dict[str, float]:
    """Test force RMSE (pooled) of the predictors that learn nothing: zero forces, and the
    training frames' mean force vector for every atom."""
    ref = frames.forces[frames.atom_index(split.roles["test"])]
    seen = split.roles["train"] if len(split.roles["train"]) else split.meta_fit()
    mean = frames.forces[frames.atom_index(seen)].mean(axis=0)
    return {
        "zero forces": float(np.sqrt(np.mean(ref**2))),
        "the training mean force": float(np.sqrt(np.mean((ref - mean) ** 2))),
    }


def flag_unlearned(df: pd.DataFrame, trivial: Mapping[str, float], ratio: float) -> pd.DataFrame:
    """Add ``learned_ratio`` (a base's test force RMSE over the better trivial predictor's) and
    ``flag`` (``learned nothing: ...`` where that ratio is not below ``ratio``) to every row of
    each base; other models get NaN and an empty flag."""
    name, best = min(trivial.items(), key=lambda kv: kv[1])
    test = df[(df.kind == "base") & (df.split == "test") & (df.metric == "force_rmse")]
    r = (test.set_index("model").value / best).to_dict()
    df = df.assign(learned_ratio=df.model.map(r).where(df.kind == "base"), flag="")
    bad = df.learned_ratio >= ratio
    df.loc[bad, "flag"] = df.loc[bad, "learned_ratio"].map(
        lambda x: (
            f"learned nothing: test force RMSE {x:.2f}x that of predicting {name} "
            f"({1e3 * best:.1f} meV/Å)"
        )
    )
    return df


def paired_comparisons(
    errors: Mapping[str, tuple[str, PerFrame, bool]],
    dataset: str,
    bootstrap: int = 1000,
    seed: int = 0,
    split: str = "test",
) -> pd.DataFrame:
    """Tidy ``comparisons.csv`` rows: each meta (kind ``meta`` in ``errors``) minus each of
    :data:`REFERENCES`, per metric (energies only where both have one), with its paired
    bootstrap interval; a negative difference means the meta has the smaller error."""
    rows = []
    for model, (kind, p, has_e) in errors.items():
        if kind != "meta":
            continue
        for ref in REFERENCES:
            if ref not in errors:
                continue
            _, q, ref_e = errors[ref]
            for metric, (d, lo, hi) in paired_differences(p, q, bootstrap, seed).items():
                if metric.startswith("energy") and not (has_e and ref_e):
                    continue
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "reference": ref,
                        "split": split,
                        "metric": metric,
                        "difference": d,
                        "lo": lo,
                        "hi": hi,
                        "unit": UNITS[metric],
                        "verdict": verdict(lo, hi),
                    }
                )
    cols = ["dataset", "model", "reference", "split", "metric", "difference", "lo", "hi"]
    return pd.DataFrame(rows, columns=[*cols, "unit", "verdict"])


def verdict(lo: float, hi: float) -> str:
    """What a paired interval of (model − reference) error supports: ``better`` (all below
    zero), ``worse`` (all above) or ``indistinguishable`` (it holds zero)."""
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    return "indistinguishable"  # the interval holds zero (or there is none: bootstrap 0)


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
    device: str = "cpu",
) -> None:
    """Train one meta-model on a subset of bases (``all``: the whole ensemble) on ``device``:
    the subset study's job with one subset, saved as ``meta.pt`` + ``meta.json``."""
    from elmlff import meta
    from elmlff.meta import jobs

    job = jobs.prepare(spec, store_path, split_path, [subset], ensemble, basedirs, device)
    (model,), (info,) = jobs.train(job, device)
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
    device: str = "cpu",
) -> None:
    """Val + test predictions of a meta-model on ``device``. Ensemble-direct combines the stored
    base predictions (the bases' own inference outputs); Ensemble-conserv runs the live bases, so
    its forces are the exact -dE/dx of the whole ensemble."""
    from elmlff import meta
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble
    from elmlff.meta.live import load_bases

    model, models = meta.load_model(model_dir, device)
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    idx = np.sort(np.concatenate([split.roles["val"], split.roles["test"]]))
    everything = store.frames_from_dataset(ds)
    frames = everything.subset(idx)
    if model.kind != "direct":  # loading the live bases is not inference time
        pots = load_bases(basedirs, models, device, store.energy_offsets(ds))
    t0 = time.perf_counter()
    if model.kind == "direct":
        blk = store.block(ds, everything, idx, models)
        em, fm = blk["energy"], blk["forces"]
        e = np.full(len(idx), np.nan)
        f = DirectEnsemble(model, []).forces_from(frames, em, fm)
    else:
        p = ConservEnsemble(model, pots).predict_all(frames, batch_size)
        e, f = p.energy, p.forces
    sec = time.perf_counter() - t0
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, frames=idx, energy=e, forces=f, seconds=sec)
    log(f"meta {model_dir}: predicted {len(idx)} val+test frames in {sec:.2f} s")
