"""The subset study (the EL-MLFFs paper's Fig. 3a): a meta-model on every chosen k-subset of the
bases, beside the baselines of the same bases.

One job trains every chosen subset of one size k (``results/{dataset}/subsets/{meta}/k{k}/``):

* ``models.pt``: every subset's weights, with what rebuilds them (:func:`load_subset_model`);
* ``info.json``: per subset its bases and training facts (best epoch, val RMSE), plus the
  frames trained and validated on and the group's wall time;
* ``predictions.npz``: ``subsets (S,)``, ``frames (F,)`` (val + test store indices),
  ``forces (S, A, 3)`` eV/Å and ``energy (S, F)`` eV (NaN for Ensemble-direct), ``seconds``.

Ensemble-direct subsets train together (:func:`elmlff.meta.group.fit_direct_group`), sharing
the graphs, the batches and the process. Ensemble-conserv runs its bases live, so its subsets
train one after another in the job, still sharing the data and the loaded bases.
:func:`subset_table` then writes ``subsets.csv``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from elmlff import store
from elmlff import subsets as S
from elmlff.data import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path
from elmlff.metrics import metrics, per_frame

MODELS_FILE, INFO_FILE, PREDICTIONS_FILE = "models.pt", "info.json", "predictions.npz"
#: metrics written to subsets.csv (frame-mean force RMSE first: the paper's Eq. 9)
METRICS = ("force_rmse_framemean", "force_mae_framemean", "force_rmse")


def train_subsets(
    name: str,
    spec: Mapping[str, Any],
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
    """Train meta-model ``name`` (config ``spec``) on each of ``subsets`` (names, one size k)
    and predict their val + test frames into the directory ``out``."""
    import torch

    from elmlff import meta
    from elmlff.meta.data import MetaData, Stats
    from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble
    from elmlff.meta.group import fit_direct_group
    from elmlff.meta.live import load_bases, load_fit
    from elmlff.meta.params import TrainSettings
    from elmlff.meta.train import fit
    from elmlff.pipeline import _meta_frames, check_meta_split, log

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    chosen = [S.resolve(s, ensemble) for s in subsets]
    names = [S.name(m, ensemble) for m in chosen]
    sizes = sorted({len(m) for m in chosen})
    if len(sizes) != 1:
        raise ElmlffError(f"subsets of sizes {sizes} in one job", "pass subsets of one size k")
    kind, params = spec["kind"], dict(spec.get("params", {}))
    settings = TrainSettings(**spec.get("training", {}))
    fit_on = spec.get("fit_on", "out_of_sample")
    fit_idx, val_idx = _meta_frames(split, fit_on, name), split.roles["val"]
    used = [m for m in ensemble if any(m in c for c in chosen)]
    live = kind == "conserv" and (
        settings.bases == "live" or (settings.bases == "auto" and params.get("use_forces", True))
    )
    check_meta_split(ds, split, used, fit_idx, fit_on, basedirs if live else None)
    t0 = time.perf_counter()
    data = MetaData.from_store(ds, float(params.get("cutoff", 5.0)), used)
    frames = data.frames
    stats = Stats.fit(frames.subset(fit_idx))
    log(
        f"subset study '{name}' ({kind}), k={sizes[0]}: {len(names)} subsets of {used}; graphs "
        f"built once in {time.perf_counter() - t0:.1f} s ({len(data.graph)} edges)"
    )
    models = [
        meta.build(kind, len(c), frames.species, stats, params, seed=S.seed(settings.seed, n))
        for c, n in zip(chosen, names, strict=True)
    ]
    pred_idx = np.sort(np.concatenate([val_idx, split.roles["test"]]))
    pred_frames = frames.subset(pred_idx)
    if kind == "direct":
        group = [m.to(device) for m in models]
        infos = fit_direct_group(group, chosen, data, fit_idx, val_idx, settings, log=log)
        models = [m.cpu() for m in group]
    else:
        if split.kfold:
            live_fit = {k: load_fit(basedirs, used, f"cv{k}") for k in range(split.kfold)}
            fold_of = split.fold_of(len(frames))
        else:
            live_fit, fold_of = {-1: load_fit(basedirs, used, "full")}, None
        live_val = load_bases(basedirs, used)

        def pick(pots, c):
            return [pots[used.index(m)] for m in c]

        infos = []
        for i, (model, c) in enumerate(zip(models, chosen, strict=True)):
            log(f"subset {i + 1}/{len(models)}: {names[i]}")
            lf = {k: pick(v, c) for k, v in live_fit.items()} if live else None
            lv = pick(live_val, c) if live else None
            infos.append(fit(model, data, fit_idx, val_idx, c, settings, lf, lv, fold_of, log=log))
    t1 = time.perf_counter()
    energy = np.full((len(models), len(pred_idx)), np.nan)
    forces = np.zeros((len(models), len(pred_frames.forces), 3), dtype=np.float32)
    atoms = frames.atom_index(pred_idx)
    for i, (model, c) in enumerate(zip(models, chosen, strict=True)):
        if kind == "direct":  # from the stored base predictions already in memory
            m = data.model_index(c)
            forces[i] = DirectEnsemble(model, []).forces_from(
                pred_frames, data.base_energy[m][:, pred_idx], data.base_forces[m][:, atoms]
            )
        else:
            p = ConservEnsemble(model, pick(live_val, c)).predict_all(pred_frames, batch_size)
            energy[i], forces[i] = p.energy, p.forces
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
            tmp / MODELS_FILE,
        )
        with open(tmp / PREDICTIONS_FILE, "wb") as fh:
            np.savez(
                fh,
                subsets=np.array(names),
                frames=pred_idx,
                energy=energy,
                forces=forces,
                seconds=seconds,
            )
        info = {
            "name": name,
            "kind": kind,
            "dataset": dataset,
            "k": sizes[0],
            "fit_on": fit_on,
            "params": models[0].params,
            "settings": infos[0]["settings"],
            "trained_on": fit_idx.tolist(),
            "validated_on": val_idx.tolist(),
            "train_seconds": t1 - t0,
            "predict_seconds": seconds,
            "subsets": {
                n: {"models": c, **{k: v for k, v in i.items() if k != "settings"}}
                for n, c, i in zip(names, chosen, infos, strict=True)
            },
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    best = sorted(zip([i["best_val_force_rmse"] for i in infos], names, strict=True))[0]
    log(
        f"subset study '{name}' k={sizes[0]}: {len(names)} models in {t1 - t0:.0f} s "
        f"(+{seconds:.0f} s predicting); best val {1e3 * best[0]:.2f} meV/Å ({best[1]})"
    )


def load_subset_model(group_dir: Path, subset: str, device: str = "cpu"):
    """(meta-model, its bases) of one subset from a group directory written by
    :func:`train_subsets`."""
    import torch

    from elmlff import meta
    from elmlff.meta.data import Stats

    path = Path(group_dir) / MODELS_FILE
    if not path.exists():
        raise ElmlffError(f"no subset models at {group_dir}", "run the train_subsets rule")
    d = torch.load(path, map_location=device, weights_only=False)
    entry = {e["subset"]: e for e in d["subsets"]}.get(subset)
    if entry is None:
        raise ElmlffError(
            f"subset {subset!r} not in {group_dir}",
            f"use one of {sorted(e['subset'] for e in d['subsets'])[:5]}...",
        )
    model = meta.build(
        d["kind"], len(entry["models"]), d["species"], Stats(**d["stats"]), d["params"]
    )
    model.load_state_dict(entry["state_dict"])
    return model.to(device).eval(), list(entry["models"])


def subset_table(
    groups: Mapping[str, Sequence[Path]],
    store_path: Path,
    split_path: Path,
    out: Path,
    dataset: str = "",
) -> pd.DataFrame:
    """``subsets.csv`` (tidy: ``dataset, subset, k, models, meta, kind, split, metric, value``)
    from the group directories of each meta (``groups``: meta name -> directories): every
    subset's meta-model and, for the same bases, the four baselines (``kind`` baseline)."""
    from elmlff.baselines import fit_all
    from elmlff.pipeline import _block

    ds = store.open_store(store_path)
    split = Split.load(split_path)
    frames = store.frames_from_dataset(ds)
    ensemble = ds["model"].values.astype(str).tolist()
    roles = {r: np.asarray(split.roles[r]) for r in ("val", "test")}
    blocks = {r: _block(ds, frames, idx) for r, idx in roles.items()}
    fit_block = _block(ds, frames, split.meta_fit())  # read once; baselines slice the bases

    def of(block: dict, m: list[int]) -> dict:
        return {**block, "energy": block["energy"][m], "forces": block["forces"][m]}

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(subset, models, meta, kind, role, e, f):
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
                    "split": role,
                    "metric": metric,
                    "value": values[metric][0],
                }
            )

    for meta_name, dirs in groups.items():
        for d in dirs:
            pred = Path(d) / PREDICTIONS_FILE
            if not pred.exists():
                raise ElmlffError(f"{pred} not found", "run the train_subsets rule")
            z = np.load(pred)
            info = json.loads((Path(d) / INFO_FILE).read_text())
            # each role's frames and atoms within the group's predictions (same for every subset)
            where = {int(f): i for i, f in enumerate(z["frames"])}
            atoms_of = frames.subset(z["frames"])
            local = {r: np.array([where[int(f)] for f in idx]) for r, idx in roles.items()}
            atoms = {r: atoms_of.atom_index(i) for r, i in local.items()}
            energy, forces = z["energy"], z["forces"]
            for s, subset in enumerate(z["subsets"].astype(str)):
                models = info["subsets"][subset]["models"]
                for role in roles:
                    e, f = energy[s][local[role]], forces[s][atoms[role]]
                    add(subset, models, meta_name, "meta", role, e, f)
                if subset in seen:
                    continue
                seen.add(subset)
                m = [ensemble.index(x) for x in models]
                # as pipeline.fit_baselines: fitted on the meta frames, best base chosen on val
                for c in fit_all(models, of(fit_block, m), of(blocks["val"], m)):
                    for role in roles:
                        b = blocks[role]
                        e, f = c.apply(b["energy"][m], b["forces"][m], b["n_atoms"])
                        add(subset, models, c.name, "baseline", role, e, f)
    df = pd.DataFrame(rows)
    if df.empty:
        raise ElmlffError("no subset results to tabulate", "run train_subsets for some k first")
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
