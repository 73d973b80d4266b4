"""Table 1 and the survival figure from results/ files only, checked against hand-made inputs."""

from __future__ import annotations

import os
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
            flag="learned nothing" if v > 0.5 else "",
        )
        for m, v in mae.items()
    ]
    pd.DataFrame(rows).to_csv(lay.metrics, index=False)
    Path(lay.benchmark("train_dimenet_full")).parent.mkdir()
    # each job's file is written when it ends: the training ran over [0, 90] s, the MD over
    # [120, 150] s (a pause between them); aspirin ran 600 s after ethanol
    t0 = 1.0e9 + (600.0 if name == "aspirin" else 0.0)
    for job, s, end in (("train_dimenet_full", 90.0, 90.0), ("md_replica_dimenet_0", 30.0, 150.0)):
        Path(lay.benchmark(job)).write_text(f"s\th:m:s\n{s}\t0:01:30\n")
        os.utime(lay.benchmark(job), (t0 + end, t0 + end))
    pd.DataFrame(
        [
            dict(
                model="ensemble_direct",
                reference=ref,
                metric="force_mae",
                difference=d,
                lo=d - 0.001,
                hi=d + 0.001,
                verdict=verdict,
            )
            for ref, d, verdict in (
                ("linear_stacking", 0.002, "worse"),
                ("best_base", -0.002, "better"),
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
        {"dimenet": 0.900, "nequip": 0.025},
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
    # a model without MD or without a prediction is "–", never a number; a base flagged as
    # having learned nothing is marked and named below the table
    assert (
        "| aspirin | force MAE [meV/Å] | 900.0 [899.0, 901.0] † | **25.0 [24.0, 26.0]** | – |"
        in lines
    )
    assert "aspirin: `dimenet` learned nothing." in text
    # wall: first start to last end (2.5 min each), summed: 90 + 30 s; both: 0 to 750 s
    assert (
        "ethanol 2.5 min wall, 2.0 min summed (2 jobs, commit unknown), "
        "aspirin 2.5 min wall, 2.0 min summed (2 jobs, commit unknown); "
        "all data sets 12.5 min wall" in text
    )
    assert "| | stability [%] | **100** | – | – |" in lines
    assert "2 replicas of 2 ps at 500 K" in text
    best = "ethanol: ensemble_direct − best base force MAE -2.0 [-3.0, -1.0] meV/Å (better)"
    stack = "ethanol: ensemble_direct − linear_stacking force MAE +2.0 [+1.0, +3.0] meV/Å (worse)"
    assert best in text and stack in text and text.index(best) < text.index(stack)
    png = tmp_path / "stability.png"
    stability_figure([a, b], MODELS, png)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_a_tiny_md17_like_campaign_makes_table1_through_the_workflow(tmp_path):
    """An rMD17-like molecule (npz files in kcal/mol), three base families of Table 1 (SchNet,
    DimeNet++, the direct-force base), Ensemble-direct, MD: `results/table1.md` has every
    column and the molecule's row triple, and the survival figure is drawn (several molecules:
    the test above)."""
    import re
    import subprocess
    import sys

    import numpy as np
    import yaml

    from conftest import ROOT

    rng = np.random.default_rng(0)
    shape = np.array([[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [-0.36, 1.03, 0.0], [-0.36, -0.5, 0.9]])
    data = tmp_path / "rmd17"
    data.mkdir()
    for mol in ("toya",):
        for part, n in (("train_01", 40), ("test_01", 12)):
            x = shape + rng.normal(scale=0.03, size=(n, 4, 3))
            np.savez(
                data / f"rmd17_{mol}_{part}.npz",
                nuclear_charges=np.array([6, 1, 1, 1], dtype=np.uint8),
                coords=x,
                energies=-25000.0 + 50.0 * ((x - shape) ** 2).sum(axis=(1, 2)),
                forces=-100.0 * (x - shape),  # a harmonic well in kcal/mol/Å
            )
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    ds = {
        "format": "rmd17",
        "path": str(data),
        "units": {"energy": "kcal/mol", "length": "angstrom"},
        "split": {"sizes": {"train": 24, "meta": 8, "val": 8, "test": 12}},
    }
    cfg["datasets"] = {
        m: {**ds, "parts": {f"rmd17_{m}_train_01.npz": "pool", f"rmd17_{m}_test_01.npz": "test"}}
        for m in ("toya",)
    }
    cfg["run"] = ["toya"]
    tiny = {"max_epochs": 2, "batch_size": 8}
    cfg["bases"] = {
        "schnet_t": {"family": "schnetpack", "params": {"n_atom_basis": 8, "n_interactions": 1}},
        "dimenet_t": {
            "family": "dimenet",
            "params": {
                "hidden_channels": 8,
                "num_blocks": 1,
                "int_emb_size": 8,
                "basis_emb_size": 4,
                "out_emb_channels": 8,
                "num_spherical": 3,
                "num_radial": 3,
            },
        },
        "orb_t": {
            "family": "orb_direct",
            "params": {"latent_dim": 8, "base_mlp_hidden_dim": 8, "num_message_passing_steps": 1},
        },
    }
    cfg["ensemble"] = list(cfg["bases"])
    cfg["training"].update(tiny)
    cfg["metas"]["ensemble_direct"]["params"].update(hidden=8, layers=1, heads=2)
    cfg["metas"]["ensemble_direct"]["training"].update(tiny)
    cfg["run_metas"] = ["ensemble_direct"]
    cfg["md"] = {
        "models": ["schnet_t", "orb_t", "ensemble_direct"],
        "replicas": 1,
        "settings": {"steps": 20, "record_every": 5, "temperature_K": 300, "nve_probe_steps": 10},
    }
    models = ["schnet_t", "dimenet_t", "orb_t", "best_base", "mean", "ensemble_direct"]
    cfg["table1"] = {"datasets": ["toya"], "models": models}
    path = tmp_path / "md17.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--configfile", str(path), "--directory", str(tmp_path), "--cores", "2"]
    r = subprocess.run([*cmd, "results/table1.md"], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (tmp_path / "results" / "table1.md").read_text()
    assert "| molecule | metric | " + " | ".join(models) + " |" in text
    for mol in ("toya",):
        row = re.search(rf"^\| {mol} \| force MAE \[meV/Å\] \|(.*)$", text, re.M).group(1)
        assert row.count("[") == len(models)  # every model has a test MAE with an interval
    stab = re.findall(r"^\| \| stability \[%\] \|(.*)$", text, re.M)
    assert len(stab) == 1 and all(s.count("–") == 3 for s in stab)  # MD of three models
    assert "1 replica of 0.01 ps at 300 K" in text
    assert "ensemble_direct − best base force MAE" in text
    png = tmp_path / "results" / "figures" / "stability.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
