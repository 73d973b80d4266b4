"""Seeded split manifests with four roles, honouring the data set's own given splits.

Roles: ``train`` (bases learn on it), ``meta`` (bases never see it; their predictions on it are
the out-of-sample data meta-models and fitted baselines learn from), ``val`` (early stopping and
model selection) and ``test`` (final numbers only). With ``kfold: K`` (K >= 2) the union of
``train`` and ``meta`` is cut into K folds; K copies of each base each train on K-1 folds and
predict the held-out one, so meta-models learn from out-of-fold predictions on all of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elmlff.errors import ElmlffError
from elmlff.io import atomic_write_text

ROLES: tuple[str, ...] = ("train", "meta", "val", "test")
PART_ROLES: tuple[str, ...] = ("pool", *ROLES)


@dataclass
class Split:
    """Frame indices (into the reference store's frame axis) per role, plus K folds if any."""

    roles: dict[str, np.ndarray]
    folds: list[np.ndarray] = field(default_factory=list)
    seed: int = 0
    method: str = "random"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.roles = {r: np.asarray(self.roles.get(r, []), dtype=np.int64) for r in ROLES}
        self.folds = [np.asarray(f, dtype=np.int64) for f in self.folds]
        self.check()

    # -- invariants -----------------------------------------------------------------------
    def check(self) -> None:
        """Roles non-empty and disjoint; folds (if any) partition train + meta."""
        for r, idx in self.roles.items():
            if (r == "meta" and self.kfold) or r == "train":  # train: 0 for pretrained bases
                continue
            if len(idx) == 0:
                raise ElmlffError(
                    f"split role '{r}' is empty",
                    f"give it frames: raise `split.sizes.{r}` or add a source part with that role",
                )
            if len(np.unique(idx)) != len(idx):
                raise ElmlffError(f"split role '{r}' lists a frame twice", "deduplicate indices")
        seen: dict[int, str] = {}
        for r, idx in self.roles.items():
            for i in idx.tolist():
                if i in seen:
                    raise ElmlffError(
                        f"split roles '{seen[i]}' and '{r}' overlap (frame {i})",
                        "every frame may have one role only: make the roles disjoint",
                    )
                seen[i] = r
        if self.folds:
            cat = np.sort(np.concatenate(self.folds))
            pool = np.sort(np.concatenate([self.roles["train"], self.roles["meta"]]))
            if not np.array_equal(cat, pool) or any(len(f) == 0 for f in self.folds):
                raise ElmlffError(
                    "K folds do not partition train + meta exactly",
                    "rebuild the split with make_split",
                )

    @property
    def kfold(self) -> int:
        return len(self.folds)

    # -- what each stage may use -------------------------------------------------------------
    def fits(self) -> list[str]:
        """Names of the base fits: ``full`` or ``cv0``..``cv{K-1}``."""
        return [f"cv{k}" for k in range(self.kfold)] if self.kfold else ["full"]

    def fit_train(self, fit: str) -> np.ndarray:
        """Frames a base fit trains on: ``train``, or all train + meta outside fold k."""
        if fit == "full":
            return self.roles["train"]
        k = _fold_number(fit, self.kfold)
        return np.sort(np.concatenate([f for j, f in enumerate(self.folds) if j != k]))

    def fit_predict(self, fit: str) -> np.ndarray:
        """Frames a base fit predicts: all frames (full), or its held-out fold plus val + test."""
        if fit == "full":
            return self.all_frames()
        k = _fold_number(fit, self.kfold)
        return np.sort(np.concatenate([self.folds[k], self.roles["val"], self.roles["test"]]))

    def meta_fit(self) -> np.ndarray:
        """Frames meta-models and fitted baselines learn from (out-of-sample for every base)."""
        if self.kfold:
            return np.sort(np.concatenate(self.folds))
        return self.roles["meta"]

    def all_frames(self) -> np.ndarray:
        return np.sort(np.concatenate(list(self.roles.values())))

    def labels(self, n_frames: int) -> np.ndarray:
        """(n_frames,) role label of each frame ('' for none)."""
        out = np.full(n_frames, "", dtype=object)
        for r, idx in self.roles.items():
            out[idx] = r
        return out.astype(str)

    def fold_of(self, n_frames: int) -> np.ndarray:
        """(n_frames,) fold number of each frame, -1 outside the folds."""
        out = np.full(n_frames, -1, dtype=np.int64)
        for k, idx in enumerate(self.folds):
            out[idx] = k
        return out

    # -- files ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "method": self.method,
            "kfold": self.kfold,
            "roles": {r: v.tolist() for r, v in self.roles.items()},
            "folds": [f.tolist() for f in self.folds],
            **self.extra,
        }

    def save(self, path: Path) -> None:
        d = self.to_json()
        roles = ",\n".join(f'  "{r}": {json.dumps(v)}' for r, v in d.pop("roles").items())
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
        atomic_write_text(Path(path), f'{{\n{body},\n "roles": {{\n{roles}\n }}\n}}\n')

    @staticmethod
    def load(path: Path) -> Split:
        path = Path(path)
        if not path.exists():
            raise ElmlffError(f"split manifest not found: {path}", "run the data stage first")
        d = json.loads(path.read_text())
        extra = {
            k: v for k, v in d.items() if k not in ("seed", "method", "kfold", "roles", "folds")
        }
        return Split(d["roles"], d.get("folds", []), d["seed"], d["method"], extra)


def _fold_number(fit: str, kfold: int) -> int:
    if not fit.startswith("cv") or not fit[2:].isdigit() or int(fit[2:]) >= kfold:
        raise ElmlffError(f"unknown base fit {fit!r}", f"use 'full' or cv0..cv{max(kfold - 1, 0)}")
    return int(fit[2:])


def _size(size: Any, role: str) -> int | float | None:
    """A size as a count (int), a fraction in (0, 1) (float) or None for 'rest'/unset."""
    if size is None or size == "rest":
        return None
    if role == "train" and size == 0 and not isinstance(size, bool):
        return 0  # bases that never train (pretrained): meta, val and test only
    if isinstance(size, bool) or not isinstance(size, int | float | np.integer | np.floating):
        raise ElmlffError(
            f"split.sizes.{role}: {size!r} is not a size",
            'give a count (integer >= 1), a fraction of the pool in (0, 1), or "rest"',
        )
    if 0 < size < 1:
        return float(size)
    if size >= 1 and float(size).is_integer():
        return int(size)
    raise ElmlffError(
        f"split.sizes.{role}: {size!r} is neither a count (integer >= 1) nor a fraction in (0, 1)",
        f"set `split.sizes.{role}` to a whole number of frames or a fraction of the pool",
    )


def _of(size: int | float, n: int) -> int:
    """Frames a count or a fraction asks for out of ``n`` (fractions rounded down)."""
    return size if isinstance(size, int) else int(np.floor(size * n + 1e-9))


def _take(size: Any, available: int, role: str) -> int:
    """Frames of a role's own source part: a count, a fraction of the part, or None = all."""
    s = _size(size, role)
    if s is None:
        return available
    n = _of(s, available)
    if n > available:
        raise ElmlffError(
            f"split role '{role}' asks for {n} frames but only {available} are in its source part",
            f"lower `split.sizes.{role}` or use a fraction",
        )
    return n


def check_sizes(sizes: dict[str, Any], pool_roles: Sequence[str] = ROLES) -> None:
    """Refuse sizes that no pool can satisfy, before any data is read: more than one of the
    roles drawn from the pool asking for 'rest', or their fractions of the pool summing to
    more than 1 (each fraction is of the whole pool, not of what the other roles leave)."""
    want = {r: sizes.get(r, "rest" if r == "train" else None) for r in pool_roles}
    rest = [r for r, w in want.items() if w == "rest"]
    if len(rest) > 1:
        raise ElmlffError(f"split roles {rest} all ask for 'rest'", "give all but one a size")
    fractions = {r: f for r, w in want.items() if isinstance(f := _size(w, r), float)}
    total = sum(fractions.values())
    if total > 1 + 1e-9:
        parts = " + ".join(f"{r} {v:g}" for r, v in fractions.items())
        raise ElmlffError(
            f"split.sizes: fractions of the pool sum to {total:g} > 1 ({parts})",
            "make the fractions sum to at most 1 (each is a fraction of the whole pool, not "
            "of what the other roles leave)",
        )


def _pool_counts(sizes: dict[str, Any], free: Sequence[str], n_pool: int) -> dict[str, int]:
    """Frames each of the roles ``free`` draws from a pool of ``n_pool``: counts as given,
    fractions of the whole pool (rounded down), and the one 'rest' role (train by default)
    whatever the others leave."""
    check_sizes(sizes, free)
    counts: dict[str, int] = {}
    rest = None
    for r in free:
        w = sizes.get(r, "rest" if r == "train" else None)
        if w is None:
            raise ElmlffError(
                f"split role '{r}' has no source part and no size",
                f"set `split.sizes.{r}` (a count or a fraction of the pool)",
            )
        size = _size(w, r)
        if size is None:
            rest = r
        else:
            counts[r] = _of(size, n_pool)
    total = sum(counts.values())
    if total > n_pool:
        asked = " + ".join(f"{r} {n}" for r, n in counts.items())
        raise ElmlffError(
            f"split roles ask for {total} frames of the pool ({asked}), which holds {n_pool}",
            "lower `split.sizes` or give fractions of the pool",
        )
    if rest is not None:
        counts[rest] = n_pool - total
    return counts


def make_split(part_roles: np.ndarray, spec: dict[str, Any]) -> Split:
    """Build the manifest from each frame's source-part role and the config's ``split`` spec.

    ``part_roles (F,)`` holds ``pool`` or a fixed role for every frame (the data set's own
    split). Fixed-role frames go to their role (subsampled to ``sizes[role]``); the roles no
    part fixes are drawn from the pool: shuffled (``method: random``) or as contiguous time
    blocks in the order train, meta, val, test (``method: blocks``, the stricter test for MD data).
    """
    seed = int(spec.get("seed", 0))
    method = spec.get("method", "random")
    sizes: dict[str, Any] = dict(spec.get("sizes", {}))
    kfold = int(spec.get("kfold", 0) or 0)
    rng = np.random.default_rng(seed)
    part_roles = np.asarray(part_roles).astype(str)
    bad = sorted(set(part_roles.tolist()) - set(PART_ROLES))
    if bad:
        raise ElmlffError(f"unknown part role(s) {bad}", f"use one of {list(PART_ROLES)}")
    roles: dict[str, np.ndarray] = {}
    for r in ROLES:
        fixed = np.flatnonzero(part_roles == r)
        if len(fixed):
            n = _take(sizes.get(r), len(fixed), r)
            roles[r] = np.sort(rng.choice(fixed, size=n, replace=False))
    pool = np.flatnonzero(part_roles == "pool")
    free = [r for r in ROLES if r not in roles]
    if method == "random":
        pool = rng.permutation(pool)
    elif method == "blocks":
        free = [r for r in ("train", "meta", "val", "test") if r in free]
    else:
        raise ElmlffError(f"unknown split method {method!r}", "use 'random' or 'blocks'")
    counts = _pool_counts(sizes, free, len(pool))
    start = 0
    for r in free:
        roles[r] = np.sort(pool[start : start + counts[r]])
        start += counts[r]
    folds: list[np.ndarray] = []
    if kfold >= 2:
        cv = np.concatenate([roles["train"], roles.get("meta", np.zeros(0, np.int64))])
        cv = rng.permutation(cv) if method == "random" else np.sort(cv)
        folds = [np.sort(f) for f in np.array_split(cv, kfold)]
    elif kfold == 1:
        raise ElmlffError("split.kfold is 1", "use 0 (no cross-fitting) or K >= 2")
    return Split(roles, folds, seed, method)
