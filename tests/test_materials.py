"""The materials campaign's path through the workflow: pretrained bases that never train
(``split.sizes.train: 0``), per-element energy alignment fitted on the meta split, each base's
stress in the store, and per-element test metrics with paired comparisons."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from elmlff import bases as B
from elmlff import keys, store
from elmlff.errors import ElmlffError

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not (B.family_available("chgnet")[0] and B.family_available("sevenn")[0]),
    reason="chgnet and sevenn are not installed",
)


def _emt_records(element: str, n: int, seed: int) -> list[dict]:
    """mlearn records of rattled and strained fcc cells labelled by ASE's EMT (eV, eV/Å and
    the virial in kbar in VASP's order and sign, as mlearn stores them)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.units import GPa

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk(element, "fcc", cubic=True)  # 4 atoms
        atoms.set_cell(atoms.cell * (1 + rng.normal(scale=0.02)), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        s = -atoms.get_stress(voigt=True) / GPa * 10.0  # kbar, VASP's sign (compression > 0)
        xx, yy, zz, yz, xz, xy = s
        out.append(
            {
                "structure": {
                    "@module": "pymatgen.core.structure",
                    "@class": "Structure",
                    "lattice": {"matrix": atoms.cell.array.tolist()},
                    "sites": [
                        {"species": [{"element": element, "occu": 1}], "xyz": p.tolist()}
                        for p in atoms.positions
                    ],
                },
                "outputs": {
                    "energy": float(atoms.get_potential_energy()),
                    "forces": atoms.get_forces().tolist(),
                    "virial_stress": [xx, yy, zz, xy, yz, xz],
                },
            }
        )
    return out


TABLE2 = ["chgnet", "sevennet", "best_base", "mean", "linear_stacking", "ensemble_direct"]
EOS = ["chgnet", "sevennet", "mean", "ensemble_direct"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("materials")
    data = tmp / "mlearn"
    for k, el in enumerate(("Cu", "Ni")):
        (data / el).mkdir(parents=True)
        (data / el / "training.json").write_text(json.dumps(_emt_records(el, 14, k)))
        (data / el / "test.json").write_text(json.dumps(_emt_records(el, 6, 10 + k)))
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["datasets"] = {
        "emt": {
            "format": "mlearn",
            "path": str(data),
            "units": {"energy": "eV", "length": "angstrom", "stress": "kbar"},
            "parts": {
                "Cu/training.json": "pool",
                "Ni/training.json": "pool",
                "Cu/test.json": "test",
                "Ni/test.json": "test",
            },
            "energy_alignment": "per_element",
            "split": {"seed": 0, "sizes": {"train": 0, "meta": "rest", "val": 8}},
        }
    }
    cfg["run"] = ["emt"]
    cfg["bases"] = {
        "chgnet": {"family": "chgnet", "params": {"model": "0.3.0"}},
        "sevennet": {"family": "sevenn", "params": {"model": "7net-0"}},
    }
    cfg["ensemble"] = ["chgnet", "sevennet"]
    tiny = {"max_epochs": 2, "batch_size": 8}
    cfg["metas"]["ensemble_direct"]["params"].update(hidden=8, layers=1, heads=2)
    cfg["metas"]["ensemble_direct"]["training"].update(tiny)
    cfg["run_metas"] = ["ensemble_direct"]
    cfg["evaluation"]["stress_from"] = "chgnet"
    cfg["table2"] = {"datasets": ["emt"], "models": TABLE2}
    cfg["eos"] = {"datasets": ["emt"], "models": EOS, "elements": ["Cu", "Ni"]}
    cfg.pop("md", None)
    cfg["md"] = {  # a few steps of the meta of lowest val RMSE from a Ni test cell
        "models": ["best_meta"],
        "replicas": 1,
        "start_elements": ["Ni"],
        "settings": {"steps": 10, "record_every": 5, "nve_probe_steps": 0, "temperature_K": 300},
    }
    cfg["subsets"] = {"metas": []}
    path = tmp / "materials.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--configfile", str(path), "--directory", str(tmp), "--cores", "2"]
    targets = ["results/emt/table2.md", "results/emt/eos.md", "results/emt/md_summary.csv"]
    r = subprocess.run([*cmd, *targets], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "results" / "emt"


def test_pretrained_bases_never_train_and_the_store_aligns_energies_on_meta(campaign):
    ds = store.open_store(campaign / "predictions.zarr")
    split = json.loads((campaign / "split.json").read_text())
    assert split["roles"]["train"] == []
    assert not ds[keys.BASE_IN_SAMPLE].values.any()
    off = store.energy_offsets(ds)
    assert set(off) == {"chgnet", "sevennet"} and set(off["chgnet"]) == {28, 29}
    raw, aligned = ds[keys.BASE_ENERGY_RAW].values, ds[keys.BASE_ENERGY].values
    ref = ds[keys.ENERGY].values
    n = ds[keys.N_ATOMS].values
    meta = np.asarray(split["roles"]["meta"])
    # EMT's zero is far from DFT's: raw energies are off by eV/atom, aligned ones are not
    for m in range(2):
        assert np.abs((raw[m] - ref) / n)[meta].mean() > 0.5
        assert np.abs((aligned[m] - ref) / n)[meta].mean() < 0.2
    # each base's stress is in the store, against the reference's (ASE's sign, eV/Å³)
    s, ref_s = ds[keys.BASE_STRESS].values, ds[keys.STRESS].values
    assert s.shape == (2, len(ref), 3, 3)
    diag = [0, 1, 2], [0, 1, 2]
    assert np.corrcoef(s[0][:, *diag].ravel(), ref_s[:, *diag].ravel())[0, 1] > 0.5


def test_metrics_have_stress_and_per_element_groups_with_paired_comparisons(campaign):
    met = pd.read_csv(campaign / "metrics.csv")
    test = met[(met.split == "test") & (met.metric == "stress_mae")].set_index("model")
    assert {"chgnet", "sevennet", "mean", "best_base", "ensemble_direct"} <= set(test.index)
    assert (test.unit == "GPa").all() and (test.value > 0).all()
    # the meta takes CHGNet's stress (evaluation.stress_from)
    assert test.value["ensemble_direct"] == pytest.approx(test.value["chgnet"])
    grp = pd.read_csv(campaign / "metrics_by_group.csv")
    assert set(grp.group) == {"Cu", "Ni"}
    assert (grp[grp.reference.isna() | (grp.reference == "")].n_frames == 6).all()
    cmp = grp[(grp.reference == "best_base") & (grp.metric == "force_mae")]
    assert set(cmp.model) >= {"ensemble_direct", "mean", "chgnet", "sevennet"}
    assert (cmp.ci_low <= cmp.value).all() and (cmp.value <= cmp.ci_high).all()


def test_md_of_best_meta_starts_from_a_cell_of_the_chosen_element(campaign):
    info = json.loads((campaign / "md" / "best_meta" / "replica0.json").read_text())
    assert info["requested"] == "best_meta" and info["model"] == "ensemble_direct"
    assert info["start_formula"] == "Ni4"
    split = json.loads((campaign / "split.json").read_text())
    assert info["start_frame"] in split["roles"]["test"]
    summary = pd.read_csv(campaign / "md_summary.csv")
    assert set(summary.model) == {"ensemble_direct"}


def test_train_zero_with_a_base_that_trains_is_refused_before_anything_runs(tmp_path):
    from elmlff.config import load_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name = next(iter(cfg["datasets"]))
    cfg["datasets"][name]["split"] = {"sizes": {"train": 0, "meta": "rest", "val": 4}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ElmlffError, match=r"split.sizes.train is 0 but bases"):
        load_config(p)


def test_table2_has_every_element_metric_and_model_and_says_how_energies_were_aligned(campaign):
    text = (campaign / "table2.md").read_text()
    assert "| element | metric | " + " | ".join(TABLE2) + " |" in text
    for g in ("Cu", "Ni", "all"):
        row = re.search(rf"^\| {g} \| energy MAE \[meV/atom\] \|(.*)$", text, re.M).group(1)
        assert row.count("[") == len(TABLE2) - 1  # Ensemble-direct has no energy
    assert text.count("| | stress MAE [GPa] |") == 3 and text.count("| | force MAE [meV/Å] |") == 3
    assert "shifted by per-element offsets (eV/atom) fitted by least squares on the meta" in text
    assert "`chgnet`'s (`evaluation.stress_from: chgnet`)" in text
    assert re.search(r"^- Cu: ensemble_direct − best base \(\w+\) force MAE", text, re.M)
    # inference cost: every frame has 4 atoms, so ms/structure = 4 x ms/atom
    for b in ("chgnet", "sevennet"):
        per_s, per_a, mem = re.search(
            rf"^\| {b} \| ([\d.]+) \| ([\d.]+) \| \| (\d+) \|$", text, re.M
        ).groups()
        assert float(per_s) == pytest.approx(4 * float(per_a), rel=0.02, abs=0.1)
        assert int(mem) > 100  # MiB: a pretrained model is loaded
    direct = re.search(r"^\| ensemble_direct \| [\d.]+ \| [\d.]+ \| ([\d.]+) % \|", text, re.M)
    assert direct and float(direct.group(1)) < 100


def test_eos_of_pretrained_bases_is_near_wien2k_and_forces_only_models_are_left_out(campaign):
    eos = pd.read_csv(campaign / "eos.csv")
    assert set(eos.model) == {"chgnet", "sevennet", "mean"}  # no energy: no EOS
    assert set(eos.element) == {"Cu", "Ni"} and eos.relax_converged.all()
    # universal potentials trained on PBE: V0 within 10 % and B0 within 40 % of WIEN2k-PBE
    assert (eos.v0_error_percent.abs() < 10).all() and (eos.b0_error_percent.abs() < 40).all()
    mean = eos[eos.model == "mean"].set_index("element")
    both = eos[eos.model != "mean"].groupby("element").v0.agg(["min", "max"])
    assert ((mean.v0 >= both["min"] - 0.05) & (mean.v0 <= both["max"] + 0.05)).all()
    assert "V0 error [%]" in (campaign / "eos.md").read_text()
