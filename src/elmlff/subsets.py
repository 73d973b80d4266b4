"""Names of base subsets, the ``subset`` wildcard of the meta-model rules.

``all`` is the data set's whole ensemble; any other subset is its bases joined by ``+`` in the
ensemble's order (e.g. ``painn+nequip``), so a name is readable and maps back to one subset.
"""

from __future__ import annotations

from collections.abc import Sequence

from elmlff.errors import ElmlffError

ALL = "all"
SEP = "+"
#: Snakemake wildcard constraint for subset names
PATTERN = r"all|[A-Za-z0-9_\-]+(\+[A-Za-z0-9_\-]+)*"


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
