"""Names of base subsets, the ``subset`` wildcard of the meta-model rules.

``all`` is the data set's whole ensemble; any other subset is its bases joined by ``+`` in the
ensemble's order (e.g. ``painn+nequip``), so a name is readable and maps back to one subset.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from elmlff.errors import ElmlffError

ALL = "all"
SEP = "+"


def resolve(subset: str, ensemble: Sequence[str]) -> list[str]:
    """The bases a subset name stands for, in ensemble order."""
    if subset == ALL:
        return list(ensemble)
    names = subset.split(SEP)
    unknown = [n for n in names if n not in ensemble]
    if unknown or len(set(names)) != len(names) or not names:
        raise ElmlffError(
            f"subset {subset!r} names bases {unknown or names} that are not (once each) in the "
            f"ensemble {list(ensemble)}",
            "write the subset as ensemble bases joined by '+', or 'all'",
        )
    return [m for m in ensemble if m in names]


def name(models: Sequence[str], ensemble: Sequence[str]) -> str:
    """The canonical name of a subset (``all`` for the whole ensemble)."""
    models = resolve(SEP.join(models), ensemble)
    return ALL if len(models) == len(ensemble) else SEP.join(models)


def seed(base_seed: int, subset: str) -> int:
    """The seed of a subset's meta-model weights: fixed by the subset's name, so a model is the
    same whether it trains alone or in a group."""
    return zlib.crc32(f"{base_seed}:{subset}".encode())


def choose(select: Any, ensemble: Sequence[str]) -> dict[int, list[str]]:
    """Subset names grouped by size k (ascending, each in enumeration order): ``select`` is
    ``"all"`` (every non-empty subset, 2^M - 1), a list of sizes k, or a list of explicit
    subsets (each a list of bases)."""
    m = len(ensemble)
    if select == ALL:
        sizes = list(range(1, m + 1))
    elif isinstance(select, list) and all(isinstance(k, int) for k in select):
        bad = [k for k in select if not 1 <= k <= m]
        if bad:
            raise ElmlffError(
                f"subset sizes {bad} are outside 1..{m} (the ensemble has {m} bases)",
                f"choose sizes k between 1 and {m}",
            )
        sizes = sorted(set(select))
    elif isinstance(select, list) and all(isinstance(c, list) for c in select):
        out: dict[int, list[str]] = {}
        for c in select:
            n = name(c, ensemble)
            same_k = out.setdefault(len(resolve(n, ensemble)), [])
            if n not in same_k:
                same_k.append(n)
        return dict(sorted(out.items()))
    else:
        raise ElmlffError(
            f"subset selection {select!r} is not understood",
            "write `all`, a list of sizes k, or a list of lists of bases",
        )
    return {k: [name(c, ensemble) for c in combinations(ensemble, k)] for k in sizes}


def sample(groups: dict[int, list[str]], per_k: int, seed: int) -> dict[int, list[str]]:
    """A stratified sample of subset names: ``per_k`` of each size k (all of a size that has
    no more), drawn with ``seed``, in the groups' order; none when ``per_k`` is 0."""
    import numpy as np

    if per_k <= 0:
        return {}
    rng = np.random.default_rng(seed)
    return {
        k: names
        if len(names) <= per_k
        else [names[i] for i in sorted(rng.choice(len(names), per_k, replace=False))]
        for k, names in groups.items()
    }


def mask(subset: Sequence[str], models: Sequence[str]):
    """(M,) bool array: which of ``models`` (a model's inputs, in order) are in ``subset``."""
    import numpy as np

    return np.isin(np.asarray(models), np.asarray(list(subset)))
