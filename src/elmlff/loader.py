"""Load any trained model of a campaign by name from ``results/{dataset}/``: a base, a baseline
or a meta-model (of the whole ensemble or of a subset), as an ensemble of
:mod:`elmlff.meta.ensemble` ready for :class:`~elmlff.calculator.EnsembleCalculator`.

>>> calc = EnsembleCalculator(load_ensemble("results/methane", "ensemble_conserv"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elmlff import meta, store
from elmlff.baselines import BASELINES, LinearCombiner, fit_baselines, read_baselines
from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.layout import DatasetLayout
from elmlff.meta.ensemble import ConservEnsemble, DirectEnsemble, LinearEnsemble
from elmlff.meta.live import load_bases
from elmlff.subsets import resolve


def load_ensemble(dataset_dir: Path | str, name: str, subset: str = "all", device: str = "cpu"):
    """The trained model ``name`` of a campaign: a base; a baseline (over the whole ensemble
    from ``baselines.json``, over another ``subset`` fitted here from the store as the baselines
    rule does); or a meta-model (``train_meta``'s, the subset study's dedicated model of that
    subset, or else its amortized model run with that subset's bases only)."""
    lay = DatasetLayout.of(dataset_dir)
    has_store = Path(lay.store).exists()
    offsets = store.energy_offsets(store.open_store(lay.store)) if has_store else None

    def bases(models):
        return load_bases(lay.trained_bases(models), models, device, offsets)

    metadir = Path(lay.meta_model(name, subset))
    group = Path(lay.subset_group(name, len(subset.split("+"))))
    amortized = Path(lay.subset_amortized(name))
    if not metadir.exists() and not meta.in_group(group, subset) and amortized.exists():
        # the amortized study's one model, run with only the subset's bases present
        model, inputs = meta.load_model(amortized, device)
        models = resolve(subset, inputs)
        pots = bases(models)
        return DirectEnsemble(model, pots, name, inputs=inputs)
    if metadir.exists() or (subset != "all" and group.exists()):
        if metadir.exists():
            model, models = meta.load_model(metadir, device)
        else:
            model, models = meta.load_subset_model(group, subset, device)
        pots = bases(models)
        cls = ConservEnsemble if model.kind == "conserv" else DirectEnsemble
        return cls(model, pots, name)
    if name in BASELINES:
        if subset == "all" and Path(lay.baselines).exists():
            c = {b.name: b for b in read_baselines(lay.baselines)}[name]
        else:
            ds = store.open_store(lay.store)
            models = resolve(subset, ds["model"].values.astype(str).tolist())
            c = {b.name: b for b in fit_baselines(ds, Split.load(lay.split), models)}[name]
        return LinearEnsemble(c, bases(c.models))
    if lay.has_base(name):
        pots = bases([name])
        return LinearEnsemble(LinearCombiner(name, [name], np.ones(1)), pots)
    raise ElmlffError(
        f"no model '{name}' (subset '{subset}') in {lay.dir}",
        f"name a trained base, a baseline {list(BASELINES)} or a trained meta-model",
    )
