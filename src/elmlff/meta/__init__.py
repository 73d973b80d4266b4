"""Meta-models that learn from every base (stacking): Ensemble-direct and Ensemble-conserv.

* :mod:`elmlff.meta.direct` - GAT over base forces/energies/species, predicts forces.
* :mod:`elmlff.meta.conserv` - e3nn energy model θ, forces by autograd through the bases.
* :mod:`elmlff.meta.data` - base predictions + labels + cutoff graphs, built once, batched.
* :mod:`elmlff.meta.params` - architectures, training settings and :class:`MetaSpec`.
* :mod:`elmlff.meta.jobs` - one training job: data, guards and live bases prepared once, one
  model per subset of bases (``train_meta`` is a job with one subset).
* :mod:`elmlff.meta.train` - training with early stopping on validation only.
* :mod:`elmlff.meta.group` - many direct models (one per subset of bases) trained at once.
* :mod:`elmlff.meta.live` - the bases evaluated live (K-fold means, the fit of each fold).
* :mod:`elmlff.meta.ensemble` - ensembles over live bases (meta-models and baselines).

This module owns the files of a trained meta-model: ``meta.pt``/``meta.json`` of one model
(:func:`save`, :func:`load_model`), a subset-study group's ``models.pt``
(:func:`load_subset_model`) and a meta's ``predictions.npz`` (:func:`read_predictions`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.layout import GROUP_INFO, GROUP_MODELS, META_INFO, META_MODEL

KINDS = ("direct", "conserv")
MODEL_FILE, INFO_FILE = META_MODEL, META_INFO


def build(
    kind: str,
    n_models: int,
    species: list[int],
    stats,
    params: dict[str, Any],
    seed: int | None = None,
):
    """A fresh meta-model of ``kind`` (initial weights from ``seed`` when given)."""
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    if kind == "direct":
        from elmlff.meta.direct import EnsembleDirect

        return EnsembleDirect(n_models, species, stats, **params)
    if kind == "conserv":
        from elmlff.meta.conserv import EnsembleConserv

        return EnsembleConserv(n_models, species, stats, **params).double()
    raise ElmlffError(f"unknown meta-model kind {kind!r}", f"use one of {list(KINDS)}")


def save(model, models: list[str], outdir: Path, info: dict[str, Any]) -> None:
    """Write ``meta.pt`` (weights + what rebuilds it) and ``meta.json`` into ``outdir``."""
    import torch

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "kind": model.kind,
            "models": list(models),
            "species": model.species,
            "stats": asdict(model.stats),
            "params": model.params,
            "state_dict": model.state_dict(),
        },
        outdir / MODEL_FILE,
    )
    (outdir / INFO_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")


def load_model(outdir: Path, device: str = "cpu"):
    """(meta-model, its base names in input order) from a directory written by :func:`save`."""
    import torch

    from elmlff.meta.data import Stats

    path = Path(outdir) / MODEL_FILE
    if not path.exists():
        raise ElmlffError(
            f"no trained meta-model at {outdir} ({MODEL_FILE} missing)",
            "train it first (snakemake runs the train_meta rule)",
        )
    d = torch.load(path, map_location=device, weights_only=False)
    model = build(d["kind"], len(d["models"]), d["species"], Stats(**d["stats"]), d["params"])
    model.load_state_dict(d["state_dict"])
    return model.to(device).eval(), list(d["models"])


def read_info(outdir: Path | str) -> dict[str, Any]:
    """``meta.json`` of a meta-model directory written by :func:`save`."""
    path = Path(outdir) / INFO_FILE
    if not path.exists():
        raise ElmlffError(f"no meta-model info at {path}", "train the meta-model first")
    return json.loads(path.read_text())


def divergence(info: dict[str, Any]) -> str:
    """'diverged at epoch N, ...' for a meta whose training loss or val error went non-finite
    (its facts' ``diverged_epoch``: it stopped there, kept at its best val state), else ''."""
    epoch = info.get("diverged_epoch")
    if not epoch:
        return ""
    return (
        f"diverged at epoch {epoch} (non-finite training loss or val error); stopped there "
        f"and kept at its best val state (epoch {info.get('best_epoch', '?')})"
    )


def load_subset_model(group_dir: Path, subset: str, device: str = "cpu"):
    """(meta-model, its bases) of one subset from a subset-study group directory
    (:func:`elmlff.study.train_subsets`)."""
    import torch

    from elmlff.meta.data import Stats

    path = Path(group_dir) / GROUP_MODELS
    if not path.exists():
        raise ElmlffError(f"no subset models at {group_dir}", "run the train_subsets rule")
    d = torch.load(path, map_location=device, weights_only=False)
    entry = {e["subset"]: e for e in d["subsets"]}.get(subset)
    if entry is None:
        raise ElmlffError(
            f"subset {subset!r} not in {group_dir}",
            f"use one of {sorted(e['subset'] for e in d['subsets'])[:5]}...",
        )
    model = build(d["kind"], len(entry["models"]), d["species"], Stats(**d["stats"]), d["params"])
    model.load_state_dict(entry["state_dict"])
    return model.to(device).eval(), list(entry["models"])


def in_group(group_dir: Path, subset: str) -> bool:
    """Whether a subset-study group directory holds a model of ``subset``."""
    info = Path(group_dir) / GROUP_INFO
    return info.exists() and subset in json.loads(info.read_text()).get("subsets", {})


def read_predictions(name: str, path: Path, frames: Frames) -> tuple[np.ndarray, np.ndarray]:
    """A meta's ``predictions.npz`` on the store's frame/atom axes (``frames``: every store
    frame): energy ``(F,)`` and forces ``(A, 3)``, NaN where it did not predict."""
    if not Path(path).exists():
        raise ElmlffError(f"meta '{name}': predictions {path} not found", "run predict_meta")
    z = np.load(path)
    e = np.full(len(frames), np.nan)
    f = np.full((len(frames.forces), 3), np.nan)
    e[z["frames"]] = z["energy"]
    f[frames.atom_index(z["frames"])] = z["forces"]
    if not np.isfinite(z["forces"]).all():
        raise ElmlffError(f"meta '{name}' predicted NaN/inf forces ({path})", "retrain it")
    return e, f
