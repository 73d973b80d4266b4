"""The workflow through the snakemake CLI: dry run, lint, envs, a tiny end-to-end campaign."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import METHANE, ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(*args: str, cwd: Path = ROOT, check: bool = True, timeout: int = 900):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        )
    return r


def tiny_config(tmp: Path, **over) -> Path:
    """Methane with 2 tiny bases for 2 epochs each."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    ds = cfg["datasets"]["methane"]
    ds["path"] = str(METHANE)
    ds["split"]["sizes"] = {"train": 48, "meta": 24, "val": 16, "test": 24}
    tiny = {"n_atom_basis": 8, "n_interactions": 1, "cutoff": 4.0}
    cfg["bases"] = {
        "schnet_tiny": {
            "family": "schnetpack",
            "params": {"architecture": "schnet", "n_rbf": 6, **tiny},
        },
        "painn_tiny": {
            "family": "schnetpack",
            "params": {"architecture": "painn", "n_rbf": 6, **tiny},
        },
        "dp_tiny": {
            "family": "deepmd",
            "params": {
                "descriptor": "se_e2_a",
                "rcut": 4.0,
                "neuron": [4, 8],
                "axis_neuron": 2,
                "fitting_neuron": [8, 8],
            },
            "training": {"checkpoints": 2},
        },
        "nequip_tiny": {
            "family": "nequip",
            "params": {"cutoff": 4.0, "num_layers": 1, "num_features": 8, "radial_mlp_width": 8},
        },
        "nep_tiny": {"family": "nep"},
    }
    # NEP is requested too: without GPUMD it must leave the DAG with one message
    cfg["ensemble"] = ["schnet_tiny", "painn_tiny", "dp_tiny", "nequip_tiny", "nep_tiny"]
    cfg["training"].update(max_epochs=2, batch_size=16)
    cfg["evaluation"]["bootstrap"] = 50
    cfg["evaluation"]["hvp"] = True
    small = {"max_epochs": 2, "batch_size": 8}
    for meta in cfg["metas"].values():
        meta["training"] = {**meta["training"], **small}
        if meta["kind"] == "conserv":
            meta["params"].update(scalars=4, vectors=2, layers=1)
        else:
            meta["params"].update(hidden=8, layers=1, heads=2)
    # a 50-step MD of a base and of the conservative ensemble (the latter only where it runs)
    cfg["md"] = {
        "models": ["schnet_tiny", "ensemble_conserv"],
        "replicas": 1,
        "settings": {"steps": 50, "record_every": 10, "temperature_K": 300},
    }
    cfg["uncertainty"]["adversarial"] = {"starts": 2, "steps": 3, "max_step": 0.02}
    cfg["uncertainty"]["reference"] = "ase.calculators.emt:EMT"  # labels the samples (H, C)
    cfg["uncertainty"]["select"] = {"top": 5}
    cfg["subsets"]["method"] = "dedicated"  # the amortized method: a follow-up of the campaign
    for k, v in over.items():
        cfg[k] = v
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_lists_the_default_campaign():
    r = smk("-n", "--forceall", "--quiet", "rules")  # every job, whatever results/ holds
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts == {
        "all": "1",
        "prepare_dataset": "1",
        "train_schnetpack": "4",
        "predict_schnetpack": "4",
        "train_deepmd": "3",
        "predict_deepmd": "3",
        "train_nequip": "1",
        "predict_nequip": "1",
        "merge_store": "1",
        "train_meta": "6",
        "predict_meta": "6",
        "baselines": "1",
        "evaluate": "1",
        "train_subsets": "7",  # one per k: the calibration sample, 3 per k (k = 8: train_meta's)
        "train_subsets_amortized": "1",  # one model over random subsets predicts all 255
        "subset_table": "1",
        "force_rmse_figure": "1",
        "force_rmse_campaign": "1",
        "learning_curves_figure": "1",
        "subset_raincloud": "1",
        "parity_figure": "1",
        "metrics_table": "1",
        "campaign_summary": "1",
        "findings": "1",
        "table_html": "4",
        "uncertainty": "1",
        "uncertainty_figure": "1",
        "adversarial": "1",
        "select_for_labelling": "1",
        "md_replica": "5",  # 5 models x 1 replica
        "md_summary": "1",
        "md_hr_figure": "1",
        "total": "65",
    }


def test_md_of_bases_mean_and_direct_does_not_wait_for_ensemble_conserv():
    """The critical path: MD of the bases, the baselines and Ensemble-direct needs the bases'
    val RMSEs (the baselines rule), not evaluate, so it runs while Ensemble-conserv trains."""
    md = "results/methane/md/{}/replica0.json"
    models = ["painn", "mean", "ensemble_direct", "ensemble_conserv"]
    r = smk("--dag", "--forceall", *(md.format(m) for m in models))
    label = dict(re.findall(r'^\s*(\d+)\[label = "([^"]*)"', r.stdout, re.M))
    parents: dict[str, set[str]] = {}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", r.stdout, re.M):
        parents.setdefault(b, set()).add(a)

    def upstream(node: str) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            for p in parents.get(todo.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return {label[n].replace("\\n", " ") for n in seen}

    # a label names only wildcards new against the job's inputs: painn's MD (whose model
    # wildcard its train job has) is the md_replica without one
    md_jobs = {n: t for n, t in label.items() if t.startswith("md_replica")}
    roots = {(re.findall(r"model: (\w+)", t) or ["painn"])[0]: n for n, t in md_jobs.items()}
    assert set(roots) == set(models)
    conserv = "train_meta meta: ensemble_conserv subset: all"
    for m in ["painn", "mean", "ensemble_direct"]:
        up = upstream(roots[m])
        assert "baselines" in up and "merge_store" in up
        assert not {"evaluate", conserv} & up, (m, sorted(up))
    assert conserv in upstream(roots["ensemble_conserv"])


def test_settings_reach_only_the_rules_they_steer(tmp_path):
    """`subsets.amortized_training` reaches the amortized model's spec and not the dedicated
    calibration models'; `rmse_axis: log` draws that data set's force RMSE on a log axis; and
    the data stage is handed the data keys only (an MD or figure setting must not reread the
    data and retrain every base)."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "subsets": {"amortized_training": {"max_epochs": 7, "patience": 3}},
                "datasets": {"methane": {"rmse_axis": "log"}},
            }
        )
    )
    r = smk(
        "-n", "-p", "--forceall", "--configfile", str(ROOT / "config" / "config.yaml"), str(overlay)
    )
    shells = [
        x.split("Shell command: ", 1)[1] for x in r.stdout.splitlines() if "Shell command: " in x
    ]

    def spec(cmd: str) -> dict:
        words = shlex.split(cmd)
        return json.loads(words[words.index("--spec") + 1])

    amortized = [spec(c) for c in shells if "train-subsets --amortized" in c]
    dedicated = [spec(c) for c in shells if "train-subsets --spec" in c]
    assert len(amortized) == 1 and len(dedicated) == 7  # k = 1..7; the full set is train_meta's
    assert amortized[0]["training"]["max_epochs"] == 7 and amortized[0]["training"]["patience"] == 3
    assert {d["training"]["max_epochs"] for d in dedicated} == {200}
    plots = [c for c in shells if "plot-rmse" in c]
    assert plots and all("--log methane" in c for c in plots)
    (prepare,) = [spec(c) for c in shells if " prepare " in c]
    assert set(prepare) == {"format", "path", "units", "parts", "pbc", "split"}


def test_the_readme_tables_can_be_asked_for_by_name(tmp_path):
    """`make readme-table` asks snakemake for summary.md and findings.md by name: their inputs
    include the benchmark file of every meta (train_meta_ensemble_conserv_energy_all), which
    must not parse as meta ensemble_conserv with a subset named energy_all."""
    cfg = tiny_config(tmp_path)
    assert "ensemble_conserv_energy" in yaml.safe_load(cfg.read_text())["run_metas"]
    targets = ["results/methane/summary.md", "results/methane/findings.md"]
    r = smk("-n", *targets, "--directory", str(tmp_path), "--configfile", str(cfg), check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert "subset 'energy_all'" not in r.stdout + r.stderr


def test_paper_scale_dry_run_lists_the_same_stages():
    r = smk(
        "-n",
        "--forceall",
        "--quiet",
        "rules",
        "--configfile",
        str(ROOT / "config" / "campaigns" / "paper.yaml"),
    )
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts["train_schnetpack"] == "4" and counts["train_deepmd"] == "3"
    assert counts["train_nequip"] == "1" and counts["md_replica"] == str(14 * 5)
    # one job per k of every subset; the full set (k = 8) is train_meta's model
    assert counts["train_subsets"] == "7" and counts["total"] == "129"


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "rmd17").exists(), reason="needs ../shared/data/rmd17"
)
@pytest.mark.parametrize("overlay", ["md17", "md17_laptop"])
def test_md17_dry_run_lists_every_job(overlay):
    """Table 1's campaign: four molecules x six bases of five families (DimeNet and the
    direct-force base included), both metas, the 63-subset study, MD and Table 1 itself."""
    cfg = str(ROOT / "config" / "campaigns" / f"{overlay}.yaml")
    r = smk("-n", "--forceall", "--quiet", "rules", "--configfile", cfg)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    for family in ("deepmd", "dimenet", "nequip", "orb_direct"):
        assert counts[f"train_{family}"] == "4" and counts[f"predict_{family}"] == "4"
    assert counts["train_schnetpack"] == "8" and counts["train_meta"] == "8"
    # per molecule one job per k below 6: the full set's model is train_meta's
    assert counts["train_subsets"] == "20" and counts["table1"] == "1"
    replicas = {"md17": 5, "md17_laptop": 2}[overlay]
    models = {"md17": 10, "md17_laptop": 8}[overlay]  # laptop: bases and metas only
    assert counts["md_replica"] == str(4 * models * replicas)


def test_profiles_validate_and_size_gpu_jobs_by_attempt(tmp_path):
    """Both profiles parse; the SLURM one names no model family (the rules take each family's
    resources from its record) and dry-runs (minus conda, which this machine lacks): training
    gets one GPU with memory and runtime that grow with each attempt, and the predictions of
    every base travel as one group job; the meta-models, the subset study and MD get a GPU and
    the config's device."""
    for name in ("default", "slurm"):
        prof = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
        assert isinstance(prof, dict) and prof
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm" and slurm["software-deployment-method"] == "conda"
    assert slurm["retries"] >= 1 and "slurm_partition" in slurm["default-resources"]
    from elmlff.bases import FAMILIES

    rules = {f"{kind}_{fam}" for fam in FAMILIES for kind in ("train", "predict")}
    assert not rules & set(slurm["set-resources"]), "family resources belong to the records"
    assert not any(g.split("=")[0] in rules for g in slurm.get("groups", []))
    nequip = FAMILIES["nequip"].train_resources
    assert nequip.gpu == 1
    for attempt in (1, 3):  # what the rule asks for at each attempt
        res = {k: v(None, attempt) if callable(v) else v for k, v in nequip.rule().items()}
        assert res["mem_mb"] == nequip.mem_mb * attempt
        assert res["runtime"] == nequip.runtime * attempt
    del slurm["software-deployment-method"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(slurm))
    r = smk("-n", "--forceall", "--profile", str(tmp_path))
    block = r.stdout.split("rule train_nequip:", 1)[1].split("Shell command", 1)[0]
    res = set(re.search(r"resources: (.*)", block).group(1).split(", "))
    assert {
        "gpu=1",
        f"cpus_per_gpu={nequip.cpus_per_gpu}",
        f"mem_mb={nequip.mem_mb}",
        f"runtime={nequip.runtime}",
    } <= res
    # the meta-models, the subset study and MD ask for a GPU and run on it (`device: auto`)
    for rule in ("train_meta", "predict_meta", "train_subsets_amortized", "md_replica"):
        job, shell = r.stdout.split(f"rule {rule}:", 1)[1].split("Shell command", 1)
        assert "gpu=1" in re.search(r"resources: (.*)", job).group(1).split(", "), rule
        assert "--device auto " in shell.splitlines()[0], rule
    # the eight prediction jobs travel to SLURM as one group job
    assert len(re.findall(r"Group job predict\b", r.stdout + r.stderr)) == 1
    assert len(re.findall(r"Group job predict_meta\b", r.stdout + r.stderr)) == 1


def test_lint_is_clean():
    r = smk("--lint", check=False)
    assert "Congratulations, your workflow is in a good condition!" in r.stdout + r.stderr


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_every_model_rule_names_an_existing_conda_env_pinned_like_the_venv():
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    bases = (ROOT / "workflow" / "rules" / "bases.smk").read_text()
    # the per-family rules run in their record's env file (envs/{family}.yaml)
    assert len(re.findall(r"conda:\s+family_env\(_family\)", bases)) == 2
    assert "FAMILIES[family].env_file" in bases  # family_env() returns the record's file
    assert set(re.findall(r'env_file\("(\w+)"\)', text)) == {"elmlff", "meta"}
    from elmlff.bases import FAMILIES

    local = _pins((ROOT / "envs" / "pip" / "constraints.txt").read_text().splitlines())
    envs = {"elmlff": None, "meta": None} | {f: rec.distribution for f, rec in FAMILIES.items()}
    for env, dist in envs.items():
        path = ROOT / (FAMILIES[env].env_file if env in FAMILIES else f"envs/{env}.yaml")
        deps = yaml.safe_load(path.read_text())["dependencies"]
        pins = _pins(next(d for d in deps if isinstance(d, dict))["pip"])
        assert pins["torch"] == "2.13.0", path
        for pkg, version in pins.items():
            if pkg in local:
                assert version == local[pkg], f"{path}: {pkg}=={version}, venv has {local[pkg]}"
        if dist is not None:
            assert dist in pins, f"{path} does not install {dist}"


def test_family_envs_provide_every_distribution_their_adapter_imports():
    """Each family's rules run `python -m elmlff` in envs/<family>.yaml: it must install what
    the adapter and the core package import."""
    import ast
    import importlib.metadata as md
    import sys as _sys

    from elmlff.bases import FAMILIES

    dists = md.packages_distributions()
    src = ROOT / "src" / "elmlff"

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        top = {m.split(".")[0] for m in mods} - {"elmlff", "__future__"}
        top -= set(_sys.stdlib_module_names)
        return {d.lower().replace("_", "-") for m in top for d in dists.get(m, [m])}

    core = set().union(
        *(imported(p) for p in src.glob("*.py")),
        *(imported(p) for p in (src / "data").glob("*.py")),
        imported(src / "bases" / "__init__.py"),
    )
    core -= {"matplotlib", "seaborn"}  # figures run in envs/elmlff.yaml only

    def adapter(rec) -> Path:  # the file of the record's entry point
        return ROOT / "src" / (rec.entry.split(":")[0].replace(".", "/") + ".py")

    for rec in FAMILIES.values():
        env = yaml.safe_load((ROOT / rec.env_file).read_text())["dependencies"]
        pins = set(_pins(next(d for d in env if isinstance(d, dict))["pip"]))
        missing = sorted((core | imported(adapter(rec)) | {rec.distribution}) - pins)
        assert not missing, f"{rec.env_file} lacks {missing}"
    # the meta env runs every differentiable (torch) base live beside torch-geometric and e3nn
    env = yaml.safe_load((ROOT / "envs" / "meta.yaml").read_text())["dependencies"]
    pins = set(_pins(next(d for d in env if isinstance(d, dict))["pip"]))
    need = core.union(*(imported(p) for p in (src / "meta").glob("*.py")))
    torch_bases = [rec for rec in FAMILIES.values() if rec.differentiable]
    need |= set().union(*(imported(adapter(rec)) | {rec.distribution} for rec in torch_bases))
    assert not sorted(need - pins), f"envs/meta.yaml lacks {sorted(need - pins)}"


def test_bad_config_stops_the_workflow_with_one_line(tmp_path):
    cfg = tiny_config(tmp_path, ensemble=["schnet_tiny", "nope"])
    r = smk("-n", "--configfile", str(cfg), "--directory", str(tmp_path), check=False)
    assert r.returncode != 0
    assert "unknown base name(s) ['nope']; fix:" in r.stdout + r.stderr


def test_missing_data_path_stops_the_workflow_with_one_line(tmp_path):
    cfg = tiny_config(tmp_path)
    d = yaml.safe_load(cfg.read_text())
    d["datasets"]["methane"]["path"] = str(tmp_path / "no_such_data")
    cfg.write_text(yaml.safe_dump(d))
    r = smk("-n", "--configfile", str(cfg), "--directory", str(tmp_path), check=False)
    assert r.returncode != 0
    assert re.search(
        r"datasets.methane.path: \S+no_such_data not found .*; fix: ", r.stdout + r.stderr
    )


def test_kfold_cross_fitting_fans_out_one_base_per_fold(tmp_path):
    cfg = tiny_config(tmp_path)
    d = yaml.safe_load(cfg.read_text())
    d["datasets"]["methane"]["split"]["kfold"] = 3
    d["run_metas"] = ["ensemble_direct", "ensemble_conserv"]  # in-sample needs kfold 0
    cfg.write_text(yaml.safe_dump(d))
    r = smk("-n", "--quiet", "rules", "--configfile", str(cfg), "--directory", str(tmp_path))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts["train_schnetpack"] == "6" and counts["predict_schnetpack"] == "6"
    assert counts["merge_store"] == "1"


@pytest.mark.slow
def test_tiny_campaign_end_to_end(tmp_path):
    cfg = tiny_config(tmp_path)
    r = smk("--configfile", str(cfg), "--directory", str(tmp_path), "--cores", "2")
    assert (r.stdout + r.stderr).count("base 'nep_tiny' left out of this run: GPUMD's") == 1
    res = tmp_path / "results" / "methane"
    split = json.loads((res / "split.json").read_text())
    assert {r: len(v) for r, v in split["roles"].items()} == {
        "train": 48,
        "meta": 24,
        "val": 16,
        "test": 24,
    }
    from elmlff import keys, store

    ds = store.open_store(res / "predictions.zarr")
    assert ds["model"].values.tolist() == ["schnet_tiny", "painn_tiny", "dp_tiny", "nequip_tiny"]
    assert ds[keys.BASE_FORCES].shape == (4, 112 * 5, 3)
    assert np.isfinite(ds[keys.BASE_FORCES].values).all()
    # Hessian-vector products along one seeded direction per frame, equal to a fresh one
    assert ds[keys.BASE_HVP].shape == ds[keys.BASE_FORCES].shape
    assert np.isfinite(ds[keys.BASE_HVP].values).all()
    from elmlff import bases as B

    f0 = store.frames_from_dataset(ds, [0])
    v0 = ds[keys.HVP_DIRECTION].values[:5]
    assert np.linalg.norm(v0) == pytest.approx(1.0)
    pot = B.load(res / "bases" / "dp_tiny" / "full" / "model")
    np.testing.assert_allclose(
        ds[keys.BASE_HVP].sel(model="dp_tiny").values[:5], B.hvp(pot, f0, v0), atol=1e-8
    )
    # no meta, val or test frame was in a base's training data; train frames were
    ins = ds[keys.BASE_IN_SAMPLE].values
    lab = ds[keys.SPLIT].values
    assert ins[:, lab == "train"].all() and not ins[:, lab != "train"].any()
    for m in ds["model"].values:
        info = json.loads((res / "bases" / m / "full" / "model" / "base.json").read_text())
        assert set(info["trained_on"]) == set(split["roles"]["train"])
        assert set(info["validated_on"]) == set(split["roles"]["val"])
    df = pd.read_csv(res / "metrics.csv")
    test = df[(df.split == "test") & (df.metric == "force_rmse_framemean")]
    assert set(test.model) == {
        "schnet_tiny",
        "painn_tiny",
        "dp_tiny",
        "nequip_tiny",
        "best_base",
        "mean",
        "weighted_mean",
        "linear_stacking",
        "ensemble_direct",
        "ensemble_direct_insample",
        "ensemble_direct_insample_reference",
        "ensemble_direct_noblend",
        "ensemble_conserv",
        "ensemble_conserv_energy",
    }
    assert (test.value > 0).all() and (test.ci_low <= test.value).all()
    # metas: Ensemble-direct has no energy, Ensemble-conserv has one
    rows = df[(df.split == "test") & df.metric.str.startswith("energy")]
    assert "ensemble_direct" not in set(rows.model) and "ensemble_conserv" in set(rows.model)
    assert set(df[df.kind == "meta"].split) == {"val", "test"}
    # no test frame entered meta training or validation; out-of-sample metas learned from frames
    # no base trained on; the in-sample ablation from the bases' own training frames
    roles = {r: set(v) for r, v in split["roles"].items()}
    base_train = set(info["trained_on"])  # every base trained on the train role (checked above)
    for name in ("ensemble_direct", "ensemble_direct_insample", "ensemble_conserv"):
        mi = json.loads((res / "metas" / name / "all" / "model" / "meta.json").read_text())
        assert not set(mi["trained_on"]) & (roles["test"] | roles["val"])
        assert set(mi["validated_on"]) == roles["val"]
        if name.endswith("insample"):
            assert set(mi["trained_on"]) <= base_train and len(mi["trained_on"]) == 24
        else:
            assert set(mi["trained_on"]) == roles["meta"] and not set(mi["trained_on"]) & base_train
    # the reference code's shortcut: all the bases' training frames, early stopping in-sample
    mi = json.loads(
        (
            res / "metas" / "ensemble_direct_insample_reference" / "all" / "model" / "meta.json"
        ).read_text()
    )
    assert set(mi["trained_on"]) | set(mi["validated_on"]) == base_train
    assert not set(mi["trained_on"]) & set(mi["validated_on"])
    mi = json.loads(
        (res / "metas" / "ensemble_conserv" / "all" / "model" / "meta.json").read_text()
    )
    assert mi["bases_in_training"] == "live" and mi["models"] == list(ds["model"].values)
    log = (tmp_path / "logs" / "methane" / "metas" / "train_ensemble_conserv_all.log").read_text()
    assert "epoch 2/2" in log
    # any trained model is an ASE calculator; it reproduces the workflow's test predictions
    from elmlff.calculator import EnsembleCalculator
    from elmlff.loader import load_ensemble

    f_test = split["roles"]["test"][0]
    atoms = store.frames_from_dataset(ds, [f_test]).to_atoms()[0]
    for name in ("ensemble_conserv", "ensemble_direct"):
        z = np.load(res / "metas" / name / "all" / "predictions.npz")
        k = int(np.flatnonzero(z["frames"] == f_test)[0])
        atoms.calc = EnsembleCalculator(load_ensemble(res, name))
        np.testing.assert_allclose(atoms.get_forces(), z["forces"][5 * k : 5 * k + 5], atol=1e-5)
        assert atoms.calc.results["force_std_max"] > 0
    # MD: a trajectory per model and a summary row each (Table 1 from the CSV)
    from ase.io import read

    traj = read(res / "md" / "ensemble_conserv" / "replica0.extxyz", index=":")
    assert len(traj) == 6 and traj[-1].info["time_ps"] == pytest.approx(0.025)
    assert traj[-1].info["force_std_max"] > 0
    md = pd.read_csv(res / "md_summary.csv")
    agg = md[(md.replica == "all") & (md.metric == "stable_percent")]
    assert set(agg.model) == {"schnet_tiny", "ensemble_conserv"}
    table = (res / "md_table.md").read_text()
    assert "| ensemble_conserv |" in table
    from elmlff.md.run import MDSettings

    assert f"radius {MDSettings().loop_radius:g} Å" in table  # from the runs, not typed in
    assert (res / "figures" / "md_hr.png").read_bytes()[:4] == b"\x89PNG"
    atoms.calc = EnsembleCalculator(load_ensemble(res, "mean", subset="schnet_tiny+dp_tiny"))
    mean = ds[keys.BASE_FORCES].sel(model=["schnet_tiny", "dp_tiny"]).values.mean(0)
    np.testing.assert_allclose(atoms.get_forces(), mean[5 * f_test : 5 * f_test + 5], atol=1e-5)
    # the baselines were fitted on the meta split only
    bl = json.loads((res / "baselines.json").read_text())
    assert bl["fit_on"] == "meta" and bl["n_fit_frames"] == 24
    # the bases' val force RMSEs MD weights by (baselines rule) are evaluate's (metrics.csv)
    m = pd.read_csv(res / "metrics.csv")
    v = m[(m.kind == "base") & (m.split == "val") & (m.metric == "force_rmse")]
    assert set(bl["val_force_rmse"]) == set(v.model)
    for _, r in v.iterrows():
        assert bl["val_force_rmse"][r.model] == pytest.approx(r.value, rel=1e-6)
    png = res / "figures" / "force_rmse.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "linear stacking" in (res / "metrics_table.md").read_text()
    summary = (res / "summary.md").read_text()
    # epochs run / best; 2-epoch bases barely learn: the flag follows learned_ratio exactly
    flag = r"( \*\*\(learned nothing\)\*\*)?"
    assert re.search(rf"\| schnet_tiny{flag} \| base \| schnetpack 2.2.0 \| 2 / [12] \|", summary)
    assert re.search(rf"\| dp_tiny{flag} \| base \| deepmd-kit 3.2.0 \|", summary)
    m = pd.read_csv(res / "metrics.csv")
    b = m[(m.kind == "base") & (m.split == "test") & (m.metric == "force_rmse")]
    assert ((b.learned_ratio >= 0.5) == b.flag.fillna("").str.startswith("learned nothing")).all()
    for _, r in b.iterrows():
        assert (f"| {r.model} **(learned nothing)** |" in summary) == (r.learned_ratio >= 0.5)
    # every meta against the best base, linear stacking and the mean: paired intervals
    comp = pd.read_csv(res / "comparisons.csv")
    cols = ["dataset", "model", "reference", "split", "metric", "difference", "lo", "hi"]
    assert list(comp.columns[:8]) == cols
    assert set(comp.reference) == {"best_base", "linear_stacking", "mean"}
    assert (comp.lo <= comp.difference).all() and (comp.difference <= comp.hi).all()
    assert "Paired differences meta − reference" in summary
    assert "flag" in pd.read_csv(res / "metrics.csv").columns
    # the README's results prose: generated, every verdict from comparisons.csv, metric named
    found = (res / "findings.md").read_text()
    assert "**Accuracy** (test force RMSE (frame mean, Eq. 9)" in found
    verdicts = {"better": "is lower than", "worse": "is higher than"}
    verdicts["indistinguishable"] = "cannot be told apart from"
    headline = {"ensemble_direct", "ensemble_conserv"}  # the metas that are no ablation
    for meta, rows in comp[comp.metric == "force_rmse_framemean"].groupby("model"):
        said = found.split(f"`{meta}`: ", 1)[1].split(". ", 1)[0] if meta in headline else ""
        for _, r in rows.iterrows():  # each headline meta's sentence holds its own verdicts
            assert (f"{verdicts[r.verdict]} {r.reference}'s" in said) == (meta in headline)
    from elmlff.summary import splice

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- summary:methane -->\nold\n<!-- /summary:methane -->\nb\n")
    splice(readme, "summary:methane", summary)
    text = readme.read_text()
    assert text.startswith("a\n<!-- summary:methane -->\n") and text.endswith("-->\nb\n")
    assert "\nold\n" not in text and "| dp_tiny" in text
    assert (res / "benchmarks" / "train_painn_tiny_full.tsv").exists()
    assert "epoch 2/2" in (tmp_path / "logs" / "methane" / "train_painn_tiny_full.log").read_text()
    # the subset study: every non-empty subset of the 4 bases, one job per k, beside the
    # baselines of the same bases
    sub = pd.read_csv(res / "subsets.csv")
    t = sub[(sub.split == "test") & (sub.metric == "force_rmse_framemean")]
    metas = t[t.kind == "meta"]
    assert set(metas.meta) == {"ensemble_direct"} and metas.subset.nunique() == 15
    assert metas.groupby("k").size().to_dict() == {1: 4, 2: 6, 3: 4, 4: 1}
    for b in ("best_base", "mean", "weighted_mean", "linear_stacking"):
        assert t[t.meta == b].subset.nunique() == 15
    base = test.set_index("model").value
    single = t[(t.meta == "mean") & (t.k == 1)].set_index("subset").value
    for m, v in single.items():  # the mean of one base is that base (metrics.csv, by hand)
        assert v == pytest.approx(base[m], rel=1e-9)
    whole = t[(t.meta == "mean") & (t.subset == "all")].value.iloc[0]
    assert whole == pytest.approx(base["mean"], rel=1e-9)
    # a subset trained in its group equals the same subset trained alone by train_meta
    one = "schnet_tiny+dp_tiny"
    smk(
        "--configfile",
        str(cfg),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        f"results/methane/metas/ensemble_direct/{one}/predictions.npz",
    )
    alone = np.load(res / "metas" / "ensemble_direct" / one / "predictions.npz")
    group = np.load(res / "subsets" / "ensemble_direct" / "k2" / "predictions.npz")
    i = group["subsets"].tolist().index(one)
    np.testing.assert_array_equal(alone["frames"], group["frames"])
    np.testing.assert_allclose(alone["forces"], group["forces"][i], atol=1e-4)
    # any subset model of the study is an ASE calculator too
    other = "painn_tiny+nequip_tiny"
    j = group["subsets"].tolist().index(other)
    atoms = store.frames_from_dataset(ds, [int(group["frames"][0])]).to_atoms()[0]
    atoms.calc = EnsembleCalculator(load_ensemble(res, "ensemble_direct", subset=other))
    np.testing.assert_allclose(atoms.get_forces(), group["forces"][j][:5], atol=1e-4)
    info = json.loads((res / "subsets" / "ensemble_direct" / "k2" / "info.json").read_text())
    # a size's models on small graphs train as one vmapped group in their job, on a CPU too
    # (elmlff.meta.group.vmap_pays)
    assert info["subsets"][one]["trained_with"] == len(info["subsets"]) > 1
    assert set(info["trained_on"]) == set(split["roles"]["meta"])
    # uncertainty of the bases on the test frames, and the same from an extxyz file built from
    # the store and scored by the command line
    u = pd.read_csv(res / "uncertainty.csv")
    test_idx = np.sort(split["roles"]["test"])
    assert u.frame.tolist() == test_idx.tolist()
    assert {"U0", "U1", "U2", "std_max", "dF", "force_delta", "rmse_direct"} <= set(u.columns)
    uq = json.loads((res / "uncertainty_summary.json").read_text())
    assert sum(uq["weights"].values()) == pytest.approx(1.0)
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from elmlff.cli import main as cli

    fr = store.frames_from_dataset(ds)
    out = []
    for f, atoms in zip(test_idx, fr.subset(test_idx).to_atoms(), strict=True):
        a = fr.atom_index([f])
        for m in ds["model"].values:
            atoms.arrays[f"forces_{m}"] = ds[keys.BASE_FORCES].sel(model=m).values[a]
        atoms.calc = SinglePointCalculator(atoms, forces=fr.forces[a])
        out.append(atoms)
    write(tmp_path / "test.extxyz", out, format="extxyz")
    val = df[(df.split == "val") & (df.metric == "force_rmse")].set_index("model").value
    rmse = [f"{m}={float(val[m])!r}" for m in ds["model"].values]
    scored = tmp_path / "scored.csv"
    assert (
        cli(["uq", "score", str(tmp_path / "test.extxyz"), "--out", str(scored), "--rmse", *rmse])
        == 0
    )
    got = pd.read_csv(scored)
    for col in ("U0", "U1", "U2", "std_mean", "std_max", "dF", "dF_w"):
        np.testing.assert_allclose(got[col], u[col], rtol=1e-5, atol=1e-7)
    # adversarial samples through the live bases, labelled by the configured reference
    # calculator (ASE's EMT here), and the most uncertain frames of them and of the ensemble's
    # MD, ready for labelling
    adv = pd.read_csv(res / "uq" / "adversarial.csv")
    assert len(adv) == 2 * 4 and set(adv.start_frame) <= set(test_idx.tolist())
    assert (adv.dF > 0).all()
    summary_adv = json.loads((res / "uq" / "adversarial.json").read_text())
    assert summary_adv["reference"] == "ase.calculators.emt:EMT" and "note" not in summary_adv
    assert summary_adv["spearman_U1_dF"]["n"] == 8 and summary_adv["U_end_mean"] > 0
    picked = read(res / "uq" / "to_label.extxyz", index=":")
    assert len(picked) == 5
    u_sel = [a.info["U_selected"] for a in picked]
    assert u_sel == sorted(u_sel, reverse=True)
    # the ensemble's MD recorded U every frame, and the summary says when U crossed U_c
    md_traj = read(res / "md" / "ensemble_conserv" / "replica0.extxyz", index=":")
    assert all(a.info["uncertainty"] > 0 for a in md_traj)
    rep = json.loads((res / "md" / "ensemble_conserv" / "replica0.json").read_text())
    assert rep["u_threshold"] > 0 and "loop_work_eV" in rep
    assert abs(rep["loop_work_eV"]) < 1e-4 and rep["nve_drift_eV_per_atom_ps"] is not None
    # every figure and table, then redrawn from results/ alone: only figure rules run
    figures = [
        tmp_path / "results" / "figures" / "force_rmse.png",
        png,
        res / "figures" / "subsets_raincloud.png",
        res / "figures" / "parity.png",
        res / "figures" / "md_hr.png",
        res / "figures" / "uncertainty.png",
        res / "figures" / "learning_curves.png",
    ]
    tables = [
        res / "report" / f"{t}.html" for t in ("metrics_table", "summary", "md_table", "findings")
    ]
    for f in figures:
        assert f.stat().st_size > 10_000 and f.read_bytes()[:4] == b"\x89PNG", f
    for f in tables:
        assert "<table>" in f.read_text(), f
    assert "Subset study `ensemble_direct`" in summary and "14 subset models in" in summary
    assert "The full set's model is `train_meta`'s" in summary  # the 15th
    for f in [*figures, *tables]:
        f.unlink()
    (res / "figures").rmdir()
    changed = yaml.safe_load(cfg.read_text())
    changed["training"]["lr"] = 0.5
    cfg_changed = tmp_path / "changed.yaml"
    cfg_changed.write_text(yaml.safe_dump(changed))
    r = smk(
        "figures",
        "--profile",
        str(ROOT / "profiles" / "figures"),
        "--configfile",
        str(cfg_changed),  # a changed training setting must not retrain anything here
        "--directory",
        str(tmp_path),
    )
    ran = set(re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, re.M))
    assert ran and ran <= {
        "figures",
        "force_rmse_figure",
        "force_rmse_campaign",
        "subset_raincloud",
        "parity_figure",
        "md_hr_figure",
        "learning_curves_figure",
        "table_html",
        "uncertainty_figure",
    }, ran
    assert all(f.exists() for f in [*figures, *tables])
    report = tmp_path / "report.html"
    smk(
        "--report",
        str(report),
        "--configfile",
        str(cfg_changed),
        "--directory",
        str(tmp_path),
    )
    assert report.stat().st_size > 100_000
    # the amortized method over the same campaign: one model over random subsets predicts all
    # 15 subsets; the dedicated jobs now train a calibration sample (one per k), compared in
    # subsets_calibration.csv; nothing else reruns
    amort = yaml.safe_load(cfg.read_text())
    amort["subsets"].update(method="amortized", calibrate=1)
    cfg_amort = tmp_path / "amortized.yaml"
    cfg_amort.write_text(yaml.safe_dump(amort))
    r = smk("--configfile", str(cfg_amort), "--directory", str(tmp_path), "--cores", "2")
    ran = set(re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, re.M))
    assert "train_subsets_amortized" in ran, ran
    assert not ran & {"train_schnetpack", "train_meta", "merge_store", "md_replica"}, ran
    sub = pd.read_csv(res / "subsets.csv")
    t = sub[(sub.split == "test") & (sub.metric == "force_rmse_framemean") & (sub.kind == "meta")]
    assert t[t.method == "amortized"].subset.nunique() == 15
    assert t[t.method == "dedicated"].groupby("k").size().to_dict() == {1: 1, 2: 1, 3: 1, 4: 1}
    cal = pd.read_csv(res / "subsets_calibration.csv")
    head = cal[cal.subset == "summary"].set_index("quantity").value
    assert head["n_subsets"] == 4 and -1 <= head["spearman_rho"] <= 1
    assert head["worst_relative_gap"] == pytest.approx(
        cal[cal.quantity == "relative_gap"].value.max()
    )
    # a subset with no dedicated model runs through the amortized model with only its bases
    amz = np.load(res / "subsets" / "ensemble_direct" / "amortized" / "predictions.npz")
    k2 = json.loads((res / "subsets" / "ensemble_direct" / "k2" / "info.json").read_text())
    other = next(n for n in amz["subsets"].tolist() if n.count("+") == 1 and n not in k2["subsets"])
    j = amz["subsets"].tolist().index(other)
    ens = load_ensemble(res, "ensemble_direct", subset=other)
    assert [p.name for p in ens.bases] == other.split("+")
    atoms = store.frames_from_dataset(ds, [int(amz["frames"][0])]).to_atoms()[0]
    atoms.calc = EnsembleCalculator(ens)
    np.testing.assert_allclose(atoms.get_forces(), amz["forces"][j][:5], atol=1e-4)
    summary = (res / "summary.md").read_text()
    assert "amortized method (one model over random subsets" in summary
    assert "Spearman ρ" in summary and (res / "figures" / "subsets_raincloud.png").exists()


@pytest.mark.slow
def test_tiny_kfold_campaign_learns_from_out_of_fold_predictions(tmp_path):
    cfg = tiny_config(tmp_path, ensemble=["schnet_tiny"])
    d = yaml.safe_load(cfg.read_text())
    d["datasets"]["methane"]["split"]["kfold"] = 2
    d["training"]["max_epochs"] = 1
    d["run_metas"] = ["ensemble_direct", "ensemble_conserv"]  # in-sample needs kfold 0
    # the subset study of a conserv meta too (one base: the one subset 'all'), through the
    # fold-specific live bases
    d["subsets"] = {"metas": ["ensemble_direct", "ensemble_conserv"], "select": "all"}
    cfg.write_text(yaml.safe_dump(d))
    smk("--configfile", str(cfg), "--directory", str(tmp_path), "--cores", "2")
    res = tmp_path / "results" / "methane"
    split = json.loads((res / "split.json").read_text())
    assert len(split["folds"]) == 2
    from elmlff import keys, store

    ds = store.open_store(res / "predictions.zarr")
    assert not ds[keys.BASE_IN_SAMPLE].values.any()  # every prediction is out-of-sample
    for k in (0, 1):
        info = json.loads(
            (res / "bases" / "schnet_tiny" / f"cv{k}" / "model" / "base.json").read_text()
        )
        assert not set(info["trained_on"]) & set(split["folds"][k])
        assert set(info["trained_on"]) == set(split["folds"][1 - k])
    bl = json.loads((res / "baselines.json").read_text())
    assert bl["fit_on"] == "out-of-fold (K-fold)" and bl["n_fit_frames"] == 48 + 24
    # the single-fit vs mean-of-fits mismatch is on record, per base
    from elmlff import store

    kf = json.loads(store.open_store(res / "predictions.zarr").attrs["model_info"])
    for m, facts in kf.items():
        rec = facts["kfold_val_force_rmse"]
        assert len(rec["single_fits"]) == 2 and rec["mean_of_fits"] > 0, m
    # Ensemble-conserv learned from out-of-fold frames through the fold's own (live) base fits
    mi = json.loads(
        (res / "metas" / "ensemble_conserv" / "all" / "model" / "meta.json").read_text()
    )
    assert set(mi["trained_on"]) == set(split["folds"][0]) | set(split["folds"][1])
    assert mi["bases_in_training"] == "live"
    df = pd.read_csv(res / "metrics.csv")
    assert {"ensemble_direct", "ensemble_conserv"} <= set(df[df.split == "test"].model)
    # the subset study's one subset (the full set) takes train_meta's models: no group job
    sub = pd.read_csv(res / "subsets.csv")
    assert set(sub[sub.kind == "meta"].meta) == {"ensemble_direct", "ensemble_conserv"}
    assert not (res / "subsets").exists()
    mine = sub[(sub.kind == "meta") & (sub.split == "test") & (sub.metric == "force_rmse")]
    alone = np.load(res / "metas" / "ensemble_conserv" / "all" / "predictions.npz")
    test = np.isin(alone["frames"], split["roles"]["test"])
    f = alone["forces"][
        store.frames_from_dataset(ds, alone["frames"]).atom_index(np.flatnonzero(test))
    ]
    ref = store.frames_from_dataset(ds, alone["frames"][test]).forces
    rmse = float(np.sqrt(((f - ref) ** 2).mean()))
    assert mine.set_index("meta").value["ensemble_conserv"] == pytest.approx(rmse, rel=1e-5)
    # ... the same model its group job trains (through the fold's live bases), where the
    # campaign does not train it
    alt = yaml.safe_load(cfg.read_text())
    alt["run_metas"] = ["ensemble_direct"]
    cfg_alt = tmp_path / "no_conserv.yaml"
    cfg_alt.write_text(yaml.safe_dump(alt))
    target = "results/methane/subsets/ensemble_conserv/k1"
    smk("--configfile", str(cfg_alt), "--directory", str(tmp_path), "--cores", "2", target)
    group = np.load(tmp_path / target / "predictions.npz")
    assert np.isfinite(group["energy"]).all()
    np.testing.assert_allclose(group["forces"][0], alone["forces"], atol=1e-5)
    np.testing.assert_allclose(group["energy"][0], alone["energy"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.shared_data
def test_methanol_on_copper_campaign_on_a_small_subset(tmp_path):
    """The methanol/Cu(100) campaign config, shrunk: a periodic 54-atom slab through the
    workflow with one tiny base of each family that runs here."""
    from conftest import SHARED

    cfg = yaml.safe_load(tiny_config(tmp_path).read_text())
    camp = yaml.safe_load((ROOT / "config" / "campaigns" / "methanol_cu.yaml").read_text())
    ds = camp["datasets"]["methanol_cu"]
    ds["path"] = str(SHARED / "el-mlffs" / "methanol_cu")
    ds["split"]["sizes"] = {"train": 16, "meta": 8, "val": 8, "test": 8}
    cfg["datasets"] = camp["datasets"]
    cfg["run"] = camp["run"]
    cfg["ensemble"] = ["schnet_tiny", "dp_tiny", "nequip_tiny"]
    cfg["training"]["max_epochs"] = 1
    path = tmp_path / "methanol.yaml"
    path.write_text(yaml.safe_dump(cfg))
    smk("--configfile", str(path), "--directory", str(tmp_path), "--cores", "2")
    from elmlff import keys, store

    res = tmp_path / "results" / "methanol_cu"
    s = store.open_store(res / "predictions.zarr")
    assert s["model"].values.tolist() == ["schnet_tiny", "dp_tiny", "nequip_tiny"]
    assert s.sizes["frame"] == 40 and s.sizes["atom"] == 40 * 54
    assert s[keys.PBC].values.all()
    assert sorted(set(s[keys.NUMBERS].values.tolist())) == [1, 6, 8, 29]
    assert np.isfinite(s[keys.BASE_FORCES].values).all()
    assert (res / "figures" / "force_rmse.png").exists()
    # MD of the periodic slab: RDF error and (stable, long enough) diffusivity are reported
    md = pd.read_csv(res / "md_summary.csv")
    conserv = md[(md.model == "ensemble_conserv") & (md.replica == "0")].set_index("metric")
    assert np.isfinite(conserv.value["rdf_mae"]) and conserv.value["time_ps"] > 0
    assert "diffusivity_A2_per_ps" in conserv.index


def test_resume_after_snakemake_was_killed(tmp_path):
    """SIGKILL snakemake while a training job runs, then run the same command again: it must
    finish (no `--unlock` needed), and leave no hidden temporaries of the killed job."""
    import signal
    import time

    cfg = tiny_config(tmp_path, ensemble=["schnet_tiny"])
    target = "results/methane/bases/schnet_tiny/full/model"
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(cfg)]
    cmd += ["--directory", str(tmp_path), "--cores", "2", target]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    bases = tmp_path / "results" / "methane" / "bases" / "schnet_tiny" / "full"
    deadline = time.monotonic() + 300
    while not list(bases.glob(".model.pid*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the training job writes its temporary
    assert list(bases.glob(".model.pid*.tmp")), "the training job never started"
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, as a lost login would
    proc.wait()
    assert list((tmp_path / ".snakemake" / "locks").glob("*.lock"))  # what blocked reruns
    r = smk("--configfile", str(cfg), "--directory", str(tmp_path), "--cores", "2", target)
    assert "left by a killed run" in r.stderr
    assert (tmp_path / target / "base.json").exists()
    assert not list(tmp_path.joinpath("results").rglob(".*.tmp"))
    # restating the same config with its keys in another order reruns nothing (params are
    # passed as JSON with sorted keys)
    d = yaml.safe_load(cfg.read_text())
    d["bases"]["schnet_tiny"]["params"] = dict(
        reversed(d["bases"]["schnet_tiny"]["params"].items())
    )
    d["datasets"]["methane"] = dict(reversed(d["datasets"]["methane"].items()))
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    r = smk("-n", "--configfile", str(cfg), "--directory", str(tmp_path), target)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


def test_resume_leaves_a_live_run_alone(tmp_path):
    """With another snakemake alive in the directory, nothing is removed; without one, the
    stale locks and the temporaries of dead writers go, a live writer's stays."""
    import time

    from elmlff.smk import resume_after_kill

    lock = tmp_path / ".snakemake" / "locks" / "0.input.lock"
    tmp = tmp_path / "results" / "d" / ".metrics.csv.pid999999999.abc.tmp"  # no such process
    live = tmp_path / "results" / "d" / f".summary.md.pid{os.getpid()}.abc.tmp"
    lock.parent.mkdir(parents=True)
    tmp.mkdir(parents=True)
    live.mkdir()
    lock.write_text("x")
    other = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 30"], cwd=tmp_path)
    try:
        time.sleep(0.3)
        assert resume_after_kill(tmp_path) == [] and lock.exists() and tmp.exists()
    finally:
        other.kill()
        other.wait()
    assert sorted(resume_after_kill(tmp_path)) == [
        ".snakemake/locks/0.input.lock",
        "results/d/.metrics.csv.pid999999999.abc.tmp",
    ]
    assert not lock.exists() and not tmp.exists() and live.exists()
