"""Table 1 and the survival figure from results/ files only, checked against hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from elmlff.layout import DatasetLayout
from elmlff.table1 import stability_figure, table1

MODELS = ["dimenet", "nequip", "ensemble_direct"]


def _dataset(root: Path, name: str, mae: dict, collapse: dict, hr: dict) -> Path:
    """metrics.csv, comparisons.csv and md_summary.csv of one molecule: ``collapse`` gives each
    model's replicas' times to collapse (None: stable over the 2 ps horizon)."""
    lay = DatasetLayout.of(root / name)
    Path(lay.dir).mkdir(parents=True)
    rows = [
        dict(
            model=m,
            kind="base",
            split="test",
            metric="force_mae",
            value=v,
            ci_low=v - 0.001,
            ci_high=v + 0.001,
        )
        for m, v in mae.items()
    ]
    pd.DataFrame(rows).to_csv(lay.metrics, index=False)
    pd.DataFrame(
        [
            dict(
                model="ensemble_direct",
                reference="best_base",
                metric="force_mae",
                difference=-0.002,
                lo=-0.003,
                hi=-0.001,
                verdict="better",
            )
        ]
    ).to_csv(lay.comparisons, index=False)
    md = []
    for m, times in collapse.items():
        for r, t in enumerate(times):
            for metric, v in (
                ("time_to_collapse_ps", 2.0 if t is None else t),
                ("stable", float(t is None)),
                ("horizon_ps", 2.0),
                ("temperature_K", 500.0),
                ("hr_mae", hr[m]),
            ):
                md.append(dict(dataset=name, model=m, replica=str(r), metric=metric, value=v))
        n = len(times)
        md.append(
            dict(
                dataset=name,
                model=m,
                replica="all",
                metric="stable_percent",
                value=100.0 * sum(t is None for t in times) / n,
            )
        )
        md.append(dict(dataset=name, model=m, replica="all", metric="hr_mae", value=hr[m]))
    pd.DataFrame(md).to_csv(lay.md_summary, index=False)
    return Path(lay.dir)


def test_table1_rows_bold_the_best_and_name_horizon_and_comparisons(tmp_path):
    a = _dataset(
        tmp_path,
        "ethanol",
        {"dimenet": 0.020, "nequip": 0.010, "ensemble_direct": 0.008},
        {"dimenet": [0.5, None], "nequip": [None, None], "ensemble_direct": [1.0, None]},
        {"dimenet": 0.3, "nequip": 0.05, "ensemble_direct": 0.07},
    )
    b = _dataset(
        tmp_path,
        "aspirin",
        {"dimenet": 0.030, "nequip": 0.025},
        {"dimenet": [None, None]},
        {"dimenet": 0.1},
    )
    text = table1([a, b], MODELS, tmp_path / "table1.md")
    lines = text.splitlines()
    assert "| molecule | metric | dimenet | nequip | ensemble_direct |" in lines
    assert (
        "| ethanol | force MAE [meV/Å] | 20.0 [19.0, 21.0] | 10.0 [9.0, 11.0] | "
        "**8.0 [7.0, 9.0]** |" in lines
    )
    assert "| | stability [%] | 50 | **100** | 50 |" in lines
    assert "| | h(r) error | 0.300 | **0.050** | 0.070 |" in lines
    # a model without MD or without a prediction is "–", never a number
    assert (
        "| aspirin | force MAE [meV/Å] | 30.0 [29.0, 31.0] | **25.0 [24.0, 26.0]** | – |" in lines
    )
    assert "| | stability [%] | **100** | – | – |" in lines
    assert "2 replicas of 2 ps at 500 K" in text
    assert "ethanol: ensemble_direct − best base force MAE -2.0 [-3.0, -1.0] meV/Å (better)" in text
    png = tmp_path / "stability.png"
    stability_figure([a, b], MODELS, png)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
