"""Meta-models that learn from every base (stacking): Ensemble-direct and Ensemble-conserv.

* :mod:`elmlff.meta.direct` - GAT over base forces/energies/species, predicts forces.
* :mod:`elmlff.meta.conserv` - e3nn energy model θ, forces by autograd through the bases.
* :mod:`elmlff.meta.data` - base predictions + labels + cutoff graphs, built once, batched.
* :mod:`elmlff.meta.train` - training with early stopping on validation only.
* :mod:`elmlff.meta.group` - many direct models (one per subset of bases) trained at once.
* :mod:`elmlff.meta.ensemble` - inference over live bases and the ASE ``EnsembleCalculator``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from elmlff.errors import ElmlffError

KINDS = ("direct", "conserv")
MODEL_FILE, INFO_FILE = "meta.pt", "meta.json"


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


def read_info(outdir: Path) -> dict[str, Any]:
    path = Path(outdir) / INFO_FILE
    if not path.exists():
        raise ElmlffError(f"no meta-model info at {path}", "train the meta-model first")
    return json.loads(path.read_text())
