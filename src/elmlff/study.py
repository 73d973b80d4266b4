"""The subset study (the EL-MLFFs paper's Fig. 3a): a meta-model on every chosen k-subset of the
bases, beside the baselines of the same bases.

One job trains every chosen subset of one size k (``results/{dataset}/subsets/{meta}/k{k}/``,
its files named in :mod:`elmlff.layout`):

* ``models.pt``: every subset's weights, with what rebuilds them
  (:func:`elmlff.meta.load_subset_model`);
* ``info.json``: per subset its bases and training facts (best epoch, val RMSE), plus the
  frames trained and validated on and the group's wall time;
* ``predictions.npz``: ``subsets (S,)``, ``frames (F,)`` (val + test store indices),
  ``forces (S, A, 3)`` eV/Å and ``energy (S, F)`` eV (NaN for Ensemble-direct), ``seconds``.

The job is :mod:`elmlff.meta.jobs`' (the same as ``train_meta``'s with one subset):
Ensemble-direct subsets share the graphs, the batches and the process, and train as one
vmapped group where that is faster than one after another
(:func:`elmlff.meta.group.fit_direct_models`); Ensemble-conserv runs its bases live, so its
subsets train one after another in the job, still sharing the data and the loaded bases.
:func:`subset_table` then writes ``subsets.csv``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff import store
from elmlff import subsets as S
from elmlff.baselines import fit_all
from elmlff.data import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path
from elmlff.layout import GROUP_INFO, GROUP_MODELS, GROUP_PREDICTIONS
from elmlff.log import log
from elmlff.meta.params import MetaSpec
from elmlff.metrics import metrics, per_frame

#: metrics written to subsets.csv (frame-mean force RMSE first: the paper's Eq. 9)
METRICS = ("force_rmse_framemean", "force_mae_framemean", "force_rmse")
#: the study's methods: one model per subset (the paper's), or one model over random subsets
DEDICATED, AMORTIZED = "dedicated", "amortized"
METHODS = (DEDICATED, AMORTIZED)


def _write_predictions(
    group_dir: Path,
    names: Sequence[str],
    frames: np.ndarray,
    energy: np.ndarray,
    forces: np.ndarray,
    seconds: float,
) -> None:
    """A group directory's ``predictions.npz`` (see the module docstring)."""
    with open(Path(group_dir) / GROUP_PREDICTIONS, "wb") as fh:
        np.savez(
            fh,
            subsets=np.array(names),
            frames=frames,
            energy=energy,
            forces=forces,
            seconds=seconds,
        )


def train_subsets(
    spec: MetaSpec,
    store_path: Path,
    split_path: Path,
    subsets: Sequence[str],
    ensemble: Sequence[str],
    basedirs: Mapping[str, Mapping[str, Path]],
    out: Path,
    dataset: str = "",
    batch_size: int = 64,
    device: str = "cpu",
) -> None:
    """Train meta-model ``spec`` on each of ``subsets`` (names, one size k) and predict their
    val + test frames into the directory ``out``."""
    import torch

    from elmlff.meta import jobs
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble

    t0 = time.perf_counter()
    job = jobs.prepare(spec, store_path, split_path, subsets, ensemble, basedirs, device)
    kind, data, frames = spec.kind, job.data, job.data.frames
    chosen, names, k = job.subsets, job.names, len(job.subsets[0])
    models, infos = jobs.train(job, device)
    split = job.split
    pred_idx = np.sort(np.concatenate([job.val_idx, split.roles["test"]]))
    pred_frames = frames.subset(pred_idx)
    t1 = time.perf_counter()
    energy = np.full((len(models), len(pred_idx)), np.nan)
    forces = np.zeros((len(models), len(pred_frames.forces), 3), dtype=np.float32)
    atoms = frames.atom_index(pred_idx)
    for i, (model, c) in enumerate(zip(models, chosen, strict=True)):
        model.to(device)  # beside the live bases; saved from the CPU
        if kind == "direct":  # from the stored base predictions already in memory
            m = data.model_index(c)
            forces[i] = DirectEnsemble(model, []).forces_from(
                pred_frames, data.base_energy[m][:, pred_idx], data.base_forces[m][:, atoms]
            )
        else:
            if job.live_val is None:
                raise ElmlffError(
                    f"Ensemble-conserv '{spec.name}' predicts through its bases", "pass --bases"
                )
            p = ConservEnsemble(model, job.live(job.live_val, c)).predict_all(
                pred_frames, batch_size
            )
            energy[i], forces[i] = p.energy, p.forces
        model.cpu()
    seconds = time.perf_counter() - t1
    if not np.isfinite(forces).all():
        bad = [n for n, f in zip(names, forces, strict=True) if not np.isfinite(f).all()]
        raise ElmlffError(f"subset models {bad[:3]} predicted NaN/inf forces", "retrain them")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        torch.save(
            {
                "kind": kind,
                "species": frames.species,
                "stats": asdict(models[0].stats),
                "params": models[0].params,
                "subsets": [
                    {"subset": n, "models": c, "state_dict": m.state_dict()}
                    for n, c, m in zip(names, chosen, models, strict=True)
                ],
            },
            tmp / GROUP_MODELS,
        )
        _write_predictions(tmp, names, pred_idx, energy, forces, seconds)
        info = {
            "name": spec.name,
            "kind": kind,
            "dataset": dataset,
            "k": k,
            "fit_on": spec.fit_on,
            "params": models[0].params,
            "settings": infos[0]["settings"],
            "trained_on": job.fit_idx.tolist(),
            "validated_on": job.val_idx.tolist(),
            "train_seconds": t1 - t0,
            "predict_seconds": seconds,
            "subsets": {
                n: {"models": c, **{k: v for k, v in i.items() if k != "settings"}}
                for n, c, i in zip(names, chosen, infos, strict=True)
            },
        }
        (tmp / GROUP_INFO).write_text(json.dumps(info, indent=1) + "\n")
    best = sorted(zip([i["best_val_force_rmse"] for i in infos], names, strict=True))[0]
    log(
        f"subset study '{spec.name}' k={k}: {len(names)} models in {t1 - t0:.0f} s "
        f"(+{seconds:.0f} s predicting); best val {1e3 * best[0]:.2f} meV/Å ({best[1]})"
    )


def train_subsets_amortized(
    spec: MetaSpec,
    store_path: Path,
    split_path: Path,
    subsets: Sequence[str],
    ensemble: Sequence[str],
    out: Path,
    dataset: str = "",
    device: str = "cpu",
) -> None:
    """The amortized method: one Ensemble-direct model over random subsets of ``ensemble``
    (:mod:`elmlff.meta.amortized`), then val + test predictions of every one of ``subsets``
    (names, any sizes) into the directory ``out``: ``meta.pt``/``meta.json`` (the model, over
    every base), ``predictions.npz`` and ``info.json`` as a group directory has them."""
    from elmlff import meta
    from elmlff.meta import jobs
    from elmlff.meta.amortized import fit_amortized, predict_subsets

    if spec.kind != "direct":
        raise ElmlffError(
            f"meta '{spec.name}' is {spec.kind}: the amortized subset study trains "
            "Ensemble-direct only",
            "study it with `subsets.method: dedicated`, or list only direct metas",
        )
    t0 = time.perf_counter()
    job = jobs.prepare(spec, store_path, split_path, [S.ALL], ensemble, {})
    data, frames, split = job.data, job.data.frames, job.split
    chosen = [S.resolve(n, ensemble) for n in subsets]
    names = [S.name(c, ensemble) for c in chosen]
    settings = spec.settings
    model = meta.build(
        "direct",
        len(data.models),
        frames.species,
        job.stats,
        {**spec.params, "amortized": True},
        seed=S.seed(settings.seed, AMORTIZED),
    ).to(device)
    log(f"amortized: one model over random subsets of {data.models}; {len(names)} to evaluate")
    fit_info = fit_amortized(model, data, job.fit_idx, job.val_idx, settings, job.fold_of)
    t1 = time.perf_counter()
    pred_idx = np.sort(np.concatenate([job.val_idx, split.roles["test"]]))
    forces = predict_subsets(model, data, pred_idx, chosen)
    seconds = time.perf_counter() - t1
    if not np.isfinite(forces).all():
        raise ElmlffError("the amortized model predicted NaN/inf forces", "retrain it")
    model = model.cpu()
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        meta.save(model, data.models, tmp, {"name": spec.name, "method": AMORTIZED, **fit_info})
        energy = np.full((len(names), len(pred_idx)), np.nan)  # Ensemble-direct: no energy
        _write_predictions(tmp, names, pred_idx, energy, forces, seconds)
        info = {
            "name": spec.name,
            "kind": "direct",
            "method": AMORTIZED,
            "dataset": dataset,
            "fit_on": spec.fit_on,
            "params": model.params,
            "settings": fit_info["settings"],
            "trained_on": job.fit_idx.tolist(),
            "validated_on": job.val_idx.tolist(),
            "train_seconds": t1 - t0,
            "predict_seconds": seconds,
            "best_epoch": fit_info["best_epoch"],
            "best_val_force_rmse": fit_info["best_val_force_rmse"],
            "diverged_epoch": fit_info.get("diverged_epoch"),
            "subsets": {n: {"models": c} for n, c in zip(names, chosen, strict=True)},
        }
        (tmp / GROUP_INFO).write_text(json.dumps(info, indent=1) + "\n")
    log(
        f"amortized subset study '{spec.name}': trained in {t1 - t0:.0f} s, {len(names)} "
        f"subsets predicted in {seconds:.0f} s; best val "
        f"{1e3 * fit_info['best_val_force_rmse']:.2f} meV/Å over random subsets"
    )


def _group_sources(
    groups: Mapping[str, Sequence[Path]], full: Mapping[str, tuple[Path, Path]]
) -> Iterator[tuple[str, Any, dict]]:
    """(meta, predictions as a group directory's ``predictions.npz``, its ``info.json``) of
    every group directory, and of every meta whose full-set model is ``train_meta``'s
    (``full``: meta -> (model directory, predictions file)) as a group of that one subset."""
    for meta_name, dirs in groups.items():
        for d in dirs:
            pred = Path(d) / GROUP_PREDICTIONS
            if not pred.exists():
                raise ElmlffError(f"{pred} not found", "run the train_subsets rule")
            yield meta_name, np.load(pred), json.loads((Path(d) / GROUP_INFO).read_text())
    from elmlff.meta import read_info

    for meta_name, (model_dir, pred) in full.items():
        info = read_info(model_dir)
        z = np.load(pred)
        one = {"diverged_epoch": info.get("diverged_epoch"), "models": info["models"]}
        yield (
            meta_name,
            {
                "subsets": np.array([S.ALL]),
                "frames": z["frames"],
                "energy": z["energy"][None],
                "forces": z["forces"][None],
            },
            {"method": DEDICATED, "subsets": {S.ALL: one}},
        )


def subset_table(
    groups: Mapping[str, Sequence[Path]],
    store_path: Path,
    split_path: Path,
    out: Path,
    dataset: str = "",
    full: Mapping[str, tuple[Path, Path]] | None = None,
) -> pd.DataFrame:
    """``subsets.csv`` (tidy: ``dataset, subset, k, models, meta, kind, method,
    diverged_epoch, split, metric, value``) from the group directories of each meta
    (``groups``: meta name -> directories) and the full-set models taken from ``train_meta``
    (``full``: meta name -> (its model directory, its predictions)): every subset's
    meta-model and, for the same bases, the four baselines (``kind`` baseline).
    ``diverged_epoch`` is set where the meta's training went non-finite (it was kept at its
    best val state)."""
    ds = store.open_store(store_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ds)
    ensemble = ds["model"].values.astype(str).tolist()
    roles = {r: np.asarray(split.roles[r]) for r in ("val", "test")}
    blocks = {r: store.block(ds, frames, idx) for r, idx in roles.items()}
    fit_block = store.block(ds, frames, split.meta_fit())  # read once; baselines slice the bases

    def of(block: dict, m: list[int]) -> dict:
        return {**block, "energy": block["energy"][m], "forces": block["forces"][m]}

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(subset, models, meta, kind, role, e, f, method="", diverged=None):
        b = blocks[role]
        p = per_frame(e, f, b["ref_energy"], b["ref_forces"], b["n_atoms"])
        values = metrics(p)
        for metric in METRICS:
            rows.append(
                {
                    "dataset": dataset,
                    "subset": subset,
                    "k": len(models),
                    "models": S.SEP.join(models),
                    "meta": meta,
                    "kind": kind,
                    "method": method,  # a meta's: dedicated | amortized; baselines: ""
                    "diverged_epoch": diverged or np.nan,  # a meta whose training went NaN
                    "split": role,
                    "metric": metric,
                    "value": values[metric][0],
                }
            )

    for meta_name, z, info in _group_sources(groups, full or {}):
        method = info.get("method", DEDICATED)
        # each role's frames and atoms within the group's predictions (same for every subset)
        where = {int(f): i for i, f in enumerate(z["frames"])}
        atoms_of = frames.subset(z["frames"])
        local = {r: np.array([where[int(f)] for f in idx]) for r, idx in roles.items()}
        atoms = {r: atoms_of.atom_index(i) for r, i in local.items()}
        energy, forces = z["energy"], z["forces"]
        for s, subset in enumerate(z["subsets"].astype(str)):
            models = info["subsets"][subset]["models"]
            # dedicated: each subset's model; amortized: the one model of every subset
            diverged = info["subsets"][subset].get("diverged_epoch", info.get("diverged_epoch"))
            for role in roles:
                e, f = energy[s][local[role]], forces[s][atoms[role]]
                add(subset, models, meta_name, "meta", role, e, f, method, diverged)
            if subset in seen:
                continue
            seen.add(subset)
            m = [ensemble.index(x) for x in models]
            # as baselines.fit_baselines: fitted on the meta frames, best base chosen on val
            for c in fit_all(models, of(fit_block, m), of(blocks["val"], m)):
                for role in roles:
                    b = blocks[role]
                    e, f = c.apply(b["energy"][m], b["forces"][m], b["n_atoms"], b["numbers"])
                    add(subset, models, c.name, "baseline", role, e, f)
    df = pd.DataFrame(rows)
    if df.empty:
        raise ElmlffError("no subset results to tabulate", "run train_subsets for some k first")
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


#: subsets_calibration.csv: the summary rows' ``subset``
SUMMARY = "summary"


def calibration(
    subsets_csv: Path,
    out: Path,
    dataset: str = "",
    metric: str = "force_rmse_framemean",
    split: str = "test",
) -> pd.DataFrame:
    """``subsets_calibration.csv`` (tidy: ``dataset, meta, subset, k, metric, quantity,
    value``): for every subset a meta has by both methods, its ``amortized`` and ``dedicated``
    test error and their ``relative_gap`` (amortized / dedicated − 1); per meta the summary
    rows (``subset`` = ``summary``): ``spearman_rho`` of the two over those subsets,
    ``mean_relative_gap``, ``worst_relative_gap`` (the largest) and ``n_subsets``."""
    from scipy.stats import spearmanr

    df = pd.read_csv(subsets_csv)
    df = df[(df.kind == "meta") & (df.metric == metric) & (df.split == split)]
    rows: list[dict[str, Any]] = []
    for meta_name, g in df.groupby("meta", sort=False):
        wide = g.pivot_table(index=["subset", "k"], columns="method", values="value")
        if not set(METHODS) <= set(wide.columns):
            continue
        wide = wide.dropna(subset=list(METHODS)).reset_index()
        if wide.empty:
            continue
        gap = wide[AMORTIZED] / wide[DEDICATED] - 1.0
        for r, g_ in zip(wide.itertuples(), gap, strict=True):
            for q, v in ((AMORTIZED, r.amortized), (DEDICATED, r.dedicated), ("relative_gap", g_)):
                rows.append(dict(meta=meta_name, subset=r.subset, k=int(r.k), quantity=q, value=v))
        rho = spearmanr(wide[AMORTIZED], wide[DEDICATED]).statistic if len(wide) > 2 else np.nan
        for q, v in (
            ("spearman_rho", rho),
            ("mean_relative_gap", gap.mean()),
            ("worst_relative_gap", gap.max()),
            ("n_subsets", len(wide)),
        ):
            rows.append(dict(meta=meta_name, subset=SUMMARY, k=-1, quantity=q, value=float(v)))
    cols = ["dataset", "meta", "subset", "k", "metric", "quantity", "value"]
    table = pd.DataFrame(rows, columns=[c for c in cols if c not in ("dataset", "metric")])
    table.insert(0, "dataset", dataset)
    table.insert(4, "metric", metric)
    with atomic_path(out) as tmp:
        table[cols].to_csv(tmp, index=False)
    return table[cols]


def calibration_summary(path: Path | str) -> dict[str, dict[str, float]]:
    """{meta: {spearman_rho, mean_relative_gap, worst_relative_gap, n_subsets}} of a
    ``subsets_calibration.csv`` (empty when the file is missing or has none)."""
    if not Path(path).exists():
        return {}
    df = pd.read_csv(path)
    df = df[df.subset == SUMMARY]
    return {m: dict(zip(g.quantity, g.value, strict=True)) for m, g in df.groupby("meta")}


def shown_method(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``subsets.csv`` a figure or table shows: baselines, and each meta's
    amortized rows where it has them (every subset), else its dedicated ones."""
    if "method" not in df:
        return df
    metas = df[df.kind == "meta"]
    has_amortized = set(metas[metas.method == AMORTIZED].meta)
    drop = (df.kind == "meta") & df.meta.isin(has_amortized) & (df.method != AMORTIZED)
    return df[~drop]


def calibration_text(c: dict[str, float]) -> str:
    """One phrase of a meta's calibration summary (:func:`calibration_summary`)."""
    return (
        f"against dedicated models of {c['n_subsets']:.0f} sampled subsets, Spearman ρ "
        f"{c['spearman_rho']:.2f}; relative gap (amortized / dedicated − 1) mean "
        f"{100 * c['mean_relative_gap']:+.1f} %, worst {100 * c['worst_relative_gap']:+.1f} %"
    )
