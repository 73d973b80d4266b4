"""Leak guards: no base, baseline or meta-model learns from a frame it is later judged on.

Every stage that fits something on base predictions calls these first; each raises a one-line
:class:`~elmlff.errors.ElmlffError` naming the bases and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from elmlff import bases as B
from elmlff import keys
from elmlff.data.split import Split
from elmlff.errors import ElmlffError


def check_no_leak(ds, split: Split) -> None:
    """No base trained on a frame that meta-models or baselines fit on, or on a val/test
    frame (the store's ``base_in_sample``); and none early-stopped or chose its checkpoint on
    a meta-fit or test frame (``base_validated_on``: bases validate on val only)."""
    ins = ds[keys.BASE_IN_SAMPLE].values
    checks = [("trained on", ins, ("meta-fit", "val", "test"))]
    if keys.BASE_VALIDATED_ON in ds:  # stores made before it was recorded lack it
        checks.append(("validated on", ds[keys.BASE_VALIDATED_ON].values, ("meta-fit", "test")))
    frames = {"meta-fit": split.meta_fit(), "val": split.roles["val"], "test": split.roles["test"]}
    for verb, used, roles in checks:
        for what in roles:
            bad = used[:, frames[what]].any(axis=1)
            if bad.any():
                models = ds["model"].values[bad].tolist()
                raise ElmlffError(
                    f"bases {models} were {verb} {what} frames",
                    "retrain the bases (train on the split's train frames, validate on val)",
                )


def check_meta_split(
    ds,
    split: Split,
    models: list[str],
    fit_idx: np.ndarray,
    fit_on: str,
    basedirs: Mapping[str, Mapping[str, Path]] | None = None,
) -> None:
    """Refuse a meta-training set that touches val/test, or (out-of-sample) any frame a base
    that predicted it was trained on: from the store's ``base_in_sample`` and, for live bases,
    from each fit's ``base.json``."""
    val, test = split.roles["val"], split.roles["test"]
    for what, idx in (("val", val), ("test", test)):
        both = np.intersect1d(fit_idx, idx)
        if len(both):
            raise ElmlffError(
                f"{len(both)} meta-training frames are also {what} frames (first {both[:3]})",
                "rebuild the split (snakemake reruns the data stage)",
            )
    if len(np.intersect1d(val, test)):
        raise ElmlffError("val and test frames overlap", "rebuild the split")
    all_models = ds["model"].values.astype(str).tolist()
    ins = ds[keys.BASE_IN_SAMPLE].values[[all_models.index(m) for m in models]]
    if fit_on == "out_of_sample" and ins[:, fit_idx].any():
        bad = [m for m, row in zip(models, ins[:, fit_idx], strict=True) if row.any()]
        raise ElmlffError(
            f"bases {bad} were trained on frames the meta-model would learn from",
            "retrain the bases on the split's train frames only",
        )
    if ins[:, np.concatenate([val, test])].any():
        raise ElmlffError("a base was trained on val/test frames", "retrain the bases")
    if basedirs is None:
        return
    folds = split.folds if split.kfold else [fit_idx]
    for m in models:
        for fit, d in basedirs[m].items():
            info = B.read_info(d)
            trained = np.asarray(info["trained_on"], dtype=np.int64)
            validated = np.asarray(info.get("validated_on", []), dtype=np.int64)
            own = folds[int(fit[2:])] if fit.startswith("cv") else fit_idx
            for what, idx in (("meta-training", own), ("test", test)):
                if (what == "test" or fit_on == "out_of_sample") and len(
                    np.intersect1d(validated, idx)
                ):
                    raise ElmlffError(
                        f"base '{m}' fit {fit} early-stopped on {what} frames",
                        "retrain the bases with the split's val frames for validation",
                    )
            if fit_on == "out_of_sample" and len(np.intersect1d(trained, own)):
                raise ElmlffError(
                    f"base '{m}' fit {fit} trained on frames its meta-training frames include",
                    "retrain the bases on the split's train frames only",
                )
            if len(np.intersect1d(trained, np.concatenate([val, test]))):
                raise ElmlffError(f"base '{m}' fit {fit} trained on val/test frames", "retrain")
