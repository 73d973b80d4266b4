"""The SLURM tier: the workflow through snakemake-executor-plugin-slurm on a live single-node
cluster (../shared/tools/start-local-slurm.sh, fake GPUs). Run by tests/slurm/run-tier.sh,
which starts and stops the daemons; skipped unless ELMLFF_SLURM=1."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from test_workflow import smk, tiny_config

pytestmark = pytest.mark.slurm
PROFILE = ROOT / "tests" / "slurm" / "profile"


def slurm_ids(output: str) -> dict[str, list[int]]:
    """{rule or 'group NAME': [SLURM job ids]} from snakemake's submission lines."""
    out: dict[str, list[int]] = {}
    for jid, rule in re.findall(r"SLURM jobid (\d+) \(log: \S*?/rule_(\w+)/", output):
        out.setdefault(rule, []).append(int(jid))
    for jid, group in re.findall(r"SLURM jobid (\d+) \(log: \S*?/group_([a-z]+)_", output):
        out.setdefault(f"group {group}", []).append(int(jid))
    return out


def sacct_states(ids: list[int]) -> list[str]:
    r = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "State", "-j", ",".join(map(str, ids))],
        capture_output=True,
        text=True,
        check=True,
    )
    return [s.strip() for s in r.stdout.split()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config(root, ensemble=["schnet_tiny", "painn_tiny"])
    d = yaml.safe_load(cfg.read_text())
    d["training"]["max_epochs"] = 1
    d["run_metas"] = ["ensemble_direct"]
    # a study meta the campaign does not train on every base: its full set (k = 2) is trained
    # in the study too, so both k jobs run (as one SLURM job)
    d["subsets"]["metas"] = ["ensemble_direct_noblend"]
    d["md"]["models"] = []
    cfg.write_text(yaml.safe_dump(d))
    return cfg


def test_slurm_run_equals_local_run_groups_small_jobs_and_asks_for_gpus(tiny, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir()
    cluster.mkdir()
    smk("--configfile", str(tiny), "--directory", str(local), "--cores", "2")
    r = smk("--configfile", str(tiny), "--directory", str(cluster), "--profile", str(PROFILE))
    out = r.stdout + r.stderr
    ids = slurm_ids(out)
    assert set(ids) == {"prepare_dataset", "train_schnetpack", "group predict", "train_meta"} | {
        "predict_meta",
        "group subsets",
        "adversarial",  # runs the live bases: a cluster job; the uncertainty table is local
    }
    assert len(ids["train_schnetpack"]) == 2
    assert len(ids["group predict"]) == 1  # both bases' predictions in one SLURM job
    assert len(ids["group subsets"]) == 1  # the subset study's k = 1, 2 jobs in one SLURM job
    for light in ("merge_store", "baselines", "evaluate"):
        assert f"localrule {light}" in out  # not submitted
    assert all(s == "COMPLETED" for s in sacct_states([i for v in ids.values() for i in v]))
    job = subprocess.run(
        ["scontrol", "show", "job", str(ids["train_schnetpack"][0])], capture_output=True, text=True
    ).stdout
    assert "gres:gpu:1" in job  # the GPU rule asked the fake-GPU node for a GPU
    res = "results/methane"
    assert json.loads((local / res / "split.json").read_text()) == json.loads(
        (cluster / res / "split.json").read_text()
    )
    a, b = (pd.read_csv(d / res / "metrics.csv") for d in (local, cluster))
    assert a[["model", "split", "metric"]].equals(b[["model", "split", "metric"]])
    base = a.kind != "meta"
    pd.testing.assert_series_equal(a.value[base], b.value[base], rtol=1e-5)
    # a meta-model trains in float32 with the threads its job gets (the SLURM job has other
    # CPUs than the local one): reductions round differently, 2 epochs carry that to ~4e-4
    pd.testing.assert_series_equal(a.value[~base], b.value[~base], rtol=1e-2)
    a, b = (pd.read_csv(d / res / "uncertainty.csv") for d in (local, cluster))
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
    a, b = (pd.read_csv(d / res / "subsets.csv") for d in (local, cluster))
    assert a.subset.nunique() == 3 and a[["subset", "meta"]].equals(b[["subset", "meta"]])
    pd.testing.assert_series_equal(a.value, b.value, rtol=1e-2)


def test_failing_job_is_retried_and_a_broken_one_reported(tmp_path):
    snakefile = ROOT / "tests" / "slurm" / "retry.smk"
    base = [
        "python",
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile),
        "--directory",
        str(tmp_path),
        "--profile",
        str(PROFILE),
    ]
    r = subprocess.run([*base, "flaky.txt"], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert (tmp_path / "flaky.txt").read_text().strip() == "1000"  # second attempt's memory
    ids = slurm_ids(out)["flaky"]
    assert len(ids) == 2 and sacct_states(ids) == ["FAILED", "COMPLETED"]
    r = subprocess.run([*base, "broken.txt"], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Error in rule broken" in out and "this rule always fails" in out  # log shown
    assert sacct_states(slurm_ids(out)["broken"]) == ["FAILED", "FAILED"]  # retried once
