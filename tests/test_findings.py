"""The README's results prose is generated from results/ and says only what the files support;
the README itself holds no typed-in result numbers outside its generated blocks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from elmlff.findings import accuracy, subset_study
from elmlff.layout import DatasetLayout

ROOT = Path(__file__).resolve().parents[1]


def _metric_rows(model, kind, val, test):
    return [
        {
            "dataset": "toy",
            "model": model,
            "kind": kind,
            "split": split,
            "metric": "force_rmse_framemean",
            "value": v,
            "ci_low": v - 0.001,
            "ci_high": v + 0.001,
            "n_frames": 40,
            "flag": "",
        }
        for split, v in (("val", val), ("test", test))
    ]


@pytest.fixture
def toy(tmp_path) -> DatasetLayout:
    lay = DatasetLayout.of(tmp_path / "results" / "toy")
    Path(lay.dir).mkdir(parents=True)
    rows = (
        _metric_rows("a", "base", 0.020, 0.021)
        + _metric_rows("b", "base", 0.015, 0.016)
        + _metric_rows("best_base", "baseline", 0.015, 0.016)
        + _metric_rows("mean", "baseline", 0.017, 0.0175)
        + _metric_rows("linear_stacking", "baseline", 0.013, 0.0125)
        + _metric_rows("direct", "meta", 0.011, 0.0123)
        + _metric_rows("direct_ablation", "meta", 0.010, 0.0119)
    )
    pd.DataFrame(rows).to_csv(lay.metrics, index=False)
    cmp = [
        ("best_base", -0.0037, -0.0045, -0.0030, "better"),
        ("linear_stacking", -0.0002, -0.0006, 0.0003, "indistinguishable"),
        ("mean", 0.0010, 0.0004, 0.0016, "worse"),
    ]
    pd.DataFrame(
        [
            {
                "dataset": "toy",
                "model": "direct",
                "reference": ref,
                "split": "test",
                "metric": "force_rmse_framemean",
                "difference": d,
                "lo": lo,
                "hi": hi,
                "unit": "eV/Å",
                "verdict": v,
            }
            for ref, d, lo, hi, v in cmp
        ]
    ).to_csv(lay.comparisons, index=False)
    Path(lay.baselines).write_text(
        json.dumps({"baselines": {"best_base": {"info": {"chosen": "b"}}}})
    )
    return lay


def test_accuracy_sentences_follow_the_paired_verdicts_and_name_the_metric(toy):
    text = " ".join(accuracy(toy, ["direct"]))
    assert "force RMSE (frame mean, Eq. 9)" in text
    assert "chosen on val, is `b`: 16.00 [15.00, 17.00] meV/Å" in text
    assert "`direct`: 12.30 [11.30, 13.30] meV/Å" in text
    assert "is lower than best_base's (difference -3.70 [-4.50, -3.00] meV/Å)" in text
    assert "cannot be told apart from linear_stacking's" in text
    assert "is higher than mean's (difference +1.00 [+0.40, +1.60] meV/Å)" in text
    # the ablation is listed with its interval but gets no claim and is never "chosen"
    assert "Ablations (never chosen): `direct_ablation` 11.90 [10.90, 12.90] meV/Å" in text
    assert "direct_ablation`: " not in text
    # a verdict that changes in comparisons.csv changes the sentence
    c = pd.read_csv(toy.comparisons)
    c.loc[c.reference == "linear_stacking", ["lo", "hi", "verdict"]] = [0.0001, 0.0004, "worse"]
    c.to_csv(toy.comparisons, index=False)
    assert "is higher than linear_stacking's" in " ".join(accuracy(toy, ["direct"]))


def test_a_base_that_learned_nothing_is_named(toy):
    m = pd.read_csv(toy.metrics, dtype={"flag": object})
    m.loc[(m.model == "a") & (m.split == "test"), "flag"] = "learned nothing (ratio 0.9)"
    m.to_csv(toy.metrics, index=False)
    assert "**`a` learned nothing (ratio 0.9)**" in " ".join(accuracy(toy, ["direct"]))


def test_a_meta_whose_training_diverged_is_named(toy):
    info = Path(toy.meta_model("direct")) / "meta.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"best_epoch": 3, "diverged_epoch": None}))
    assert "diverged" not in " ".join(accuracy(toy, ["direct"]))
    info.write_text(json.dumps({"best_epoch": 3, "diverged_epoch": 4}))
    assert (
        "**`direct` diverged at epoch 4 (non-finite training loss or val error); stopped there "
        "and kept at its best val state (epoch 3).**"
    ) in " ".join(accuracy(toy, ["direct"]))


def test_subset_study_medians_and_the_choice_on_val(toy):
    rows = []

    def add(subset, k, meta, kind, val, test):
        for split, v in (("val", val), ("test", test)):
            rows.append(
                dict(
                    subset=subset,
                    k=k,
                    models=subset,
                    meta=meta,
                    kind=kind,
                    split=split,
                    metric="force_rmse_framemean",
                    value=v,
                )
            )

    add("a", 1, "direct", "meta", 0.018, 0.019)  # a: 21 meV/Å alone -> the meta helps
    add("b", 1, "direct", "meta", 0.014, 0.017)  # b: 16 alone -> the meta hurts
    add("a+b", 2, "direct", "meta", 0.012, 0.013)
    add("a", 1, "mean", "baseline", 0.020, 0.021)
    add("b", 1, "mean", "baseline", 0.015, 0.016)
    add("a+b", 2, "mean", "baseline", 0.016, 0.0165)
    pd.DataFrame(rows).to_csv(toy.subsets, index=False)
    text = "\n".join(subset_study(toy))
    # k = 1: median of 19 and 17 = 18; the mean's median of 21 and 16 = 18.5; val picks b
    # (14 < 18) although a would not be the test winner either way: its test value is printed
    assert "| 1 | 2 | 18.00 | 18.50 | `b` | 17.00 |" in text
    assert "| 2 | 1 | 13.00 | 16.50 | `a+b` | 13.00 |" in text
    assert "its error is the smaller in 1 of 2 cases" in text
    assert "diverged" not in text
    # a subset model whose training went non-finite is counted, once over its val/test rows
    df = pd.read_csv(toy.subsets)
    df["diverged_epoch"] = float("nan")
    df.loc[(df.subset == "a+b") & (df.kind == "meta"), "diverged_epoch"] = 7
    df.to_csv(toy.subsets, index=False)
    assert "**1 of the 3 subset models' training diverged**" in "\n".join(subset_study(toy))


#: a measured result: a number followed by a unit only results have (errors, times, speeds,
#: ratios of cost), or a correlation coefficient
RESULT_NUMBER = re.compile(
    r"(\d[\d.,]*\s*(meV|ms\b|min\b|minutes|hours?\b|steps/s|GFLOP|x one|x the)|ρ\s*=\s*\d"
    r"|about an? (hour|minute))"
)


def test_readme_has_no_typed_result_numbers_outside_generated_blocks():
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"<!-- ([\w:-]+) -->.*?<!-- /\1 -->", "", text, flags=re.S)  # generated
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands and their verbatim output
    hits = [m.group(0) for m in RESULT_NUMBER.finditer(text)]
    assert not hits, f"typed result numbers in README.md outside generated blocks: {hits}"
