"""Config schema: the shipped configs validate; bad ones fail with one clear line."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from elmlff.config import load_config, validate_config
from elmlff.errors import ElmlffError

from conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid_and_get_defaults():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["run"] == ["methane"]
    assert cfg["datasets"]["methane"]["pbc"] == "auto"  # default filled in
    assert cfg["datasets"]["methane"]["split"]["kfold"] == 0
    assert cfg["evaluation"]["predict_batch_size"] == 128
    assert len(cfg["ensemble"]) == 8 and "nep" in cfg["bases"]
    assert cfg["metas"]["ensemble_direct"]["fit_on"] == "out_of_sample"  # default filled in
    assert set(cfg["run_metas"]) == set(cfg["metas"])


def overlay(base: dict, over: dict) -> dict:
    """Snakemake's merge of a --configfile into the configfile: dicts key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("campaign", ["paper", "methanol_cu"])
def test_campaign_overlays_are_valid(campaign):
    over = yaml.safe_load((ROOT / "config" / "campaigns" / f"{campaign}.yaml").read_text())
    cfg = validate_config(overlay(DEFAULT, over))
    if campaign == "paper":
        assert cfg["training"]["max_epochs"] >= 1000 and len(cfg["ensemble"]) == 8
        assert cfg["bases"]["nequip"]["params"]["l_max"] == 2
    else:
        assert cfg["run"] == ["methanol_cu"]
        assert cfg["datasets"]["methanol_cu"]["parts"] == {"train": "pool", "test": "test"}


def bad(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ElmlffError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "fix:" in msg
    return msg


def test_unknown_key():
    msg = bad(lambda c: c["datasets"]["methane"].update(unit="eV"))
    assert "datasets.methane" in msg and "'unit' was unexpected" in msg


def test_wrong_type():
    msg = bad(lambda c: c["datasets"]["methane"]["split"].update(seed="zero"))
    assert "datasets.methane.split.seed" in msg and "'zero' is not of type 'integer'" in msg


def test_units_not_declared():
    msg = bad(lambda c: c["datasets"]["methane"]["units"].pop("energy"))
    assert "datasets.methane.units" in msg and "'energy' is a required property" in msg


def test_unknown_unit():
    msg = bad(lambda c: c["datasets"]["methane"]["units"].update(energy="kcal"))
    assert "datasets.methane.units.energy" in msg


def test_unknown_base_name_in_ensemble():
    msg = bad(lambda c: c.update(ensemble=["schnet_rbf10", "mace_mp"]))
    assert "unknown base name(s) ['mace_mp']" in msg and "schnet_rbf20" in msg


def test_unknown_family():
    msg = bad(lambda c: c["bases"]["painn"].update(family="mace"))
    assert "bases.painn.family: unknown family 'mace'" in msg


def test_unknown_meta_model_in_run_metas():
    msg = bad(lambda c: c.update(run_metas=["ensemble_direct", "mace_meta"]))
    assert "run_metas: unknown meta-model(s) ['mace_meta']" in msg and "ensemble_conserv" in msg


def test_amortized_subset_study_takes_direct_metas_only_and_samples_per_k():
    msg = bad(lambda c: c["subsets"].update(metas=["ensemble_direct", "ensemble_conserv"]))
    assert "subsets.method amortized trains Ensemble-direct only" in msg
    assert "['ensemble_conserv']" in msg and "fix:" in msg
    from elmlff.config import dedicated_subsets, subset_groups, subset_study

    cfg = validate_config(copy.deepcopy(DEFAULT))
    every = subset_study(cfg, "methane")
    sample = subset_groups(cfg, "methane")  # the dedicated calibration models
    assert sum(map(len, every.values())) == 255
    n = cfg["subsets"]["calibrate"]
    assert n == 3 and {k: len(v) for k, v in sample.items()} == {k: n for k in range(1, 8)} | {8: 1}
    assert all(set(sample[k]) <= set(every[k]) for k in sample)
    # the full set's dedicated model is train_meta's: no train_subsets job of size 8 for a
    # meta the campaign trains, one for a meta it does not
    assert "ensemble_direct" in cfg["run_metas"] and sample[8] == ["all"]
    assert dedicated_subsets(cfg, "methane", "ensemble_direct") == {
        k: sample[k] for k in range(1, 8)
    }
    cfg["run_metas"] = ["ensemble_conserv"]
    assert dedicated_subsets(cfg, "methane", "ensemble_direct") == sample


def test_unknown_meta_parameter_for_its_kind():
    msg = bad(lambda c: c["metas"]["ensemble_direct"].update(params={"l_max": 2}))
    assert "metas.ensemble_direct.params: unknown key(s) ['l_max'] for kind direct" in msg
    msg = bad(lambda c: c["metas"]["ensemble_conserv"]["training"].update(bases="cache"))
    assert "metas.ensemble_conserv.training.bases" in msg


def test_unknown_md_model_and_bad_md_settings():
    msg = bad(lambda c: c["md"].update(models=["painn", "mace"]))
    assert "md.models: unknown model(s) ['mace']" in msg
    msg = bad(lambda c: c["md"]["settings"].update(thermostat="berendsen"))
    assert "md.settings.thermostat" in msg


def test_a_data_set_md_protocol_overrides_the_top_level_one_key_by_key():
    from elmlff.config import md_spec

    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["methane"]["md"] = {"replicas": 3, "settings": {"temperature_K": 300}}
    spec = md_spec(validate_config(cfg), "methane")
    assert spec["replicas"] == 3 and spec["models"] == DEFAULT["md"]["models"]
    assert spec["settings"]["temperature_K"] == 300
    assert spec["settings"]["timestep_fs"] == DEFAULT["md"]["settings"]["timestep_fs"]
    msg = bad(lambda c: c["datasets"]["methane"].update(md={"models": ["nope"]}))
    assert "datasets.methane.md.models: unknown model(s) ['nope']" in msg


def test_cli_prints_one_line_error_and_exit_code_2(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["methane"]["split"]["method"] = "shuffle"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "elmlff", "check-config", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elmlff: error:")
    assert "datasets.methane.split.method" in lines[0]


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """YAML keeps the last of two equal keys silently; the config reader refuses them."""
    text = (ROOT / "config" / "config.yaml").read_text()
    path = tmp_path / "twice.yaml"
    path.write_text(text.replace("      kfold: 0\n", "      kfold: 0\n      seed: 1\n", 1))
    line = path.read_text().splitlines().index("      seed: 1") + 1
    first = path.read_text().splitlines().index("      seed: 0") + 1
    with pytest.raises(ElmlffError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"twice.yaml:{line}: duplicate key 'seed' (first at line {first})" in msg
    assert "\n" not in msg and "fix: keep one of them" in msg
    # JSON (a config snakemake also reads) and flow mappings too
    (tmp_path / "c.json").write_text('{"run": ["methane"], "run": []}')
    with pytest.raises(ElmlffError, match=r"c.json:1: duplicate key 'run'"):
        load_config(tmp_path / "c.json")


def test_merge_keys_may_still_override_and_anchors_work(tmp_path):
    from elmlff.config import read_yaml

    (tmp_path / "m.yaml").write_text("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\nc: *a\n")
    assert read_yaml(tmp_path / "m.yaml") == {
        "a": {"x": 1, "y": 2},
        "b": {"x": 3, "y": 2},
        "c": {"x": 1, "y": 2},
    }


def test_yaml_syntax_errors_are_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("datasets:\n  methane:\n    parts: [a, b\n    units: {}\n")
    with pytest.raises(ElmlffError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:4:") and "YAML syntax error" in msg and "\n" not in msg
    path.write_text("datasets:\n\tmethane: {}\n")
    with pytest.raises(ElmlffError, match=r"broken.yaml:2:1: YAML syntax error: found character"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ElmlffError, match="a config must be a mapping of keys, not a list"):
        load_config(path)


def test_the_workflow_rereads_the_files_snakemake_merged(tmp_path):
    """common.smk calls check_config_files(workflow.configfiles) before validating, since
    snakemake's own reader keeps the last of two equal keys."""
    from elmlff.config import check_config_files

    (tmp_path / "over.yaml").write_text("run: [methane]\nrun: []\n")
    with pytest.raises(ElmlffError, match=r"over.yaml:2: duplicate key 'run'"):
        check_config_files([ROOT / "config" / "config.yaml", tmp_path / "over.yaml"])
    check_config_files([ROOT / "config" / "config.yaml", *ROOT.glob("config/campaigns/*.yaml")])
    smk = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    check = smk.index("check_config_files(workflow.configfiles)")
    assert check < smk.index("validate_config(config")


def test_check_config_validates_the_project_overlays_as_the_workflow_merges_them(capsys):
    """`elmlff check-config OVERLAY` puts config/config.yaml under it (the Snakefile's
    configfile:), so the project's own campaign overlays pass; alone, methanol_cu.yaml is not a
    whole config."""
    from elmlff.cli import main

    from conftest import SHARED

    assert main(["check-config", str(ROOT / "config" / "campaigns" / "paper.yaml")]) == 0
    assert "config/config.yaml + " in capsys.readouterr().out
    rc = main(["check-config", str(ROOT / "config" / "campaigns" / "methanol_cu.yaml")])
    err = capsys.readouterr().err
    if SHARED.exists():
        assert rc == 0, err
    else:  # its data lives in ../shared, which users do not have: one line says so
        assert rc == 2 and "datasets.methanol_cu.path" in err
    overlay = str(ROOT / "config" / "campaigns" / "methanol_cu.yaml")
    assert main(["check-config", "--alone", overlay]) == 2
    assert "elmlff: error:" in capsys.readouterr().err


def test_ensemble_conserv_refuses_a_base_without_a_differentiable_energy(tmp_path, monkeypatch):
    """With GPUMD's `nep` on PATH, NEP joins the ensemble; Ensemble-conserv differentiates
    through every base, so the config is refused before anything trains."""
    exe = tmp_path / "nep"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["ensemble"] = ["painn", "nep"]
    with pytest.raises(ElmlffError, match=r"'ensemble_conserv' \(Ensemble-conserv\).*\['nep'\]"):
        validate_config(copy.deepcopy(cfg))
    cfg["run_metas"] = ["ensemble_direct"]
    cfg["md"]["models"] = ["painn", "ensemble_direct"]
    validate_config(cfg)  # direct metas read the stored predictions: fine


def test_a_data_set_sets_a_base_of_its_own_over_the_base_key_by_key():
    """Per-molecule settings of one base: the data set's params/training win key by key, other
    data sets keep the base's; a typo or an unknown base there is one line, before training."""
    from elmlff.config import base_spec

    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["other"] = copy.deepcopy(cfg["datasets"]["methane"])
    cfg["datasets"]["methane"]["bases"] = {
        "painn": {"params": {"n_rbf": 7}, "training": {"max_epochs": 3}}
    }
    validate_config(cfg)
    mine, other = base_spec(cfg, "painn", "methane"), base_spec(cfg, "painn", "other")
    assert mine.params["n_rbf"] == 7 and mine.params["n_interactions"] == 3
    assert mine.training["max_epochs"] == 3 and mine.training["lr"] == other.training["lr"]
    assert other.params["n_rbf"] == 20 and other.training["max_epochs"] == 25
    bad = copy.deepcopy(cfg)
    bad["datasets"]["methane"]["bases"] = {"painn": {"params": {"n_rbff": 7}}}
    with pytest.raises(ElmlffError, match=r"datasets.methane.bases.painn.params: unknown key"):
        validate_config(bad)
    bad["datasets"]["methane"]["bases"] = {"painnn": {}}
    with pytest.raises(ElmlffError, match="no base 'painnn'"):
        validate_config(bad)


def test_table1_names_run_data_sets_with_md_and_shared_downloads_agree():
    cfg = copy.deepcopy(DEFAULT)
    cfg["table1"] = {"datasets": ["water"], "models": ["painn"]}
    with pytest.raises(ElmlffError, match=r"table1.datasets: 'water' is not in `run`"):
        validate_config(copy.deepcopy(cfg))
    cfg["table1"]["datasets"] = ["methane"]
    cfg["md"]["models"] = []
    with pytest.raises(ElmlffError, match="runs no MD"):
        validate_config(copy.deepcopy(cfg))
    cfg = copy.deepcopy(DEFAULT)
    two = copy.deepcopy(cfg["datasets"]["methane"])
    cfg["datasets"] = {"a": two, "b": copy.deepcopy(two)}
    cfg["run"] = ["a", "b"]
    for d, sha in (("a", "0" * 64), ("b", "1" * 64)):
        cfg["datasets"][d].update(path="nowhere/yet", download={"url": "http://x", "sha256": sha})
    with pytest.raises(ElmlffError, match="different `download` specs"):
        validate_config(cfg)


def test_the_longest_base_trainings_get_the_higher_priority():
    """DeePMD's 6,250 steps (batch 4) against the others' 800 (batch 32): its three bases start
    first; a campaign whose bases all train as many steps gives none a priority."""
    from elmlff.config import longest_trainings

    cfg = validate_config(copy.deepcopy(DEFAULT))
    assert longest_trainings(cfg, "methane") == {"dp_se_e2_a", "dp_se_e2_r", "dp_se_e3"}
    cfg["bases"]["nequip"]["training"] = {"batch_size": 2}  # 12.5 steps a frame: the longest
    assert longest_trainings(cfg, "methane") == {"nequip"}
    for b in cfg["bases"].values():
        b["training"] = {**b.get("training", {}), "batch_size": 4}
    assert longest_trainings(cfg, "methane") == set()
