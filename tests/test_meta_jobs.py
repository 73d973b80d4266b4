"""Which frames a meta-model learns from and early-stops on, per ``fit_on``."""

from __future__ import annotations

import numpy as np
import pytest

from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.meta.jobs import meta_frames
from elmlff.meta.params import MetaSpec


def _split(kfold: bool = False) -> Split:
    roles = {
        "train": np.arange(0, 100),
        "meta": np.arange(100, 150),
        "val": np.arange(150, 170),
        "test": np.arange(170, 200),
    }
    folds = [np.arange(0, 75), np.arange(75, 150)] if kfold else []
    return Split(roles, folds, 7, "random")


def spec(fit_on: str) -> MetaSpec:
    return MetaSpec.from_config("m", {"kind": "direct", "fit_on": fit_on})


def test_out_of_sample_learns_on_meta_and_stops_on_val():
    fit, stop = meta_frames(_split(), spec("out_of_sample"))
    assert fit.tolist() == list(range(100, 150)) and stop.tolist() == list(range(150, 170))


def test_in_sample_ablation_changes_only_where_predictions_come_from():
    fit, stop = meta_frames(_split(), spec("in_sample"))
    assert len(fit) == 50 and set(fit) <= set(range(100)) and stop.tolist() == list(range(150, 170))


def test_reference_shortcut_learns_on_all_training_frames_and_stops_in_sample():
    fit, stop = meta_frames(_split(), spec("in_sample_reference"))
    assert len(stop) == 10 and not set(fit) & set(stop)
    assert sorted([*fit, *stop]) == list(range(100))  # every training frame of the bases
    assert spec("in_sample_reference").ablation and not spec("out_of_sample").ablation


def test_in_sample_ablations_refuse_kfold():
    with pytest.raises(ElmlffError, match="need one full fit per base"):
        meta_frames(_split(kfold=True), spec("in_sample_reference"))
